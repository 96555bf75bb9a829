"""Generated histories with injected incidents, and the detectors' precision and recall on
them. `tests/unit/test_insight_scenarios.py` asserts the targets, `bench/insights.py` prints
the figures.

A history is per-minute rollups of a few task types (Poisson arrivals, log-normal durations
and queue lags, background failures with a fixed set of error messages, two agent versions,
several agents) over hours, with incidents injected over some minutes:

- failure burst: one type's attempts fail far more often, with an error never seen before;
- latency regression: one type's durations grow by a factor;
- stuck queue: one type's tasks start late and later (workers stuck), a trickle of them;
- stopped queue: none of one type's due tasks start;
- bad version: a canary version of the agents fails a share of one type's tasks.

The detectors then run as the service runs them: every minute, over the last
`Tuning.lookback_minutes` minutes, their findings reconciled into insights with the cool-down.
An incident is detected when an insight of its kind and type opens while it lasts (or within
`GRACE` after); an insight is a true positive when it opens on an incident's type while that
incident lasts (or within `GRACE`), whatever its kind: a failure burst also raises its new
fingerprint, which is a true finding. Precision: true insights / all insights; recall:
detected incidents / incidents; the quiet scenarios must open no insight at all."""

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.analysis.detectors import BUCKETS, DEFAULT_TUNING, MINUTE, Recent, Tuning
from services.analysis.fingerprints import fingerprint
from services.analysis.insights import Insight, announcements, detect, reconcile
from services.analysis.reports import bucket_of

START = datetime(2026, 1, 5, tzinfo=UTC)
GRACE = timedelta(minutes=10)
COOLDOWN = timedelta(minutes=15)

EXPECTED_KIND = {
    "failure_burst": "anomaly.failure_rate",
    "latency_regression": "anomaly.duration_p95",
    "stuck_queue": "anomaly.queue_lag",
    "stopped_queue": "anomaly.queue_lag",
    "bad_version": "pattern.concentrated_failures",
}


@dataclass(frozen=True)
class TaskProfile:
    name: str
    per_minute: float
    failure: float
    duration_s: float
    duration_sigma: float = 0.35
    lag_s: float = 0.3
    lag_sigma: float = 0.6
    errors: tuple[str, ...] = ("upstream returned 503 for order 81723", "timeout after 30s")
    agents: tuple[str, ...] = ("agent-a", "agent-b", "agent-c")
    # The volume's swing over a day: 0 is flat, 0.5 is ±50%.
    daily_swing: float = 0.0


@dataclass(frozen=True)
class Incident:
    kind: str
    type: str
    start: int
    minutes: int
    # failure burst: the failure share; latency: the factor; bad version: its failure share.
    size: float = 0.0

    @property
    def end(self) -> int:
        return self.start + self.minutes

    def during(self, minute: int) -> bool:
        return self.start <= minute < self.end


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    minutes: int
    profiles: tuple[TaskProfile, ...]
    incidents: tuple[Incident, ...] = ()


@dataclass
class Score:
    scenario: str
    incidents: int
    detected: int
    insights: int
    true_insights: int
    # insight.opened events: alerts.
    alerts: int = 0
    # Minutes from each detected incident's start to its first insight.
    delays: list[int] = field(default_factory=list)
    false_insights: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return self.true_insights / self.insights if self.insights else None

    @property
    def recall(self) -> float | None:
        return self.detected / self.incidents if self.incidents else None


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method is fine for the few dozen a minute these histories hold.
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _histogram(values: Sequence[float]) -> list[int]:
    buckets = [0] * BUCKETS
    for v in values:
        buckets[bucket_of(v)] += 1
    return buckets


class _Minute:
    """One minute of one type, as the rollups keep it."""

    def __init__(self) -> None:
        # (version, outcome) -> durations (None: no duration, a retried attempt)
        self.outcomes: dict[tuple[str, str], list[float | None]] = {}
        self.agents: dict[tuple[str, str], int] = {}
        self.lags: list[float] = []
        self.errors: dict[str, int] = {}
        self.due = 0

    def attempt(self, version: str, agent: str, outcome: str, duration: float | None) -> None:
        self.outcomes.setdefault((version, outcome), []).append(duration)
        self.agents[(agent, outcome)] = self.agents.get((agent, outcome), 0) + 1


def _simulate(rng: random.Random, scenario: Scenario, profile: TaskProfile, minute: int) -> _Minute:
    active = [i for i in scenario.incidents if i.type == profile.name and i.during(minute)]
    swing = 1 + profile.daily_swing * math.sin(2 * math.pi * minute / 1440)
    arrivals = _poisson(rng, profile.per_minute * swing)
    failure, duration_s, lag_s, started_share = profile.failure, profile.duration_s, None, 1.0
    new_error = None
    canary = None
    for incident in active:
        if incident.kind == "failure_burst":
            failure, new_error = incident.size, f"card processor declined batch {minute}: gateway"
        elif incident.kind == "latency_regression":
            duration_s *= incident.size
        elif incident.kind == "stuck_queue":
            # Tasks wait since the queue stuck; a trickle of them starts.
            lag_s, started_share = 60.0 * (minute - incident.start + 1), 0.2
        elif incident.kind == "stopped_queue":
            started_share = 0.0
        elif incident.kind == "bad_version":
            canary = incident
    out = _Minute()
    out.due = arrivals
    for _ in range(arrivals):
        if rng.random() > started_share:
            continue
        lag = (
            rng.uniform(0.5, 1.0) * lag_s
            if lag_s is not None
            else rng.lognormvariate(math.log(profile.lag_s), profile.lag_sigma)
        )
        out.lags.append(lag)
        version, agent, fails = "v1", rng.choice(profile.agents), failure
        if canary is not None and rng.random() < 0.25:
            version, agent, fails = "v2", "agent-canary", canary.size
        duration = rng.lognormvariate(math.log(duration_s), profile.duration_sigma)
        if rng.random() < fails:
            error = (
                new_error
                if new_error is not None and rng.random() < 0.8
                else rng.choice(profile.errors)
            )
            out.errors[error] = out.errors.get(error, 0) + 1
            retried = rng.random() < 0.6
            out.attempt(
                version, agent, "retried" if retried else "failed", None if retried else duration
            )
        else:
            out.attempt(version, agent, "succeeded", duration)
    return out


def history(scenario: Scenario) -> Recent:
    """The whole generated history, as the detectors read it."""
    rng = random.Random(scenario.seed)
    recent = Recent(START, scenario.minutes)
    for minute in range(scenario.minutes):
        at = START + minute * MINUTE
        for profile in scenario.profiles:
            m = _simulate(rng, scenario, profile, minute)
            for (version, outcome), durations in m.outcomes.items():
                timed = [d for d in durations if d is not None]
                recent.add_outcome(
                    at, profile.name, version, outcome, len(durations), _histogram(timed)
                )
            for (agent, outcome), n in m.agents.items():
                recent.add_agent(at, profile.name, agent, outcome, n)
            recent.add_lag(at, profile.name, len(m.lags), _histogram(m.lags), m.due)
            for message, n in m.errors.items():
                fp = fingerprint(message)
                recent.add_error(at, profile.name, fp, n, message)
                recent.first_seen.setdefault((profile.name, fp), at)
    return recent


def run(scenario: Scenario, tuning: Tuning = DEFAULT_TUNING) -> list[tuple[Insight, str]]:
    """Every insight opened over the history, with the event that announced it
    (`insight.opened`: an alert, or `insight.joined`), evaluating each minute as the service
    does."""
    full = history(scenario)
    opened: list[tuple[Insight, str]] = []
    open_now: dict[str, Insight] = {}
    lookback = tuning.lookback_minutes
    for last in range(lookback - 1, scenario.minutes):
        now = START + (last + 1) * MINUTE + timedelta(seconds=20)
        findings = detect(full.window(last - lookback + 1, lookback), tuning)
        changes = reconcile(list(open_now.values()), findings, now, COOLDOWN)
        resolved = {i.id for i in changes.resolved}
        alerting = {i.subject for i in open_now.values() if i.id not in resolved}
        opened += [(i, type_) for i, type_ in announcements(alerting, changes.opened)]
        open_now.update({i.id: i for i in [*changes.opened, *changes.updated]})
        for gone in changes.resolved:
            del open_now[gone.id]
    return opened


def _minute_of(insight: Insight) -> float:
    return (insight.created_at - START) / MINUTE


def score(scenario: Scenario, opened: Sequence[tuple[Insight, str]]) -> Score:
    grace = GRACE / MINUTE

    def covers(incident: Incident, insight: Insight) -> bool:
        at = _minute_of(insight)
        return insight.subject == incident.type and incident.start <= at <= incident.end + grace

    insights = [i for i, _ in opened]
    result = Score(scenario.name, len(scenario.incidents), 0, len(insights), 0)
    result.alerts = sum(1 for _, type_ in opened if type_ == "insight.opened")
    for incident in scenario.incidents:
        hits = [
            i for i in insights if i.kind == EXPECTED_KIND[incident.kind] and covers(incident, i)
        ]
        if hits:
            result.detected += 1
            result.delays.append(round(min(_minute_of(i) for i in hits) - incident.start))
    for insight in insights:
        if any(covers(incident, insight) for incident in scenario.incidents):
            result.true_insights += 1
        else:
            result.false_insights.append(
                f"{insight.kind} {insight.subject} at minute {_minute_of(insight):.0f}"
            )
    return result


_CHECKOUT = TaskProfile("payments.charge", per_minute=40, failure=0.02, duration_s=0.8)
_RENDER = TaskProfile(
    "render.thumbnail", per_minute=25, failure=0.01, duration_s=2.5, duration_sigma=0.5
)
_EMAIL = TaskProfile(
    "email.send",
    per_minute=15,
    failure=0.03,
    duration_s=0.3,
    errors=("smtp 451 temporary failure for user@example.com", "connection reset by peer"),
)
_RARE = TaskProfile(
    "reports.nightly", per_minute=3, failure=0.05, duration_s=20, duration_sigma=0.8
)
_PROFILES = (_CHECKOUT, _RENDER, _EMAIL)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("quiet", 11, 8 * 60, _PROFILES),
    Scenario("quiet_day", 52, 24 * 60, (*_PROFILES, _RARE)),
    Scenario(
        "quiet_noisy",
        12,
        8 * 60,
        (
            TaskProfile(
                "payments.charge",
                per_minute=40,
                failure=0.04,
                duration_s=0.8,
                duration_sigma=0.7,
                lag_sigma=1.0,
                daily_swing=0.6,
            ),
            _RARE,
            _EMAIL,
        ),
    ),
    Scenario(
        "failure_burst",
        21,
        4 * 60,
        _PROFILES,
        (Incident("failure_burst", "payments.charge", 150, 15, size=0.35),),
    ),
    Scenario(
        "latency_regression",
        22,
        4 * 60,
        _PROFILES,
        (Incident("latency_regression", "render.thumbnail", 140, 40, size=3.0),),
    ),
    Scenario(
        "stuck_queue",
        23,
        4 * 60,
        _PROFILES,
        (Incident("stuck_queue", "email.send", 130, 20),),
    ),
    Scenario(
        "bad_version",
        24,
        4 * 60,
        _PROFILES,
        (Incident("bad_version", "payments.charge", 120, 30, size=0.3),),
    ),
    *(
        Scenario(
            f"moderate_{kind}",
            seed,
            10 * 60,
            _PROFILES,
            tuple(
                Incident(kind, _PROFILES[n % 3].name, 90 + 100 * n, minutes, size)
                for n, size in enumerate(sizes)
            ),
        )
        for kind, seed, minutes, sizes in (
            ("failure_burst", 41, 10, (0.15, 0.12, 0.25, 0.12, 0.15)),
            ("latency_regression", 42, 20, (2.0, 2.0, 2.0, 1.8, 1.8)),
            ("stuck_queue", 43, 10, (0, 0, 0, 0, 0)),
            ("stopped_queue", 45, 10, (0, 0, 0, 0, 0)),
            ("bad_version", 44, 20, (0.15, 0.15, 0.3, 0.12, 0.15)),
        )
    ),
    Scenario(
        "mixed_day",
        31,
        12 * 60,
        (*_PROFILES, _RARE),
        (
            Incident("failure_burst", "email.send", 120, 12, size=0.4),
            Incident("latency_regression", "payments.charge", 200, 30, size=2.5),
            Incident("stuck_queue", "render.thumbnail", 300, 15),
            Incident("bad_version", "render.thumbnail", 400, 30, size=0.35),
            Incident("failure_burst", "payments.charge", 520, 10, size=0.3),
            Incident("latency_regression", "email.send", 600, 25, size=4.0),
            Incident("stopped_queue", "render.thumbnail", 670, 8),
        ),
    ),
)
