"""The figures against their targets: a table on stdout, JSON and a short markdown summary
in bench/results/."""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.machine import summary


@dataclass(frozen=True)
class Row:
    figure: str
    value: float | None
    unit: str
    target: str = ""
    passed: bool | None = None  # None: reported, no target

    @property
    def status(self) -> str:
        return {True: "PASS", False: "MISS", None: ""}[self.passed]

    def shown(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"
        if self.unit == "ms":
            return f"{self.value:,.2f} ms"
        if self.unit == "x":
            return f"{self.value:.2f}x"
        return f"{self.value:,.0f} {self.unit}"


def _at_least(figure: str, value: float, unit: str, floor: float) -> Row:
    return Row(figure, value, unit, f">= {floor:,.0f} {unit}", value >= floor)


def _at_most(figure: str, value: float, unit: str, ceiling: float) -> Row:
    return Row(figure, value, unit, f"<= {ceiling:g} {unit}", value <= ceiling)


def rows(results: dict[str, Any]) -> list[Row]:
    agentry, celery = results["agentry"], results["celery"]
    drain, alone, lat = agentry["drain"], agentry["submit_alone"], agentry["latency"]
    n = drain["tasks"]
    table = [
        _at_least(f"Drain: {n:,} echo, SubmitTasks x{drain['batch']}", drain["tasks_per_s"],
                  "tasks/s", 3000),
        Row("  submit during the drain", drain["submit_tasks_per_s"], "tasks/s"),
        Row("  submit alone (queue nobody reads)", alone["tasks_per_s"], "tasks/s"),
    ]  # fmt: skip
    for pool, run in celery.get("runs", {}).items():
        table += [
            Row(f"Celery {pool}: submit+drain, as above", run["tasks_per_s"], "tasks/s"),
            Row(f"  Celery {pool}: full queue, worker only", run["full_queue_tasks_per_s"],
                "tasks/s", "ref. ~0.9-1.1k"),
            Row(f"  Celery {pool}: enqueue alone", run["enqueue_alone_tasks_per_s"], "tasks/s"),
            Row(f"  Agentry / Celery {pool} (submit+drain)",
                drain["tasks_per_s"] / run["tasks_per_s"], "x"),
            Row(f"  Agentry / Celery {pool} (vs full queue)",
                drain["tasks_per_s"] / run["full_queue_tasks_per_s"], "x"),
        ]  # fmt: skip
    start, floor = lat["submit_to_start_ms"], agentry["latency_floor"]
    table += [
        _at_most(f"Submit->start p50 ({lat['target_rate_per_s']:g}/s SubmitTask)",
                 start["p50"], "ms", 2),
        _at_most("Submit->start p99", start["p99"], "ms", 5),
        Row("Submit->start max", start["max"], "ms"),
        Row(f"  p50 at {floor['target_rate_per_s']:g}/s (nearly unloaded)",
            floor["submit_to_start_ms"]["p50"], "ms"),
        Row(f"  p99 at {floor['target_rate_per_s']:g}/s", floor["submit_to_start_ms"]["p99"], "ms"),
        Row("  SubmitTask round trip p50 (client)", lat["submit_rpc_ms"]["p50"], "ms"),
        Row("  SubmitTask round trip p99 (client)", lat["submit_rpc_ms"]["p99"], "ms"),
        Row("  rate achieved", lat["achieved_rate_per_s"], "tasks/s"),
        Row("  SubmitTask calls failed", lat["submit_errors"], "calls",
            "0", lat["submit_errors"] == 0),
        _at_most("Idle agent RSS (VmRSS)", agentry["idle_rss_mib"], "MiB", 120),
        Row("  RSS after the runs", agentry["rss_after_mib"], "MiB"),
    ]  # fmt: skip
    off = results.get("agentry_security_off")
    if off is not None:
        off_start = off["latency"]["submit_to_start_ms"]
        table += [
            Row("Security off (no mTLS, tokens, encryption): drain", off["drain"]["tasks_per_s"],
                "tasks/s"),
            Row("  drain with security on / off", drain["tasks_per_s"] / off["drain"]["tasks_per_s"],
                "x"),
            Row("  submit->start p50, security off", off_start["p50"], "ms"),
            Row("  submit->start p99, security off", off_start["p99"], "ms"),
            Row("  SubmitTask round trip p50, security off", off["latency"]["submit_rpc_ms"]["p50"],
                "ms"),
        ]  # fmt: skip
    elif results.get("security") == "off":
        table.insert(0, Row("SECURITY OFF: figures without mTLS, tokens, encryption", 0, ""))
    return table


def table_text(table: list[Row]) -> str:
    width = max(len(r.figure) for r in table)
    lines = [f"{'figure':<{width}}  {'value':>16}  {'target':<16}  status"]
    lines.append("-" * len(lines[0]))
    lines += [f"{r.figure:<{width}}  {r.shown():>16}  {r.target:<16}  {r.status}" for r in table]
    return "\n".join(lines)


def cpu_lines(results: dict[str, Any]) -> list[str]:
    """Who used the CPU in each timed phase, in shares of one core, and a warning when other
    work on the machine took a real share (that phase's figures are low then)."""
    phases = [(phase, results["agentry"][phase]) for phase in ("drain", "latency")]
    for pool, run in results["celery"].get("runs", {}).items():
        phases.append(
            (
                f"Celery {pool} full-queue drain (with start-up)",
                {"cpu_s": run["full_queue_cpu_s"], "seconds": run["full_queue_seconds"]},
            )
        )
        phases.append((f"Celery {pool} submit+drain", run))
    lines = []
    for phase, figures in phases:
        cpu, wall_s = figures["cpu_s"], figures["seconds"]
        parts = ", ".join(f"{k} {v:.1f}s ({v / wall_s:.0%})" for k, v in cpu.items())
        lines.append(f"CPU in the {wall_s:.1f}s {phase} (share of one core): {parts}")
        if cpu.get("other", 0) / wall_s > 0.25:
            lines.append(
                f"  WARNING: other processes used {cpu['other'] / wall_s:.0%} of a core during "
                f"the {phase}; its figures are lower than on a quiet machine."
            )
    return lines


def profile_text(phase: str, profile: dict[str, Any], top: int = 15) -> str:
    lines = [
        f"Task agent profile, {phase} (run again under py-spy, {profile['rate_hz']} Hz): "
        f"{profile['samples']} samples of the main thread, on CPU "
        f"{profile['busy_share']:.0%} of the {profile['wall_s']:.1f}s.",
        "By the last Agentry function on the stack (its code plus the libraries it called):",
    ]
    lines += [
        f"  {r['percent']:5.1f}%  {r['function']}" for r in profile["by_agentry_function"][:top]
    ]
    lines.append("By function, self time:")
    lines += [f"  {r['percent']:5.1f}%  {r['function']}" for r in profile["self"][:top]]
    return "\n".join(lines)


def baseline_line(celery: dict[str, Any]) -> str:
    if not celery.get("runs"):
        return "Celery baseline: not run."
    workers = "; ".join(f"{r['worker_args']}" for r in celery["runs"].values())
    return (
        f"Celery baseline: {celery['version']}, one worker on the same Redis ({workers}), "
        "no result backend. Full queue: all enqueued first, timed from the first no-op run to "
        "the last. Submit+drain: enqueued while the worker drains, timed like Agentry's drain."
    )


def markdown(results: dict[str, Any], table: list[Row]) -> str:
    lines = [
        f"# Task benchmark ({results['servers']} servers)",
        "",
        f"Run {results['started_at']}, code {results['git']['commit']}"
        f"{' with local changes' if results['git']['dirty'] else ''}: `{results['command']}`.",
        "",
        f"Machine: {summary(results['machine'])}.",
        "",
        "| figure | value | target | status |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {'&emsp;' if r.figure.startswith(' ') else ''}{r.figure.strip()} | {r.shown()} "
        f"| {r.target} | {r.status} |"
        for r in table
    ]
    lines += ["", *(f"- {line.strip()}" for line in cpu_lines(results))]
    lines += ["", baseline_line(results["celery"])]
    for phase, found in (results.get("profile") or {}).items():
        lines += ["", "```", profile_text(phase, found), "```"]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], table: list[Row], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    profiled = "-profile" if results.get("profile") else ""
    stem = out_dir / f"tasks-{results['servers']}{profiled}"
    payload = {**results, "targets": [{**asdict(r), "status": r.status} for r in table]}
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(markdown(results, table))
    return [json_path, md_path]
