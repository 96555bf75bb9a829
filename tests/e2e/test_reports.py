"""Reports through the real processes: tasks submitted over REST show up in
GET /v1/reports once the analysis service has read their events."""

import time
import uuid

from services.analysis.fingerprints import fingerprint
from tests.cohorts import analyze, cohort, publish_to


def _report(platform, want, group_by: str = "type") -> dict:
    deadline = time.monotonic() + 30
    with platform.client("viewer") as viewer:
        while True:
            reply = viewer.get("/v1/reports", params={"window": 600, "group_by": group_by})
            assert reply.status_code == 200, reply.text
            rows = {row["group"]: row for row in reply.json()["rows"]}
            if want(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)


def test_echo_and_fail_tasks_show_in_the_report_by_type(platform) -> None:
    marker = uuid.uuid4().hex[:8]
    with platform.client("operator") as operator:
        before = _report(platform, lambda rows: True)
        for _ in range(3):
            reply = operator.post("/v1/tasks", json={"type": "echo", "payload": {"m": marker}})
            assert reply.status_code == 201, reply.text
        for n in range(2):
            payload = {"times": 1, "retryable": False, "message": f"e2e report {marker} {n}"}
            reply = operator.post("/v1/tasks", json={"type": "fail", "payload": payload})
            assert reply.status_code == 201, reply.text

    def total(rows, group, key):
        return rows.get(group, {}).get(key, 0)

    def counted(rows) -> bool:
        return (
            total(rows, "echo", "succeeded") >= total(before, "echo", "succeeded") + 3
            and total(rows, "fail", "failed") >= total(before, "fail", "failed") + 2
        )

    rows = _report(platform, counted)
    assert counted(rows), rows
    echo, fail = rows["echo"], rows["fail"]
    assert echo["success_rate"] > 0 and echo["p50_s"] >= 0
    assert fail["dead_letters"] >= total(before, "fail", "dead_letters") + 2
    mine = fingerprint(f"e2e report {marker} 0")
    assert [e["count"] for e in fail["top_errors"] if e["fingerprint"] == mine] == [2]


def test_the_report_groups_by_the_task_agents_version(platform) -> None:
    with platform.client("operator") as operator:
        assert operator.post("/v1/tasks", json={"type": "echo", "payload": 1}).status_code == 201
    # The platform's agents run with the default AGENTRY_VERSION.
    rows = _report(platform, lambda rows: rows.get("dev", {}).get("succeeded", 0) > 0, "version")
    assert rows["dev"]["succeeded"] > 0
    assert "" not in rows


def test_a_bad_window_is_refused(platform) -> None:
    with platform.client("viewer") as viewer:
        assert viewer.get("/v1/reports", params={"window": 0}).status_code in (400, 422)
        assert viewer.get("/v1/reports", params={"group_by": "colour"}).status_code in (400, 422)


def test_a_canary_analysis_of_unknown_versions_is_refused_over_rest(platform) -> None:
    body = {"subject": "echo", "baseline": "dev", "canary": "9.9.9", "window_s": 600}
    with platform.client("operator") as operator:
        refused = operator.post("/v1/canary-analyses", json=body)
        assert refused.status_code == 400, refused.text
        assert "9.9.9" in refused.json()["detail"]
        missing = operator.get(f"/v1/canary-analyses/{uuid.uuid4()}")
        assert missing.status_code == 404
    with platform.client("viewer") as viewer:
        assert viewer.post("/v1/canary-analyses", json=body).status_code == 403


def test_canary_verdicts_are_listed_over_rest(platform) -> None:
    # A task type of its own: the shared platform's other verdicts are not in its list.
    type_ = f"canary-{uuid.uuid4().hex[:8]}"
    publish_to(platform.stack, cohort("1.0", type_, 2, 0) + cohort("1.1", type_, 2, 0))
    body = {"subject": type_, "baseline": "1.0", "canary": "1.1", "window_s": 600}
    with platform.client("operator") as operator:
        made = [analyze(operator, body) for _ in range(3)]
    with platform.client("viewer") as viewer:
        first = viewer.get("/v1/canary-analyses", params={"subject": type_, "page_size": 2})
        assert first.status_code == 200, first.text
        token = first.json()["next_page_token"]
        rest = viewer.get("/v1/canary-analyses", params={"subject": type_, "page_token": token})
        assert rest.status_code == 200, rest.text
        listed = first.json()["items"] + rest.json()["items"]
        assert [a["id"] for a in listed] == [a["id"] for a in reversed(made)]
        assert rest.json()["next_page_token"] is None
        assert listed[0] == made[-1]
        refused = viewer.get("/v1/canary-analyses", params={"page_token": "not-a-token"})
        assert refused.status_code == 400
        assert "page_token" in refused.json()["detail"]
        assert viewer.get("/v1/canary-analyses", params={"page_size": 0}).status_code == 422
