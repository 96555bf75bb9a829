"""The real services as processes, on this session's database and a Redis prefix of their
own, with authentication on: tests talk to the gateway as the website does."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dev.embedded import free_port
from dev.stack import Ports, Stack
from tests.conftest import create_database, drop_database
from tests.secure import AUDIENCE, dev_secrets, person_token


@dataclass(frozen=True)
class Platform:
    stack: Stack
    log_dir: Path

    @property
    def url(self) -> str:
        return self.stack.gateway_url

    def token(self, role: str, ttl_s: float = 600) -> str:
        return person_token(role, ttl_s)

    def client(self, role: str | None = "admin") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(role)}"} if role else {}
        return httpx.Client(base_url=self.stack.gateway_url, headers=headers, timeout=10.0)


@pytest.fixture(scope="package")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """The end-to-end tests' own database: the services they start run reconcilers that
    would otherwise pick up the integration tests' tasks."""
    url = create_database(server_urls[0])
    yield url
    drop_database(server_urls[0], url)


@contextmanager
def running_platform(
    database_url: str, redis_url: str, log_dir: Path, **env: str
) -> Iterator[Platform]:
    """The four services on free ports and a Redis prefix of their own (`env` added to
    theirs), stopped cleanly at the end."""
    stack = Stack(
        database_url,
        redis_url,
        Ports(free_port(), free_port(), free_port(), free_port()),
        dev_secrets(),
        env={
            "AGENTRY_REDIS_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}",
            "AGENTRY_JWT_AUDIENCE": AUDIENCE,
            "AGENTRY_LOG_FORMAT": "json",
            "AGENTRY_MIGRATE_ON_START": "false",
            # Webhook subscriptions deliver to receivers the tests run on this machine,
            # retrying quickly.
            "AGENTRY_HTTP_ALLOW_PRIVATE_NETWORKS": "true",
            "AGENTRY_WEBHOOK_INITIAL_BACKOFF_S": "0.05",
            "AGENTRY_WEBHOOK_MAX_BACKOFF_S": "0.2",
            **env,
        },
        log_dir=log_dir,
    )
    try:
        stack.start()
        stack.wait_ready()
        yield Platform(stack, log_dir)
    finally:
        codes = stack.stop()
    assert codes == {name: 0 for name in codes}, f"unclean exits {codes}; logs in {log_dir}"


@pytest.fixture(scope="package")
def platform(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    with running_platform(database_url, redis_url, tmp_path_factory.mktemp("logs")) as running:
        yield running
