"""RunAnalysis's work, as a caller sees it: JSON in, JSON out, and bad input refused with a
message naming what is wrong."""

import json

import pytest

from libs.common.errors import InvalidArgument
from services.analysis.analyses import MAX_INPUT_BYTES, MAX_ITEMS, run


def _run(kind: str, document: object) -> dict:
    return json.loads(run(kind, json.dumps(document).encode()))


def test_describe_answers_the_statistics() -> None:
    output = _run("analysis.describe", {"values": [2, 4, 4, 4, 5, 5, 7, 9]})

    assert output["count"] == 8
    assert output["mean"] == 5
    assert output["percentiles"]["p50"] == 4.5


def test_anomalies_answers_the_points_with_their_scores() -> None:
    values = [10.0, 10.4, 9.7, 10.1, 9.9, 10.3, 9.8, 10.2, 10.0, 9.9] * 3
    values[25] = 30.0

    output = _run("analysis.anomalies", {"values": values, "threshold": 5})

    assert (output["count"], output["found"]) == (30, 1)
    assert [a["index"] for a in output["anomalies"]] == [25]
    assert set(output["anomalies"][0]) == {"index", "value", "expected", "score"}


def test_patterns_answers_the_clusters() -> None:
    output = _run("analysis.patterns", {"lines": ["took 3ms", "took 5ms", "boom"], "top": 5})

    assert [c["count"] for c in output["clusters"]] == [2, 1]


@pytest.mark.parametrize(
    ("kind", "raw", "message"),
    [
        ("analysis.median", b"{}", "unknown analysis kind 'analysis.median': one of analysis"),
        ("", b"{}", "unknown analysis kind ''"),
        ("analysis.describe", b"", "analysis.describe: input must be a JSON object"),
        ("analysis.describe", b"{", "analysis.describe: input is not valid JSON"),
        ("analysis.describe", b"[1, 2]", "analysis.describe: input must be a JSON object"),
        (
            "analysis.describe",
            b'{"values": [1, NaN]}',
            "analysis.describe: input is not valid JSON: NaN is not a number JSON allows",
        ),
        ("analysis.describe", b"{}", "analysis.describe: values is required"),
        ("analysis.describe", b'{"values": []}', "analysis.describe: values is empty"),
        (
            "analysis.describe",
            b'{"values": [1, "2"]}',
            "analysis.describe: values[1] is not a number: '2'",
        ),
        (
            "analysis.anomalies",
            b'{"values": [1], "treshold": 2}',
            "analysis.anomalies: 'treshold' is not an input of this analysis (it takes alpha,"
            " min_history, threshold, values)",
        ),
        (
            "analysis.anomalies",
            b'{"values": [1], "threshold": "high"}',
            "analysis.anomalies: threshold must be a number, got 'high'",
        ),
        (
            "analysis.anomalies",
            b'{"values": [1], "alpha": 2}',
            "analysis.anomalies: alpha must be in (0, 1], got 2.0",
        ),
        (
            "analysis.anomalies",
            b'{"values": [1], "min_history": 4.5}',
            "analysis.anomalies: min_history must be an integer, got 4.5",
        ),
        ("analysis.patterns", b'{"lines": "x"}', "analysis.patterns: lines must be a list"),
        ("analysis.patterns", b'{"lines": ["x"], "top": 0}', "analysis.patterns: top must be"),
    ],
)
def test_bad_input_is_invalid_argument_naming_what_is_wrong(
    kind: str, raw: bytes, message: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        run(kind, raw)

    assert str(error.value).startswith(message)


def test_too_large_an_input_is_refused_before_it_is_read() -> None:
    raw = b'{"values": [' + b"1," * (MAX_INPUT_BYTES // 2) + b"1]}"

    with pytest.raises(InvalidArgument, match=f"over the limit of {MAX_INPUT_BYTES}"):
        run("analysis.describe", raw)


def test_too_many_items_are_refused() -> None:
    raw = json.dumps({"values": [0] * (MAX_ITEMS + 1)}, separators=(",", ":")).encode()

    with pytest.raises(InvalidArgument, match=f"over the limit of {MAX_ITEMS}"):
        run("analysis.describe", raw)
