"""Webhook subscriptions in PostgreSQL (`orchestrator.webhook_subscriptions`). Each secret
is sealed with the data keys, bound to its row: it is opened only to seal it again for a
delivery, and never answered."""

import uuid
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common.crypto import Keyring, Undecryptable
from services.orchestrator.subscriptions import NewSubscription, Signing, Subscription

log = structlog.get_logger(__name__)

_COLUMNS = "id, url, event_types, created_at, created_by"


def _aad(subscription_id: uuid.UUID) -> bytes:
    return b"webhook_subscriptions.secret:" + subscription_id.bytes


def _subscription(row: Any) -> Subscription:
    return Subscription(
        id=row.id,
        url=row.url,
        event_types=tuple(row.event_types),
        created_at=row.created_at,
        created_by=row.created_by,
    )


class SubscriptionStore:
    def __init__(self, engine: AsyncEngine, keyring: Keyring) -> None:
        self._engine = engine
        self._keyring = keyring

    async def add(self, new: NewSubscription, created_by: str, limit: int) -> Subscription | None:
        """The new subscription, or None when there are `limit` already (counted under a
        lock, so concurrent creations cannot pass it together)."""
        subscription_id = uuid.uuid4()
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtext('webhook_subscriptions'))")
            )
            count = await conn.scalar(
                sa.text("SELECT count(*) FROM orchestrator.webhook_subscriptions")
            )
            if count is not None and count >= limit:
                return None
            row = (
                await conn.execute(
                    sa.text(
                        "INSERT INTO orchestrator.webhook_subscriptions"
                        " (id, url, event_types, secret, created_at, created_by)"
                        " VALUES (:id, :url, :event_types, :secret, now(), :created_by)"
                        f" RETURNING {_COLUMNS}"
                    ),
                    {
                        "id": subscription_id,
                        "url": new.url,
                        "event_types": list(new.event_types),
                        "secret": self._keyring.encrypt(new.secret.encode(), _aad(subscription_id)),
                        "created_by": created_by,
                    },
                )
            ).one()
        return _subscription(row)

    async def all(self) -> list[Subscription]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    f"SELECT {_COLUMNS} FROM orchestrator.webhook_subscriptions"
                    " ORDER BY created_at, id"
                )
            )
            return [_subscription(row) for row in rows]

    async def signing(self) -> list[Signing]:
        """Every subscription with its secret opened."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    f"SELECT {_COLUMNS}, secret FROM orchestrator.webhook_subscriptions"
                    " ORDER BY created_at, id"
                )
            )
            found = []
            for row in rows:
                try:
                    secret = self._keyring.decrypt(bytes(row.secret), _aad(row.id)).decode()
                except Undecryptable as exc:
                    # One unreadable secret (its key removed too early) stops only its own
                    # deliveries.
                    log.error(
                        "a webhook subscription's secret does not open",
                        id=str(row.id),
                        error=str(exc),
                    )
                    continue
                found.append(Signing(_subscription(row), secret))
            return found

    async def delete(self, subscription_id: uuid.UUID) -> bool:
        async with self._engine.begin() as conn:
            deleted = await conn.execute(
                sa.text("DELETE FROM orchestrator.webhook_subscriptions WHERE id = :id"),
                {"id": subscription_id},
            )
            return bool(deleted.rowcount)
