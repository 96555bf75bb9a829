"""The baseline's client; runs in Celery's virtualenv, answers one line of JSON on stdout.

`enqueue N KEY`: N no-ops, then the `done` marker KEY; `wait KEY DEADLINE_S`: until the
marker ran.
"""

import json
import sys
import time

import redis

from bench.celery_app import BROKER, done, noop


def _wait(client: redis.Redis, key: str, deadline_s: float) -> dict[str, float]:
    deadline = time.monotonic() + deadline_s
    while (value := client.get(key)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"celery did not run {key} within {deadline_s:.0f}s")
        time.sleep(0.005)
    text = value.decode() if isinstance(value, bytes) else str(value)
    finished, noops, first_at = text.split()
    return {"finished_at": float(finished), "noops_ran": int(noops), "first_at": float(first_at)}


def main() -> None:
    command, *args = sys.argv[1:]
    client = redis.Redis.from_url(BROKER)
    if command == "enqueue":
        n, key = int(args[0]), args[1]
        began = time.time()
        for _ in range(n):
            noop.delay()
        done.delay(key)
        result = {"began_at": began, "enqueued_at": time.time()}
    elif command == "wait":
        result = _wait(client, args[0], float(args[1]))
    else:
        raise SystemExit(f"unknown command {command!r}")
    client.close()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
