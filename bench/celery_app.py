"""The Celery app of the baseline. Runs only in Celery's own virtualenv (.cache/bench-celery),
imported by its worker (`celery -A bench.celery_app worker`) and by `bench.celery_driver`.
Configured by the environment its parent, `bench.celery_baseline`, sets."""

import os
import time

import redis
from celery import Celery

BROKER = os.environ["BENCH_CELERY_BROKER"]
QUEUE = os.environ["BENCH_CELERY_QUEUE"]
# Every key kombu writes starts with it, so a shared Redis is left as it was found.
PREFIX = os.environ["BENCH_CELERY_PREFIX"]

app = Celery("agentry_bench", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    broker_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)

# What this worker process ran: a count, and when it ran its first no-op.
_ran = {"noops": 0, "first_at": 0.0}


@app.task(name="bench.noop")
def noop() -> None:
    if not _ran["noops"]:
        _ran["first_at"] = time.time()
    _ran["noops"] += 1


@app.task(name="bench.done")
def done(key: str) -> None:
    """Queued after the no-ops: one worker process runs its queue in order, so when this
    runs they all ran. Records when, how many, and when the first one ran."""
    client = redis.Redis.from_url(BROKER)
    client.set(key, f"{time.time()} {_ran['noops']} {_ran['first_at']}", ex=600)
    client.close()
