from datetime import UTC, datetime, timedelta

from services.orchestrator.registry import AgentRecord, as_seen

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _record(state: str, seen_ago_s: float) -> AgentRecord:
    return AgentRecord(
        id="task_agent/a", role="task_agent", instance="a", version="1", state=state,
        task_types=(), address="127.0.0.1:1", load=0.0, started_at=NOW,
        last_seen_at=NOW - timedelta(seconds=seen_ago_s),
    )  # fmt: skip


def test_an_agent_that_missed_its_heartbeats_is_unresponsive() -> None:
    assert as_seen(_record("ACTIVE", 16), NOW).state == "UNRESPONSIVE"
    assert as_seen(_record("IDLE", 14), NOW).state == "IDLE"


def test_a_terminated_agent_stays_terminated() -> None:
    assert as_seen(_record("TERMINATED", 3600), NOW).state == "TERMINATED"
