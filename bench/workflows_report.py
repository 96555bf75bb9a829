"""The workflow benchmark's table, CPU lines and result files (bench/workflows.py measures)."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.machine import summary
from bench.report import Row, _at_least, _at_most
from dev.stack import ROOT

RESULTS = ROOT / "bench/results"


def rows(figures: dict[str, Any]) -> list[Row]:
    ch, paced, serial = figures["chain"], figures["paced"], figures["serial"]
    fan = figures["fan_out"]
    alone, loaded = serial["overhead_ms"], paced["overhead_ms"]
    rate = f"{paced['offered_runs_per_s']:.0f} runs/s"
    return [
        _at_least(f"Chain: {ch['runs']:,} runs x {ch['steps']} bench.echo, "
                  f"{ch['in_flight']} in flight", ch["runs_per_s"], "runs/s", 200),
        _at_least("  steps", ch["steps_per_s"], "steps/s", 1000),
        Row("  as the client saw it (first StartRun -> all SUCCEEDED)", ch["client_runs_per_s"],
            "runs/s"),
        Row("  last run created after", ch["all_started_ms"], "ms"),
        Row("  StartRun round trip p50", ch["start_run_rpc_ms"]["p50"], "ms"),
        Row("  StartRun round trip p99", ch["start_run_rpc_ms"]["p99"], "ms"),
        Row("  run created -> finished p50", ch["run_ms"]["p50"], "ms"),
        Row("  run created -> finished p99", ch["run_ms"]["p99"], "ms"),
        Row("  step gap p50 (queueing at saturation: steps waiting / steps per second)",
            ch["overhead_ms"]["p50"], "ms"),
        _at_most(f"Step overhead p50, {serial['runs']} runs one at a time (dependency's task "
                 "finished -> task started)", alone["p50"], "ms", 5),
        _at_most("Step overhead p99, one at a time", alone["p99"], "ms", 25),
        Row("  handler to handler p50 (the dependency's result write included)",
            serial["handler_gap_ms"]["p50"], "ms"),
        Row("  handler to handler p99", serial["handler_gap_ms"]["p99"], "ms"),
        Row("  task finished -> orchestrator recorded it p50", serial["noticed_ms"]["p50"], "ms"),
        _at_most(f"Step overhead p50, runs started at {rate}", loaded["p50"], "ms", 5),
        _at_most(f"Step overhead p99, at {rate}", loaded["p99"], "ms", 25),
        Row("  handler to handler p50 (the dependency's result write included)",
            paced["handler_gap_ms"]["p50"], "ms"),
        Row("  handler to handler p99", paced["handler_gap_ms"]["p99"], "ms"),
        Row("  stored -> started (task agent) p99", paced["queued_ms"]["p99"], "ms"),
        Row("  task finished -> orchestrator recorded it p50", paced["noticed_ms"]["p50"], "ms"),
        Row("  run created -> first task started p50", paced["first_ms"]["p50"], "ms"),
        _at_most(f"Fan-out: {fan['width']:,} items, StartRun -> SUCCEEDED", fan["client_ms"],
                 "ms", 3000),
        Row("  StartRun round trip (stores the tasks)", fan["start_run_rpc_ms"], "ms"),
        Row("  run created -> last task stored", fan["last_task_stored_ms"], "ms"),
        Row("  run created -> last task finished", fan["last_task_finished_ms"], "ms"),
        Row("  run created -> last end recorded, run finished", fan["run_ms"], "ms"),
    ]  # fmt: skip


def cpu_lines(figures: dict[str, Any]) -> list[str]:
    """Who used the CPU in each timed phase, in shares of one core, and a warning when other
    work on the machine took a real share (that phase's figures are low then)."""
    lines = []
    phases = (
        ("chain", "chain runs"),
        ("paced", "paced runs"),
        ("serial", "runs one at a time"),
        ("fan_out", "fan-out"),
    )
    for phase, label in phases:
        cpu, wall_s = figures[phase]["cpu_s"], figures[phase]["wall_s"]
        parts = ", ".join(f"{k} {v:.1f}s ({v / wall_s:.0%})" for k, v in cpu.items())
        line = f"CPU in the {wall_s:.1f}s of {label} (share of one core): {parts}"
        runs = figures[phase].get("runs")
        if runs:  # the chains': what a run costs, batched (saturated) or not
            line += f"; {sum(cpu.values()) / runs * 1000:.1f} ms per run in all"
        lines.append(line)
        if cpu.get("other", 0) / wall_s > 0.25:
            lines.append(
                f"  WARNING: other processes used {cpu['other'] / wall_s:.0%} of a core during "
                f"the {label}; its figures are lower than on a quiet machine."
            )
    return lines


def write(results: dict[str, Any], table: list[Row]) -> list[Path]:
    """The figures as JSON, and a markdown summary."""
    dirty = " with local changes" if results["git"]["dirty"] else ""
    lines = [
        f"# Workflow benchmark ({results['servers']} servers)",
        "",
        f"Run {results['started_at']}, code {results['git']['commit']}{dirty}: "
        f"`{results['command']}`.",
        "",
        f"Machine: {summary(results['machine'])}.",
        "",
        "One task agent and one orchestrator, mTLS, tokens and encryption at rest on. Runs/s: "
        "first run created to last run finished; step gaps from tasks.tasks and "
        "orchestrator.step_tasks (database clock).",
        "",
        "| figure | value | target | status |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {'&emsp;' if r.figure.startswith(' ') else ''}{r.figure.strip()} | {r.shown()} "
        f"| {r.target} | {r.status} |"
        for r in table
    ]
    lines += ["", *(f"- {line.strip()}" for line in cpu_lines(results["workflows"]))]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"workflows-{results['servers']}"
    payload = {**results, "targets": [{**asdict(r), "status": r.status} for r in table]}
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text("\n".join(lines) + "\n")
    return [json_path, md_path]
