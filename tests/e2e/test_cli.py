"""`agentry` against the real processes, run as a user runs it: one process per command,
talking to the gateway with the token in AGENTRY_TOKEN."""

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from dev.stack import ROOT
from tests.cohorts import analyze, cohort, publish_to
from tests.secure import dev_secrets

PIPELINE = """
name: {name}
steps:
  - name: fetch
    type: echo
    input: {{order: {{$ref: input.order}}}}
  - name: each
    type: echo
    depends_on: [fetch]
    for_each: {{$ref: input.items}}
    input: {{line: {{$ref: item}}}}
  - name: total
    type: echo
    depends_on: [each]
    input: {{lines: {{$ref: steps.each.output}}}}
"""

DOOMED = """
name: {name}
steps:
  - name: fetch
    type: echo
  - name: boom
    type: fail
    depends_on: [fetch]
    input: {{times: 5, retryable: false, message: no luck}}
"""


def _env(url: str, token: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{ROOT}:{ROOT / 'libs/protos'}",
        "AGENTRY_URL": url,
        "AGENTRY_TOKEN": token,
    }


def _agentry(platform, *args: str, role: str | None = "admin", token: str | None = None):
    token = token if token is not None else platform.token(role) if role else ""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=_env(platform.stack.gateway_url, token),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _ok(platform, *args: str, role: str = "admin") -> str:
    done = _agentry(platform, *args, role=role)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    return done.stdout


def _json(platform, *args: str, role: str = "admin"):
    return json.loads(_ok(platform, *args, "--json", role=role))


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert done.stdout == ""
    [message] = done.stderr.splitlines()
    assert "Traceback" not in message
    return message


def _until(platform, task_id: str, states: tuple[str, ...], within: float = 20.0) -> dict:
    deadline = time.monotonic() + within
    with platform.client("admin") as admin:
        while (task := admin.get(f"/v1/tasks/{task_id}").json())["state"] not in states:
            assert time.monotonic() < deadline, task
            time.sleep(0.05)
    return task


def _watch_on_a_terminal(platform, run_id: str) -> tuple[int, str]:
    """`runs watch` with its output on a pseudo-terminal, as in a shell."""
    leader, follower = os.openpty()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "runs", "watch", run_id],
        cwd=ROOT,
        env={
            **_env(platform.stack.gateway_url, platform.token("viewer")),
            "LANG": "C.UTF-8",
            "COLUMNS": "120",
        },
        stdout=follower,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes with its last writer
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert watcher.wait(timeout=60) is not None
    assert watcher.stderr is not None
    assert watcher.stderr.read() == b""
    return watcher.returncode, shown.decode()


def test_a_task_is_submitted_got_and_listed(platform) -> None:
    kind = "echo"
    said = _ok(platform, "tasks", "submit", kind, "--payload", '{"n": 7}', "--priority", "high")
    assert said.startswith("task ") and "submitted" in said
    task_id = said.split()[1]
    _until(platform, task_id, ("SUCCEEDED",))
    shown = _ok(platform, "tasks", "get", task_id, role="viewer")
    assert task_id in shown
    assert "SUCCEEDED" in shown
    assert '{"n":7}' in shown  # the result
    listed = _json(platform, "tasks", "list", "--type", kind, "--state", "succeeded")
    assert task_id in [t["id"] for t in listed["items"]]
    assert {t["state"] for t in listed["items"]} == {"SUCCEEDED"}
    table = _ok(platform, "tasks", "list", "--type", kind, "--limit", "500")
    assert table.splitlines()[0].split() == ["ID", "TYPE", "STATE", "ATTEMPTS", "QUEUE", "CREATED"]
    assert task_id in table


def test_a_task_is_cancelled_and_an_idempotency_key_submits_once(platform) -> None:
    # A queue no agent serves: the task waits there until it is cancelled.
    idle = f"cli-idle-{uuid.uuid4().hex[:8]}"
    key = f"cli-{uuid.uuid4().hex}"
    submit = ("tasks", "submit", "echo", "--queue", idle, "--idempotency-key", key)
    first = _json(platform, *submit, role="operator")
    assert first["state"] == "QUEUED"
    assert _json(platform, *submit, role="operator")["id"] == first["id"]
    said = _ok(platform, "tasks", "cancel", first["id"], role="operator")
    assert said.strip() == f"task {first['id']} cancelled"
    with platform.client("viewer") as viewer:
        assert viewer.get(f"/v1/tasks/{first['id']}").json()["state"] == "CANCELLED"


def test_a_workflow_applied_from_yaml_is_run_and_watched_to_success(platform, tmp_path) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(PIPELINE.format(name=name))
    assert _ok(platform, "workflows", "apply", "-f", str(definition)).strip() == (
        f"workflow {name} version 1 applied"
    )
    shown = _ok(platform, "workflows", "get", name, role="viewer")
    assert [row.split()[0] for row in shown.splitlines()[-3:]] == ["fetch", "each", "total"]
    started = _json(
        platform,
        "runs", "start", name,
        "--input", '{"order": 42, "items": ["a", "b"]}',
        "--idempotency-key", f"order-42-{name}",
        role="operator",
    )  # fmt: skip
    code, shown = _watch_on_a_terminal(platform, started["id"])
    assert code == 0, shown
    assert "[###] 3/3 steps · fetch ✓ each ✓ total ✓" in shown
    assert f"run {started['id']} SUCCEEDED" in shown
    run = _ok(platform, "runs", "get", started["id"], role="viewer")
    assert "SUCCEEDED" in run.splitlines()[2]
    assert [row.split()[:2] for row in run.splitlines()[-3:]] == [
        ["fetch", "SUCCEEDED"],
        ["each", "SUCCEEDED"],
        ["total", "SUCCEEDED"],
    ]


def test_watching_a_failing_run_exits_1(platform, tmp_path) -> None:
    name = f"cli-doomed-{uuid.uuid4().hex[:6]}"
    definition = tmp_path / "doomed.yaml"
    definition.write_text(DOOMED.format(name=name))
    _ok(platform, "workflows", "apply", "-f", str(definition))
    run_id = _json(platform, "runs", "start", name)["id"]
    watched = _agentry(platform, "runs", "watch", run_id, role="viewer")
    assert watched.returncode == 1, watched.stdout + watched.stderr
    lines = watched.stdout.splitlines()
    assert "2/2 steps: boom FAILED" in lines
    assert lines[-1].startswith(f"run {run_id} FAILED")
    assert "no luck" in lines[-1]


def test_a_dead_letter_is_listed_and_redriven(platform) -> None:
    task_id = _json(
        platform, "tasks", "submit", "fail", "--payload", '{"times": 1, "retryable": false}'
    )["id"]
    _until(platform, task_id, ("FAILED",))
    letters = _json(platform, "dlq", "list", "--type", "fail", "--limit", "500", role="viewer")
    [letter] = [d for d in letters["items"] if d["task"]["id"] == task_id]
    assert letter["id"] in _ok(platform, "dlq", "list", "--type", "fail", "--limit", "500")
    said = _ok(
        platform, "dlq", "redrive", letter["id"], "--payload", '{"times": 0}', role="operator"
    )
    assert said.startswith(f"dead letter {letter['id']} redriven as task ")
    again = said.split()[6]
    assert _until(platform, again, ("SUCCEEDED", "FAILED"))["state"] == "SUCCEEDED"


def test_a_minted_token_is_accepted_by_the_gateway(platform) -> None:
    key = str(dev_secrets().jwt_private_key)
    minted = _ok(platform, "token", "--role", "operator", "--subject", "cli-test", "--key", key)
    token = minted.strip()
    assert len(minted.splitlines()) == 1
    reply = httpx.get(
        f"{platform.stack.gateway_url}/v1/tasks",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    listed = _agentry(platform, "tasks", "list", "--limit", "1", token=token)
    assert listed.returncode == 0, listed.stderr


def test_errors_are_one_line_and_a_non_zero_exit(platform, tmp_path) -> None:
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("steps: []\n")
    no_key = tmp_path / "no-such-key.pem"
    commands = {
        "no token": (("tasks", "list"), None),
        "viewer submits": (("tasks", "submit", "echo", "--payload", "1"), "viewer"),
        "unknown task": (("tasks", "get", str(uuid.uuid4())), "admin"),
        "nameless workflow": (("workflows", "apply", "-f", str(nameless)), "admin"),
        "bad JSON": (("tasks", "submit", "echo", "--payload", "{oops"), "admin"),
        "no key": (("token", "--role", "admin", "--key", str(no_key)), "admin"),
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        running = {
            case: pool.submit(_agentry, platform, *args, role=role)
            for case, (args, role) in commands.items()
        }
        done = {case: future.result() for case, future in running.items()}
    said = {case: _one_line_error(answer) for case, answer in done.items()}
    assert "AGENTRY_TOKEN" in said["no token"]
    assert "403" in said["viewer submits"]
    assert "viewer" in said["viewer submits"]
    assert "404" in said["unknown task"]
    assert "name" in said["nameless workflow"]
    assert "not valid JSON" in said["bad JSON"]
    assert done["bad JSON"].returncode == 2
    assert str(no_key) in said["no key"]


def test_report_prints_a_table_and_json(platform) -> None:
    said = _ok(platform, "tasks", "submit", "echo", "--payload", '{"r": 1}')
    _until(platform, said.split()[1], ("SUCCEEDED",))
    deadline = time.monotonic() + 30
    while True:
        report = _json(platform, "report", "--window", "600", "--group-by", "type", role="viewer")
        echo = [row for row in report["rows"] if row["group"] == "echo"]
        if (echo and echo[0]["succeeded"] >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert echo and echo[0]["succeeded"] >= 1, report
    assert report["group_by"] == "type" and report["window_s"] == 600
    table = _ok(platform, "report", "--window", "600", role="viewer").splitlines()
    assert table[0].split()[:2] == ["GROUP", "TOTAL"]
    assert any(line.split()[0] == "echo" for line in table[1:])
    done = _agentry(platform, "report", "--group-by", "colour")
    assert done.returncode == 2


def test_a_canary_verdict_gates_a_script_by_its_exit_code(platform) -> None:
    type_ = f"canary-{uuid.uuid4().hex[:8]}"
    # The canary fails half its tasks; the baseline none.
    publish_to(platform.stack, cohort("2.0", type_, 60, 0) + cohort("2.1", type_, 60, 30))
    body = {"subject": type_, "baseline": "2.0", "canary": "2.1", "window_s": 600}
    with platform.client("operator") as operator:
        analyze(operator, body)  # waits until the analysis service has read the events

    judged = _agentry(
        platform,
        *("canary", "analyze", "--subject", type_, "--baseline", "2.0", "--canary", "2.1"),
        role="operator",
    )

    assert judged.returncode == 3, judged.stdout + judged.stderr
    assert judged.stdout.startswith(f"FAIL: 2.1 against 2.0 ({type_}, last 900 s)")
    listed = _json(platform, "canary", "list", "--subject", type_, role="viewer")["items"]
    assert [a["verdict"] for a in listed] == ["FAIL", "FAIL"]
    shown = _json(platform, "canary", "get", listed[0]["id"], role="viewer")
    assert shown["error_rate"] == listed[0]["error_rate"]
    refused = _agentry(platform, "canary", "analyze", "--canary", "2.1", "--baseline", "2.1")
    assert refused.returncode == 1 and "400" in _one_line_error(refused)
