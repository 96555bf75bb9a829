"""The agent registry's rules: who is known, and who has stopped answering."""

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from libs.common.errors import InvalidArgument

# The seed's lifecycle, plus the registry's own verdict on an agent that went silent.
STATES = ("CREATED", "INITIALIZED", "ACTIVE", "IDLE", "TERMINATED", "UNRESPONSIVE")
HEARTBEAT_INTERVAL_S = 5.0
# Missing this many heartbeats makes an agent UNRESPONSIVE.
MISSED_HEARTBEATS = 3


@dataclass(frozen=True)
class AgentRecord:
    id: str
    role: str
    instance: str
    version: str
    state: str
    task_types: tuple[str, ...]
    address: str
    load: float
    started_at: datetime
    last_seen_at: datetime


def check(record: AgentRecord) -> AgentRecord:
    if not record.role or not record.instance:
        raise InvalidArgument("an agent needs a role and an instance")
    if record.id != f"{record.role}/{record.instance}":
        raise InvalidArgument(f"agent id must be '<role>/<instance>', not {record.id!r}")
    if record.state not in STATES[:5]:
        raise InvalidArgument(f"unknown agent state {record.state!r}")
    if not 0 <= record.load <= 1:
        raise InvalidArgument("load must be between 0 and 1")
    return record


def as_seen(record: AgentRecord, now: datetime) -> AgentRecord:
    """An agent that is not TERMINATED and missed its heartbeats is UNRESPONSIVE."""
    silent_for = now - record.last_seen_at
    limit = timedelta(seconds=HEARTBEAT_INTERVAL_S * MISSED_HEARTBEATS)
    if record.state != "TERMINATED" and silent_for > limit:
        return replace(record, state="UNRESPONSIVE")
    return record
