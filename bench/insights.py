"""The insight detectors' precision and recall on the shipped generated histories
(services/analysis/scenarios.py): per scenario, the incidents injected and detected, the
insights opened and how many were true, and the minutes from an incident's start to its first
insight. Targets: precision and recall ≥ 0.9, and no insight in the quiet scenarios. Pure
computation, no servers; written to bench/results/insights.md too.

    python -m bench.insights [--strict]
"""

import argparse
import sys
import time
from pathlib import Path

from bench.report import Row, table_text
from services.analysis.scenarios import SCENARIOS, Score, run, score

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results"
TARGET = 0.9


def _share(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _rows(result: Score) -> list[Row]:
    name = result.scenario
    if not result.incidents:
        return [Row(f"{name}: insights in a quiet history", result.insights, "", "0",
                    result.insights == 0)]  # fmt: skip
    delays = sorted(result.delays)
    return [
        Row(f"{name}: recall ({result.detected}/{result.incidents} incidents)",
            _share(result.recall), "%"),
        Row(f"{name}: precision ({result.true_insights}/{result.insights} insights)",
            _share(result.precision), "%"),
        Row(f"{name}: minutes to detect (median)", delays[len(delays) // 2] if delays else None,
            "min"),
        Row(f"{name}: alerts (insight.opened) for {result.incidents} incidents", result.alerts,
            ""),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.insights", description=__doc__)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    table: list[Row] = []
    incidents = detected = insights = true_insights = 0
    started = time.perf_counter()
    for scenario in SCENARIOS:
        result = score(scenario, run(scenario))
        table += _rows(result)
        incidents += result.incidents
        detected += result.detected
        insights += result.insights if result.incidents else 0
        true_insights += result.true_insights
    recall = detected / incidents if incidents else None
    precision = true_insights / insights if insights else None
    table += [
        Row(f"all: recall ({detected}/{incidents} incidents)", _share(recall), "%",
            f">= {TARGET:.0%}", (recall or 0) >= TARGET),
        Row(f"all: precision ({true_insights}/{insights} insights)", _share(precision), "%",
            f">= {TARGET:.0%}", (precision or 0) >= TARGET),
        Row("detectors' time over every scenario", time.perf_counter() - started, "s"),
    ]  # fmt: skip
    text = "\n".join(
        [
            "Insight detectors on generated histories (services/analysis/scenarios.py): the",
            "target applies to all the scenarios with incidents together; quiet ones allow none.",
            "",
            table_text(table),
        ]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "insights.md"
    path.write_text("```\n" + text + "\n```\n")
    sys.stdout.write(f"{text}\n\nWritten: {path.relative_to(ROOT)}\n")
    return 1 if args.strict and any(r.passed is False for r in table) else 0


if __name__ == "__main__":
    sys.exit(main())
