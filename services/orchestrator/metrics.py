"""The orchestrator's Prometheus metrics: workflow runs started and ended, how long a step
waits between its dependencies ending and its tasks being submitted, the steps' tasks it
could not submit, and the agents of the registry by role and state."""

import time
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

RUNS_STARTED = Counter(
    "agentry_workflow_runs_started_total", "Workflow runs started.", ["workflow"]
)
RUNS_FINISHED = Counter(
    "agentry_workflow_runs_finished_total",
    "Workflow runs that ended, by their end state (SUCCEEDED, FAILED, CANCELLED).",
    ["workflow", "state"],
)
STEP_OVERHEAD = Histogram(
    "agentry_workflow_step_overhead_seconds",
    "From a run's task ending to the orchestrator having advanced the run on it (the steps "
    "it unblocked submitted, or the run ended): what the orchestrator adds between steps, "
    "but chain links, which task agents start themselves (for them, how far it lags).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TASKS_UNSUBMITTED = Counter(
    "agentry_workflow_tasks_unsubmitted_total",
    "Tasks of started steps not submitted: TaskService was unavailable through every retry. "
    "The reconciler submits them again once their runs are stale.",
)
AGENTS = Gauge(
    "agentry_agents",
    "Agents in the registry by role and lifecycle state (every orchestrator reports the "
    "same figures).",
    ["role", "state"],
)

_shown: set[tuple[str, str]] = set()


def observe_step_overhead(finished_at: Iterable[float]) -> None:
    """Called once the runs were advanced on the task ends that finished at those times."""
    now = time.time()
    for at in finished_at:
        STEP_OVERHEAD.observe(max(0.0, now - at))


def show_agents(agents: Iterable[tuple[str, str]]) -> None:
    """(role, state) of every registered agent; a pair no agent has any more shows 0."""
    counts = Tally(agents)
    for gone in _shown - set(counts):
        AGENTS.labels(*gone).set(0)
    for pair, count in counts.items():
        AGENTS.labels(*pair).set(count)
    _shown.update(counts)
