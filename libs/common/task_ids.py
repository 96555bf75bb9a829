"""A task submitted with an idempotency key has an id derived from the key, so whoever
submits it knows the id before the answer: the orchestrator records a step's task and
commits before it calls TaskService, and a resubmission finds the same task by id as by
key."""

import uuid

# Fixed for good: changing it would give a resubmitted key a second id.
NAMESPACE = uuid.UUID("6f0c1f4e-3d0a-5b7e-9a43-1c2d8e5b7a90")


def task_id_for(idempotency_key: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, idempotency_key)
