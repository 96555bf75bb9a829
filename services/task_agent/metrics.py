"""The task agent's Prometheus metrics: tasks by type, queue and outcome, their durations,
retries and dead letters (counted where every change of a task passes, TaskChanges), the
backlog of each queue (what autoscalers scale task agents on) and the worker's slots."""

from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge, Histogram

from services.task_agent.model import Task, TaskState

_TASK = ["type", "queue"]
SUBMITTED = Counter("agentry_tasks_submitted_total", "Tasks accepted.", _TASK)
FINISHED = Counter(
    "agentry_tasks_finished_total",
    "Tasks that reached an end: succeeded, failed (then handed to their fallback), "
    "dead_lettered or cancelled.",
    [*_TASK, "outcome"],
)
RETRIES = Counter(
    "agentry_task_retries_total", "Attempts that failed and were scheduled again.", _TASK
)
DEAD_LETTERS = Counter("agentry_dead_letters_total", "Tasks put in the dead letters.", _TASK)
DURATION = Histogram(
    "agentry_task_duration_seconds",
    "From a task's first start to its end (retries and their waits included).",
    _TASK,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
QUEUE_DEPTH = Gauge(
    "agentry_queue_depth",
    "Tasks waiting on the queue: not yet delivered from its streams, and delayed ones due.",
    ["queue"],
)
QUEUE_OLDEST_AGE = Gauge(
    "agentry_queue_oldest_age_seconds",
    "How long the oldest waiting task of the queue has waited (0 when none waits).",
    ["queue"],
)
WORKER_SLOTS = Gauge("agentry_worker_slots", "The worker's slots, busy and idle.", ["state"])

_OUTCOMES = {
    TaskState.SUCCEEDED: "succeeded",
    TaskState.FAILED: "failed",
    TaskState.CANCELLED: "cancelled",
}


def count_changes(changed: Sequence[Task], new: bool, dead_lettered: bool) -> None:
    """`new`: the tasks were just submitted; `dead_lettered`: failed tasks went to the dead
    letters rather than to their fallback."""
    for task in changed:
        labels = (task.type, task.queue)
        if new:
            SUBMITTED.labels(*labels).inc()
        elif task.state == TaskState.RETRYING:
            RETRIES.labels(*labels).inc()
        elif task.state.terminal:
            outcome = _OUTCOMES[task.state]
            if task.state == TaskState.FAILED and dead_lettered:
                outcome = "dead_lettered"
                DEAD_LETTERS.labels(*labels).inc()
            FINISHED.labels(*labels, outcome).inc()
            if task.started_at is not None and task.finished_at is not None:
                seconds = (task.finished_at - task.started_at).total_seconds()
                DURATION.labels(*labels).observe(seconds)


def watch_slots(busy: Callable[[], int], total: int) -> None:
    """The slot gauges read the worker at scrape time."""
    WORKER_SLOTS.labels("busy").set_function(busy)
    WORKER_SLOTS.labels("idle").set_function(lambda: total - busy())


def show_backlog(backlog: Sequence[tuple[str, int, float]]) -> None:
    for queue, depth, oldest_age_s in backlog:
        QUEUE_DEPTH.labels(queue).set(depth)
        QUEUE_OLDEST_AGE.labels(queue).set(oldest_age_s)
