"""The operators' dashboard in headless Chromium against the real platform: signing in, a
run's DAG turning green live, a dead letter redriven with an edited payload, what a viewer
is not offered, and API errors shown on the page."""

import re
import time
import uuid

import httpx

from tests.browser.conftest import Platform, screenshot, sign_in, skip_without_a_browser
from tests.cohorts import analyze, cohort, publish_to

skip_without_a_browser()

from playwright.sync_api import Page, expect  # noqa: E402 - after the skip: may be missing

# A diamond whose first step naps: its page is open before anything after the nap ran.
DIAMOND = """
name: {name}
steps:
  - {{name: nap, type: sleep, input: {{seconds: {{$ref: input.nap}}}}}}
  - {{name: left, type: echo, depends_on: [nap], input: {{side: left}}}}
  - {{name: right, type: echo, depends_on: [nap], input: {{side: right}}}}
  - {{name: join, type: echo, depends_on: [left, right], input: {{l: {{$ref: steps.left.output}}}}}}
"""
STEPS = ["nap", "left", "right", "join"]
GREEN = "rgb(220, 243, 227)"


def _define(platform: Platform) -> str:
    name = f"diamond-{uuid.uuid4().hex[:6]}"
    with platform.client("admin") as admin:
        reply = admin.put(
            f"/v1/workflows/{name}",
            content=DIAMOND.format(name=name).encode(),
            headers={"Content-Type": "application/yaml"},
        )
    assert reply.status_code == 201, reply.text
    return name


def _start(platform: Platform, workflow: str, nap_s: float) -> str:
    with platform.client("operator") as operator:
        reply = operator.post(f"/v1/workflows/{workflow}/runs", json={"input": {"nap": nap_s}})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def _dead_letter(platform: Platform) -> tuple[str, str]:
    """A task that fails for good at once, and the dead letter it became: (task, letter)."""
    message = f"the printer is on fire {uuid.uuid4().hex[:6]}"
    with platform.client("operator") as operator:
        reply = operator.post(
            "/v1/tasks",
            json={"type": "fail", "payload": {"times": 9, "retryable": False, "message": message}},
        )
        assert reply.status_code == 201, reply.text
        task_id = reply.json()["id"]
        deadline = time.monotonic() + 20
        while True:
            letters = operator.get("/v1/dead-letters", params={"type": "fail"}).json()["items"]
            mine = [d for d in letters if d["task"]["id"] == task_id]
            if mine:
                return task_id, mine[0]["id"]
            assert time.monotonic() < deadline, f"task {task_id} never reached the dead letters"
            time.sleep(0.05)


def _queued_task(platform: Platform) -> str:
    """A task not due for a minute: it waits, queued, until cancelled."""
    with platform.client("operator") as operator:
        reply = operator.post(
            "/v1/tasks", json={"type": "sleep", "payload": {"seconds": 1}, "delay_s": 60}
        )
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def _open_run_from_the_list(page: Page, platform: Platform, workflow: str, nap_s: float) -> str:
    """Starts a run through the API while the runs list is open; it shows up live."""
    page.goto(f"{platform.url}/#/runs?workflow={workflow}")
    expect(page.locator("#live")).to_have_attribute(
        "data-watching", re.compile(r"\btype:run\.started\b")
    )
    run_id = _start(platform, workflow, nap_s)
    page.locator(f"tr[data-run='{run_id}'] a").click()
    expect(page.locator("svg.dag g.step")).to_have_count(len(STEPS))
    return run_id


def test_an_operator_signs_in_and_watches_a_run_turn_green(page: Page, platform) -> None:
    workflow = _define(platform)
    sign_in(page, platform, "operator")
    run_id = _open_run_from_the_list(page, platform, workflow, nap_s=4)
    # A marker on the window: a reload would lose it.
    page.evaluate("window.notReloaded = true")
    expect(page.locator("svg.dag g.step[data-step=join]")).not_to_have_attribute(
        "data-state", "SUCCEEDED"
    )
    expect(page.get_by_role("button", name="Cancel run")).to_be_visible()
    screenshot(page, "run-in-progress")

    for step in STEPS:
        expect(page.locator(f"svg.dag g.step[data-step={step}]")).to_have_attribute(
            "data-state", "SUCCEEDED", timeout=30_000
        )
    expect(page.locator(".run-head .badge")).to_have_text("SUCCEEDED")
    fill = page.locator("svg.dag g.step[data-step=join] rect").evaluate(
        "rect => getComputedStyle(rect).fill"
    )
    assert fill == GREEN
    assert page.evaluate("window.notReloaded") is True
    assert page.url.endswith(f"#/runs/{run_id}")
    # An ended run is not offered for cancelling.
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)

    # A step's page shows its output.
    page.locator("svg.dag g.step[data-step=left]").click()
    expect(page.locator(".step-detail")).to_contain_text('"side": "left"')


def test_an_operator_cancels_a_run_and_a_task(page: Page, platform) -> None:
    workflow = _define(platform)
    task_id = _queued_task(platform)
    sign_in(page, platform, "operator")

    _open_run_from_the_list(page, platform, workflow, nap_s=60)
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(".run-head .badge")).to_have_text("CANCELLED")
    expect(page.locator("svg.dag g.step[data-step=nap]")).to_have_attribute(
        "data-state", "CANCELLED"
    )
    # Retried, the cancelled steps run again; and it is cancelled again.
    page.get_by_role("button", name="Retry run").click()
    expect(page.locator(".run-head .badge")).to_have_text("RUNNING")
    expect(page.locator("svg.dag g.step[data-step=nap]")).to_have_attribute("data-state", "RUNNING")
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(".run-head .badge")).to_have_text("CANCELLED")

    page.goto(f"{platform.url}/#/tasks/{task_id}")
    expect(page.locator(".task-head .badge").first).to_have_text("QUEUED")
    page.get_by_role("button", name="Cancel task").click()
    expect(page.locator(".task-head .badge").first).to_have_text("CANCELLED")
    expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)


def test_the_tasks_list_changes_live(page: Page, platform) -> None:
    """A listed task's row follows its task without a reload."""
    task_id = _queued_task(platform)
    sign_in(page, platform, "operator")
    page.goto(f"{platform.url}/#/tasks?type=sleep&state=QUEUED")
    row = page.locator(f"tr[data-task='{task_id}']")
    expect(row.locator(".badge")).to_have_text("QUEUED")
    expect(page.locator("#live")).to_have_attribute(
        "data-watching", re.compile(rf"\btask:{task_id}\b")
    )
    page.evaluate("window.notReloaded = true")

    with platform.client("operator") as operator:
        assert operator.post(f"/v1/tasks/{task_id}/cancel", json={}).status_code == 200

    expect(row.locator(".badge")).to_have_text("CANCELLED")
    assert page.evaluate("window.notReloaded") is True
    screenshot(page, "tasks-list-live")


def test_an_operator_redrives_a_dead_letter_with_an_edited_payload(page: Page, platform) -> None:
    task_id, letter_id = _dead_letter(platform)
    sign_in(page, platform, "operator")
    page.goto(f"{platform.url}/#/dead-letters?type=fail")
    row = page.locator(f"tr[data-task='{task_id}']")
    expect(row).to_contain_text("the printer is on fire")
    row.locator("button.open-letter").click()
    payload = page.locator(".letter-detail textarea[name=payload]")
    expect(payload).to_have_value(re.compile(r'"times": 9'))
    payload.fill('{"times": 0}')
    page.get_by_role("button", name="Redrive").click()

    redriven = page.locator(".letter-detail a.redriven")
    expect(redriven).to_be_visible()
    new_task = redriven.inner_text()
    # The list says where the letter went.
    expect(page.locator(f"tr[data-letter='{letter_id}']")).to_contain_text("redriven")
    redriven.click()
    expect(page.locator(".task-head .badge").first).to_have_text("SUCCEEDED", timeout=20_000)
    expect(page.locator(".task-head")).to_contain_text("succeeded_on_attempt")
    with platform.client("operator") as operator:
        redone = operator.get(f"/v1/tasks/{new_task}").json()
    assert redone["payload"] == {"times": 0}
    assert redone["state"] == "SUCCEEDED"


def test_a_viewer_is_offered_no_redrive_purge_or_cancel(page: Page, platform) -> None:
    workflow = _define(platform)
    _task_id, letter_id = _dead_letter(platform)
    sign_in(page, platform, "viewer")

    page.goto(f"{platform.url}/#/dead-letters?type=fail")
    page.locator(f"tr[data-letter='{letter_id}'] button.open-letter").click()
    expect(page.locator(".letter-detail h2")).to_contain_text(letter_id)
    expect(page.locator(".letter-detail textarea[name=payload]")).to_have_attribute("readonly", "")
    expect(page.get_by_role("button", name="Redrive")).to_have_count(0)
    expect(page.locator(".purge")).to_have_count(0)
    screenshot(page, "viewer-dead-letter")

    # A running run and a running task: operators could cancel them, the viewer may not.
    run_id = _open_run_from_the_list(page, platform, workflow, nap_s=6)
    expect(page.locator("svg.dag g.step[data-step=nap]")).to_have_attribute("data-state", "RUNNING")
    expect(page.locator(".run-head .badge")).to_have_text("RUNNING")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    with platform.client("viewer") as viewer:
        run = viewer.get(f"/v1/runs/{run_id}").json()
    nap_task = next(s for s in run["steps"] if s["name"] == "nap")["task_ids"][0]
    page.goto(f"{platform.url}/#/tasks/{nap_task}")
    expect(page.locator(".task-head .badge").first).to_have_text("RUNNING")
    expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)
    with platform.client("operator") as operator:
        assert operator.post(f"/v1/runs/{run_id}/cancel").status_code == 200


def test_api_errors_are_shown(page: Page, platform) -> None:
    page.goto(f"{platform.url}/")
    page.fill("textarea[name=token]", "not-a-token")
    page.click("form.sign-in button[type=submit]")
    expect(page.locator("form.sign-in [role=alert]")).to_contain_text("401")
    expect(page.locator("#nav")).to_be_hidden()

    sign_in(page, platform, "operator")
    missing = str(uuid.uuid4())
    page.goto(f"{platform.url}/#/tasks/{missing}")
    alert = page.locator("#alerts [role=alert]")
    expect(alert).to_contain_text("404")
    expect(alert).to_contain_text(f"task {missing} not found")

    # A comparison the analysis service refuses: no agent runs version "next".
    page.click("#nav a[data-section=insights]")
    page.fill(".canaries input[name=baseline]", "dev")
    page.fill(".canaries input[name=canary]", "next")
    page.get_by_role("button", name="Compare").click()
    expect(alert.filter(has_text="canary analysis")).to_contain_text(
        "400 Bad Request: no task events from version 'next' in the window"
    )


def test_agents_and_reports_are_shown(page: Page, platform) -> None:
    type_ = f"canary-{uuid.uuid4().hex[:6]}"
    publish_to(platform.stack, cohort("1.0", type_, 2, 0) + cohort("1.1", type_, 2, 0))
    with platform.client("operator") as operator:
        for _ in range(3):
            assert (
                operator.post("/v1/tasks", json={"type": "echo", "payload": {}}).status_code == 201
            )
        verdict = analyze(
            operator, {"subject": type_, "baseline": "1.0", "canary": "1.1", "window_s": 600}
        )
    sign_in(page, platform, "viewer")
    page.click("#nav a[data-section=agents]")
    for role in ("task_agent", "orchestrator", "analysis", "gateway"):
        expect(page.locator("table.agents tbody")).to_contain_text(role)
    expect(page.locator("table.agents tbody .badge")).to_have_text(
        [re.compile("^(ACTIVE|IDLE)$")] * 4
    )
    screenshot(page, "agents")

    page.click("#nav a[data-section=insights]")
    expect(page.locator(".charts figure.chart")).to_have_count(3)
    expect(page.locator("table.report tbody")).to_contain_text("echo")
    # Without an insights route (an older gateway) the page says so instead of failing.
    expect(page.locator(".insights :is(.no-insights, .no-open, table)")).to_have_count(1)

    # Past verdicts are listed, and one opens its statistics; only operators are offered a
    # new comparison.
    row = page.locator(f".canaries tr[data-analysis='{verdict['id']}']")
    expect(row).to_contain_text(verdict["verdict"])
    expect(row.locator("td")).to_contain_text([type_, "1.1 against 1.0"])
    row.locator("button.open-verdict").click()
    expect(page.locator(".verdict-detail")).to_contain_text(verdict["id"])
    page.locator(".verdict-detail summary").click()
    expect(page.locator(".verdict-detail pre.json")).to_contain_text('"min_samples": 50')
    expect(page.locator(".canaries input[name=id]")).to_be_visible()
    expect(page.get_by_role("button", name="Compare")).to_have_count(0)


def test_the_page_is_public_and_confined_by_its_content_security_policy(platform) -> None:
    with httpx.Client(base_url=platform.url) as anonymous:
        index = anonymous.get("/")
        script = anonymous.get("/dashboard/js/main.js")
        assert anonymous.get("/v1/me").status_code == 401
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    policy = index.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy
    host = platform.url.removeprefix("http://")
    assert f"connect-src 'self' ws://{host} wss://{host};" in policy
    assert index.headers["x-content-type-options"] == "nosniff"
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    with platform.client("viewer") as viewer:
        me = viewer.get("/v1/me").json()
    assert me["role"] == "viewer"
    assert "GET /v1/runs" in me["allowed"]
    assert not [route for route in me["allowed"] if not route.startswith("GET ")]
