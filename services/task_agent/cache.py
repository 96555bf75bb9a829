"""The seed's cache layer: a task's latest state in Redis, written through on every change
and bounded by a TTL, so a website polling thousands of tasks reads Redis, not Postgres.
A write carries the task's version and is refused if the cache already holds a newer one,
so concurrent writers never leave an older state behind. The payload and result are held
sealed by the same keyring as in Postgres, bound to the task and the field."""

import base64
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis.asyncio as redis
import structlog
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from libs.common.crypto import Keyring, Undecryptable
from libs.common.redis_client import Keys
from services.task_agent.model import Priority, RetryPolicy, Task, TaskState

log = structlog.get_logger(__name__)

# KEYS[1]: a task's entry, "<version>|<json>". ARGV: ttl seconds, version, json.
_PUT_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
local held = current and tonumber(string.match(current, '^(%d+)|'))
if held and held >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. ARGV[3], 'EX', ARGV[1])
return 1
"""

# Associated data of the sealed fields, with the task's id: bound to the entry they are in.
_PAYLOAD = b"task_cache.payload:"
_RESULT = b"task_cache.result:"


class TaskCache:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int, keyring: Keyring) -> None:
        self._redis = client
        self._keys = keys
        self._ttl_s = ttl_s
        self._keyring = keyring
        self._put = client.register_script(_PUT_IF_NEWER)

    async def get(self, task_id: uuid.UUID) -> Task | None:
        raw: Any = await self._redis.get(self._keys.task_cache(str(task_id)))
        return None if raw is None else await self._decoded(task_id, raw)

    async def get_many(self, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Task]:
        """The cached ones of `task_ids`, in one pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.get(self._keys.task_cache(str(task_id)))
            raws: list[Any] = await pipe.execute()
        found = {}
        for task_id, raw in zip(task_ids, raws, strict=True):
            if raw is not None:
                task = await self._decoded(task_id, raw)
                if task is not None:
                    found[task_id] = task
        return found

    async def _decoded(self, task_id: uuid.UUID, raw: bytes) -> Task | None:
        _, _, value = raw.partition(b"|")
        try:
            return self._decode(json.loads(value))
        except Undecryptable as exc:
            # A copy sealed with a key this agent does not hold (one retired after a
            # rotation, say) is a miss: Postgres, the truth, answers and fills it again.
            log.warning("cached task unreadable; dropped", task_id=str(task_id), error=str(exc))
            await self.forget(task_id)
            return None

    async def put(self, tasks: Sequence[Task]) -> None:
        if tasks:
            async with self._redis.pipeline(transaction=False) as pipe:
                self.queue_put(pipe, tasks)
                replies = await pipe.execute(raise_on_error=False)
            await self.settle_put(tasks, replies)

    def queue_put(self, pipe: Pipeline, tasks: Sequence[Task]) -> None:
        """Adds the writes of `tasks` to a caller's pipeline, one script call per task (on a
        cluster, tasks' keys live on different nodes), by its digest: redis-py would first
        ask Redis whether a pipeline's scripts are loaded, a round trip of its own. The
        caller hands their replies to `settle_put`."""
        for task in tasks:
            value = json.dumps(self._encode(task), separators=(",", ":"))
            key = self._keys.task_cache(str(task.id))
            pipe.evalsha(self._put.sha, 1, key, self._ttl_s, task.version, value)

    async def settle_put(self, tasks: Sequence[Task], replies: Sequence[Any]) -> None:
        """After a pipeline with `queue_put(tasks)`: the writes Redis did not run for want of
        the script (a new or restarted Redis) are made again once it is loaded; any other
        error is raised."""
        errors = [r for r in replies if isinstance(r, Exception)]
        if not errors:
            return
        other = next((e for e in errors if not isinstance(e, NoScriptError)), None)
        if other is not None:
            raise other
        await self._redis.script_load(_PUT_IF_NEWER)
        await self.put([t for t, r in zip(tasks, replies, strict=True) if isinstance(r, Exception)])

    async def forget(self, task_id: uuid.UUID) -> None:
        await self._redis.delete(self._keys.task_cache(str(task_id)))

    def _encode(self, task: Task) -> dict[str, Any]:
        return {
            "id": str(task.id),
            "type": task.type,
            "state": task.state.value,
            "payload": self._seal(task.payload, _PAYLOAD, task.id),
            "queue": task.queue,
            "priority": int(task.priority),
            "attempts": task.attempts,
            "retry": [
                task.retry.max_attempts,
                task.retry.initial_backoff_s,
                task.retry.max_backoff_s,
                task.retry.multiplier,
            ],
            "timeout_s": task.timeout_s,
            "run_at": task.run_at.isoformat(),
            "created_at": task.created_at.isoformat(),
            "updated_at": task.updated_at.isoformat(),
            "result": self._seal(task.result, _RESULT, task.id)
            if task.result is not None
            else None,
            "error_reason": task.error_reason,
            "error_message": task.error_message,
            "error_kind": task.error_kind,
            "idempotency_key": task.idempotency_key,
            "deadline_at": _iso(task.deadline_at),
            "fallback_type": task.fallback_type,
            "concurrency_key": task.concurrency_key,
            "parent_id": str(task.parent_id) if task.parent_id else None,
            "labels": task.labels,
            "started_at": _iso(task.started_at),
            "finished_at": _iso(task.finished_at),
            "progress": task.progress,
            "agent": task.agent,
            "version": task.version,
        }

    def _decode(self, data: dict[str, Any]) -> Task:
        task_id = uuid.UUID(data["id"])
        return Task(
            id=task_id,
            type=data["type"],
            state=TaskState(data["state"]),
            payload=self._open(data["payload"], _PAYLOAD, task_id),
            queue=data["queue"],
            priority=Priority(data["priority"]),
            attempts=data["attempts"],
            retry=RetryPolicy(*data["retry"]),
            timeout_s=data["timeout_s"],
            run_at=datetime.fromisoformat(data["run_at"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
            result=self._open(data["result"], _RESULT, task_id)
            if data["result"] is not None
            else None,
            error_reason=data["error_reason"],
            error_message=data["error_message"],
            error_kind=data["error_kind"],
            idempotency_key=data["idempotency_key"],
            deadline_at=_from_iso(data["deadline_at"]),
            fallback_type=data["fallback_type"],
            concurrency_key=data["concurrency_key"],
            parent_id=uuid.UUID(data["parent_id"]) if data["parent_id"] else None,
            labels=data["labels"],
            started_at=_from_iso(data["started_at"]),
            finished_at=_from_iso(data["finished_at"]),
            progress=data["progress"],
            agent=data["agent"],
            version=data["version"],
        )

    def _seal(self, value: bytes, field: bytes, task_id: uuid.UUID) -> str:
        return base64.b64encode(self._keyring.encrypt(value, field + task_id.bytes)).decode()

    def _open(self, value: str, field: bytes, task_id: uuid.UUID) -> bytes:
        return self._keyring.decrypt(base64.b64decode(value), field + task_id.bytes)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _from_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
