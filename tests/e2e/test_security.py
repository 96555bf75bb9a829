"""Security against the real processes: every refused caller is refused with the right
status and leaves an audit row, the audit chain shows tampering, and what is stored is
ciphertext."""

import secrets
import subprocess
import sys
import uuid

import grpc
import psycopg
import pytest

from agentry.agents.v1 import agents_pb2, agents_pb2_grpc
from agentry.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from dev.secrets import issue, make_ca
from dev.stack import ROOT
from libs.common.call_guard import USER_TOKEN_HEADER
from libs.common.crypto import MAGIC
from libs.common.identity import AgentIdentity
from libs.common.tokens import mint_agent_token
from tests.secure import agent_identity, dev_secrets, person_token

PROBLEM = "application/problem+json"


def _trace() -> tuple[str, str]:
    """A fresh trace id and the traceparent header that carries it."""
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def _audit_rows(database_url: str, trace_id: str) -> list[dict]:
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(
            "SELECT principal, role, action, resource, outcome, via FROM audit.entries"
            " WHERE trace_id = %s ORDER BY id",
            [trace_id],
        )
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _channel(port: int, callee: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", callee)]
    )


def _get_task(port: int, credentials: grpc.ChannelCredentials, metadata) -> grpc.StatusCode:
    with _channel(port, "task-agent", credentials) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        try:
            stub.GetTask(
                tasks_pb2.GetTaskRequest(task_id=str(uuid.uuid4())), metadata=metadata, timeout=5
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> AgentIdentity:
    """A `gateway` certificate from a CA of its own."""
    root = tmp_path_factory.mktemp("other-ca")
    make_ca(root / "ca", "Someone else's CA")
    issue(root / "ca", "gateway", root / "gateway")
    return AgentIdentity(root / "gateway", "gateway")


def test_a_client_without_our_certificate_cannot_connect(platform, stranger) -> None:
    port = platform.stack.ports.task_agent
    ca = (dev_secrets().tls_dir("gateway") / "ca.crt").read_bytes()
    no_certificate = grpc.ssl_channel_credentials(root_certificates=ca)
    # The TLS handshake refuses them: no call reaches a service (so no audit row either).
    assert _get_task(port, no_certificate, []) == grpc.StatusCode.UNAVAILABLE
    foreign = grpc.ssl_channel_credentials(ca, stranger.material().key, stranger.material().cert)
    assert _get_task(port, foreign, []) == grpc.StatusCode.UNAVAILABLE
    plaintext = grpc.insecure_channel(f"127.0.0.1:{port}")
    with pytest.raises(grpc.RpcError) as refused:
        tasks_pb2_grpc.TaskServiceStub(plaintext).GetTask(
            tasks_pb2.GetTaskRequest(task_id=str(uuid.uuid4())), timeout=5
        )
    plaintext.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("expired", "agent token expired"),
        ("forged", "invalid agent token"),
        ("someone else's name", "names 'orchestrator' but the certificate is 'gateway'"),
        ("meant for another service", "not meant for task-agent"),
        ("none", "no agent token"),
    ],
)
def test_bad_agent_tokens_are_unauthenticated_and_audited(
    platform, stranger, database_url, case, detail
) -> None:
    gateway = agent_identity("gateway")
    key = gateway.material().signing_key
    token = {
        "expired": lambda: mint_agent_token(key, "gateway", "gateway", "task-agent", -60),
        "forged": lambda: mint_agent_token(
            stranger.material().signing_key, "gateway", "gateway", "task-agent", 300
        ),
        "someone else's name": lambda: mint_agent_token(
            key, "orchestrator", "orchestrator", "task-agent", 300
        ),
        # Replayed: a token the gateway made for the orchestrator.
        "meant for another service": lambda: gateway.token_for("orchestrator"),
        "none": lambda: "",
    }[case]()
    trace_id, traceparent = _trace()
    metadata = [("traceparent", traceparent)]
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    with (
        _channel(
            platform.stack.ports.task_agent, "task-agent", gateway.channel_credentials()
        ) as ch,
        pytest.raises(grpc.RpcError) as refused,
    ):
        tasks_pb2_grpc.TaskServiceStub(ch).SubmitTask(
            tasks_pb2.SubmitTaskRequest(task=tasks_pb2.TaskSpec(type="echo", payload=b"1")),
            metadata=metadata,
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert detail in refused.value.details()
    [row] = _audit_rows(database_url, trace_id)
    assert row["outcome"] == "UNAUTHENTICATED"
    assert row["action"] == "agentry.tasks.v1.TaskService/SubmitTask"


def test_a_token_replayed_against_another_service_is_refused(platform, database_url) -> None:
    gateway = agent_identity("gateway")
    trace_id, traceparent = _trace()
    replayed = gateway.token_for("task-agent")
    port = platform.stack.ports.orchestrator
    with (
        _channel(port, "orchestrator", gateway.channel_credentials()) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        agents_pb2_grpc.AgentRegistryServiceStub(channel).ListAgents(
            agents_pb2.ListAgentsRequest(),
            metadata=[("authorization", f"Bearer {replayed}"), ("traceparent", traceparent)],
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [row] = _audit_rows(database_url, trace_id)
    assert row["outcome"] == "UNAUTHENTICATED"
    assert row["action"] == "agentry.agents.v1.AgentRegistryService/ListAgents"


@pytest.mark.parametrize(
    ("identity", "person", "principal"),
    [
        ("gateway", "viewer", "test-viewer"),  # a person whose role may not submit
        ("task-agent", None, "task-agent"),  # an agent whose role may not submit
        ("orchestrator", "admin", "orchestrator"),  # an agent that may not relay people
    ],
)
def test_a_valid_caller_without_the_role_is_denied_and_audited(
    platform, database_url, identity, person, principal
) -> None:
    caller = agent_identity(identity)
    trace_id, traceparent = _trace()
    metadata = [
        ("authorization", f"Bearer {caller.token_for('task-agent')}"),
        ("traceparent", traceparent),
    ]
    if person:
        metadata.append((USER_TOKEN_HEADER, person_token(person)))
    with platform.client("admin") as admin:
        before = admin.get("/v1/tasks", params={"page_size": 500}).json()["items"]
    with (
        _channel(platform.stack.ports.task_agent, "task-agent", caller.channel_credentials()) as ch,
        pytest.raises(grpc.RpcError) as refused,
    ):
        tasks_pb2_grpc.TaskServiceStub(ch).SubmitTask(
            tasks_pb2.SubmitTaskRequest(task=tasks_pb2.TaskSpec(type="echo", payload=b"1")),
            metadata=metadata,
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with platform.client("admin") as admin:
        assert admin.get("/v1/tasks", params={"page_size": 500}).json()["items"] == before
    [row] = _audit_rows(database_url, trace_id)
    assert row["outcome"] == "PERMISSION_DENIED"
    assert row["principal"] in (principal, caller.name)


def test_refusals_at_the_gateway_are_audited(platform, database_url) -> None:
    trace_id, traceparent = _trace()
    with platform.client("viewer") as viewer:
        refused = viewer.post(
            "/v1/tasks", json={"type": "echo", "payload": 1}, headers={"traceparent": traceparent}
        )
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith(PROBLEM)
    with platform.client(None) as anonymous:
        other_trace, other_parent = _trace()
        assert anonymous.get("/v1/tasks", headers={"traceparent": other_parent}).status_code == 401
    [denied] = _audit_rows(database_url, trace_id)
    assert denied == {
        "principal": "test-viewer",
        "role": "viewer",
        "action": "POST /v1/tasks",
        "resource": "/v1/tasks",
        "outcome": "PERMISSION_DENIED",
        "via": "gateway",
    }
    [unknown] = _audit_rows(database_url, other_trace)
    assert unknown["outcome"] == "UNAUTHENTICATED"


def test_a_change_is_audited_with_the_person_behind_it(platform, database_url) -> None:
    trace_id, traceparent = _trace()
    with platform.client("operator") as operator:
        task = operator.post(
            "/v1/tasks", json={"type": "echo", "payload": 1}, headers={"traceparent": traceparent}
        ).json()
    [row] = _audit_rows(database_url, trace_id)
    assert row == {
        "principal": "test-operator",
        "role": "operator",
        "action": "agentry.tasks.v1.TaskService/SubmitTask",
        "resource": f"task={task['id']}",
        "outcome": "OK",
        "via": "gateway",
    }


def test_payloads_and_results_are_ciphertext_in_postgres(platform, database_url) -> None:
    marker = f"secret-{uuid.uuid4().hex}"
    with platform.client("operator") as operator:
        task = operator.post("/v1/tasks", json={"type": "echo", "payload": {"card": marker}})
        task_id = task.json()["id"]
        for _ in range(200):
            done = operator.get(f"/v1/tasks/{task_id}").json()
            if done["state"] == "SUCCEEDED":
                break
        assert done["result"] == {"card": marker}
    with psycopg.connect(database_url) as conn:
        payload, result = conn.execute(
            "SELECT payload, result FROM tasks.tasks WHERE id = %s", [task_id]
        ).fetchone()
    for stored in (bytes(payload), bytes(result)):
        assert stored.startswith(MAGIC)
        assert marker.encode() not in stored


def _agentry(*args: str, token: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env={
            "PYTHONPATH": f"{ROOT}:{ROOT / 'libs/protos'}",
            "AGENTRY_URL": url,
            "AGENTRY_TOKEN": token,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_tampered_audit_row_is_found_and_named(platform, database_url) -> None:
    url = platform.stack.gateway_url
    token = platform.token("admin")
    intact = _agentry("audit", "verify", token=token, url=url)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    with platform.client("admin") as admin:
        assert admin.get("/v1/audit/verify").json()["ok"] is True
        rows = admin.get("/v1/audit", params={"limit": 1000}).json()["items"]
        assert len(rows) >= 2
        victim = rows[len(rows) // 2]
        with psycopg.connect(database_url, autocommit=True) as conn:
            # What an attacker with the database's superuser could do, bypassing the
            # append-only trigger.
            conn.execute("SET session_replication_role = replica")
            conn.execute(
                "UPDATE audit.entries SET outcome = 'TAMPERED' WHERE id = %s", [victim["id"]]
            )
            try:
                verdict = admin.get("/v1/audit/verify").json()
                cli = _agentry("audit", "verify", token=token, url=url)
            finally:
                conn.execute(
                    "UPDATE audit.entries SET outcome = %s WHERE id = %s",
                    [victim["outcome"], victim["id"]],
                )
        assert verdict["ok"] is False
        assert [p["id"] for p in verdict["problems"]] == [victim["id"]]
        assert cli.returncode == 1
        assert f"row {victim['id']}" in cli.stdout
        assert admin.get("/v1/audit/verify").json()["ok"] is True
    with platform.client("operator") as operator:
        assert operator.get("/v1/audit").status_code == 403


def test_cli_needs_a_token(platform) -> None:
    refused = _agentry("audit", "verify", token="", url=platform.stack.gateway_url)
    assert refused.returncode != 0
    assert "AGENTRY_TOKEN" in refused.stderr


def _may(role: str, method: str, path: str) -> bool:
    """People's roles as the issues define them: viewers read, operators also submit,
    cancel, redrive, start and retry runs, admins do everything (purges, workflow
    definitions, the audit log and webhook subscriptions included)."""
    if role == "admin":
        return True
    if path.startswith(("/v1/audit", "/v1/webhook-subscriptions")):
        return False
    if path.endswith("/purge") or method == "put":
        return False
    return method == "get" or role == "operator"


def test_every_route_admits_exactly_the_roles_that_may_use_it(platform) -> None:
    with platform.client(None) as anonymous:
        spec = anonymous.get("/openapi.json").json()
    routes = [
        (method, path)
        for path, operations in spec["paths"].items()
        # Hooks answer to their signature, not to a role (tests/e2e/test_inbound_hooks.py).
        if path.startswith("/v1/") and not path.startswith("/v1/hooks/")
        for method in operations
    ]
    assert len(routes) >= 12
    wrong = []
    for role in ("viewer", "operator", "admin"):
        with platform.client(role) as client:
            for method, path in routes:
                url = path
                for name in (
                    "task_id",
                    "dead_letter_id",
                    "run_id",
                    "subscription_id",
                    "analysis_id",
                ):
                    url = url.replace(f"{{{name}}}", str(uuid.uuid4()))
                url = url.replace("{name}", "no-such-workflow")
                # A body no route accepts: what is let through fails validation, changes
                # nothing.
                reply = client.request(method.upper(), url, json=[])
                if (reply.status_code == 403) == _may(role, method, path):
                    wrong.append(f"{role} {method.upper()} {path}: {reply.status_code}")
    assert wrong == []
