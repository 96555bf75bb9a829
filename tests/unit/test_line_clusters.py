"""Log lines grouped by fingerprint: what a person reading the clusters expects."""

import pytest

from services.analysis.line_clusters import clusters

LOG = [
    "GET /orders/123 took 35ms",
    "payment ord_8f2k1 declined: card expired",
    "GET /orders/9 took 120ms",
    "payment ord_77aa9 declined: card expired",
    "GET /orders/4411 took 8ms",
    "worker started",
]


def test_lines_differing_in_particulars_share_a_cluster_largest_first() -> None:
    result = clusters(LOG)

    assert (result["lines"], result["distinct"]) == (6, 3)
    assert [(c["count"], c["first_index"]) for c in result["clusters"]] == [(3, 0), (2, 1), (1, 5)]
    first = result["clusters"][0]
    assert first["example"] == "GET /orders/123 took 35ms"
    assert first["share"] == pytest.approx(0.5)
    assert "123" not in first["fingerprint"]
    assert result["clusters"][1]["fingerprint"] == "payment <id> declined: card expired"


def test_ties_keep_the_order_lines_were_first_seen() -> None:
    result = clusters(["b error 1", "a error x", "b error 2", "a error x"])

    assert [c["example"] for c in result["clusters"]] == ["b error 1", "a error x"]


def test_top_keeps_the_largest_clusters_and_counts_them_all() -> None:
    result = clusters(LOG, top=1)

    assert result["distinct"] == 3
    assert [c["count"] for c in result["clusters"]] == [3]


@pytest.mark.parametrize(
    ("lines", "top", "message"),
    [
        ([], 20, "lines is empty"),
        (["ok", 3], 20, "lines[1] is not a string: 3"),
        ("one line", 20, "lines must be a list of strings, got str"),
        (["ok"], 0, "top must be an integer from 1 to 1000, got 0"),
        (["ok"], True, "top must be an integer from 1 to 1000, got True"),
    ],
)
def test_bad_input_is_refused_naming_what_is_wrong(lines: object, top: int, message: str) -> None:
    with pytest.raises(ValueError) as error:
        clusters(lines, top=top)  # type: ignore[arg-type]

    assert str(error.value) == message
