"""Tests speak to the services as the website's gateway does: over mTLS with the gateway's
certificate, relaying a person's token. The dev secrets (CA, certificates, keys) are made
once per test session, in a directory of its own."""

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import grpc

from dev import secrets
from dev.secrets import DevSecrets
from libs.common.call_guard import USER_TOKEN_HEADER
from libs.common.channels import open_channel
from libs.common.identity import AgentIdentity
from libs.common.rbac import Policy
from libs.common.tokens import mint

AUDIENCE = "agentry-gateway"


@functools.cache
def dev_secrets() -> DevSecrets:
    root = Path(tempfile.mkdtemp(prefix="agentry-test-secrets-"))
    atexit.register(shutil.rmtree, root, True)
    return secrets.ensure(root)


def person_token(role: str = "admin", ttl_s: float = 600) -> str:
    return mint(dev_secrets().jwt_private_key.read_bytes(), f"test-{role}", role, AUDIENCE, ttl_s)


def agent_identity(name: str = "gateway") -> AgentIdentity:
    role = Policy.load().role_of(name)
    assert role is not None, f"{name} has no role in the policy"
    return AgentIdentity(dev_secrets().tls_dir(name), role)


def channel_to(
    port: int, callee: str = "task-agent", role: str | None = "admin", identity: str = "gateway"
) -> grpc.aio.Channel:
    """A channel to the service on `port` as agent `identity`, acting for a person of
    `role` (None: for no one)."""
    user_token = person_token(role) if role else None
    return open_channel(f"127.0.0.1:{port}", callee, agent_identity(identity), user_token)


def security_settings() -> dict[str, object]:
    """What every in-process service needs: its TLS directory is added per service."""
    return {
        "jwt_public_key_file": dev_secrets().jwt_public_key,
        "jwt_audience": AUDIENCE,
        "data_keys_file": dev_secrets().data_keys,
    }


def sync_channel_to(port: int, callee: str = "task-agent") -> grpc.Channel:
    """A blocking channel to the service on `port`, as the gateway; calls need
    `call_metadata(callee)`."""
    return grpc.secure_channel(
        f"127.0.0.1:{port}",
        agent_identity().channel_credentials(),
        options=[("grpc.ssl_target_name_override", callee)],
    )


def call_metadata(callee: str = "task-agent", role: str = "admin") -> list[tuple[str, str]]:
    """The agent token and relayed person's token a blocking call carries."""
    return [
        ("authorization", f"Bearer {agent_identity().token_for(callee)}"),
        (USER_TOKEN_HEADER, person_token(role)),
    ]
