"""Outbound webhooks: every event read from the durable stream that a subscription wants
becomes one `webhook.deliver` task per subscription. The task agents sign, send, retry
with backoff and dead-letter it; its idempotency key (`hook:<subscription>:<event>`) keeps
an event read twice (consumption is at least once) from being delivered twice.

The secret never travels in clear: it is sealed with the data keys (which the task agents
hold too) for that one delivery (`libs.common.webhooks.sealed_secret_aad`), so whoever can
read tasks sees ciphertext that signs nothing else."""

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from agentry.events.v1 import events_pb2
from agentry.tasks.v1 import tasks_pb2
from libs.common.crypto import Keyring
from libs.common.errors import InvalidArgument
from libs.common.events import event_data
from libs.common.webhooks import canonical_json, sealed_secret_aad
from services.orchestrator.subscriptions import Matcher, Signing

log = structlog.get_logger(__name__)

DELIVER_TYPE = "webhook.deliver"
SUBSCRIPTION_LABEL = "webhook_subscription"


@dataclass(frozen=True)
class DeliveryRetry:
    max_attempts: int
    initial_backoff_s: float
    max_backoff_s: float


class SigningSource(Protocol):
    async def signing(self) -> list[Signing]: ...


class TaskSubmitter(Protocol):
    async def submit(self, specs: Sequence[tasks_pb2.TaskSpec]) -> Any: ...


def envelope(event: events_pb2.Event, data: Any) -> dict[str, Any]:
    """What a receiver gets: the event as the gateway's live feed shows it."""
    return {
        "id": event.id,
        "type": event.type,
        "subject": event.subject,
        "time": event.time.ToJsonString(),
        "data": data,
        "source": event.source,
    }


def is_delivery(event_type: str, data: Any) -> bool:
    """Events of `webhook.deliver` tasks are not delivered: a subscription to `task.*` would
    otherwise deliver its own deliveries, forever. Every task event names its task's type."""
    return (
        event_type.startswith("task.")
        and isinstance(data, dict)
        and data.get("type") == DELIVER_TYPE
    )


class WebhookDeliveries:
    """The subscriptions are read again every `refresh_s`, and at once after this
    orchestrator changed them (`changed`)."""

    def __init__(
        self,
        subscriptions: SigningSource,
        tasks: TaskSubmitter,
        keyring: Keyring,
        retry: DeliveryRetry,
        refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._subscriptions = subscriptions
        self._tasks = tasks
        self._keyring = keyring
        self._retry = retry
        self._refresh_s = refresh_s
        self._clock = clock
        self._matcher: Matcher[Signing] = Matcher([])
        self._loaded_at: float | None = None

    def changed(self) -> None:
        self._loaded_at = None

    async def _current(self) -> Matcher[Signing]:
        now = self._clock()
        if self._loaded_at is None or now - self._loaded_at >= self._refresh_s:
            self._matcher = Matcher(await self._subscriptions.signing())
            self._loaded_at = now
        return self._matcher

    async def deliver(self, events: Sequence[events_pb2.Event]) -> int:
        """Submits the deliveries `events` call for; answers how many."""
        if not events:
            return 0
        matcher = await self._current()
        if not matcher:
            return 0
        specs = []
        for event in events:
            wanting = matcher.wanting(event.type)
            if not wanting:
                continue
            data = event_data(event)
            if is_delivery(event.type, data):
                continue
            body = envelope(event, data)
            specs += [self.spec(target, event, body) for target in wanting]
        await self._submit(specs)
        return len(specs)

    def spec(self, target: Signing, event: events_pb2.Event, body: Any) -> tasks_pb2.TaskSpec:
        subscription = target.subscription
        sealed = self._keyring.encrypt(
            target.secret.encode(),
            sealed_secret_aad(str(subscription.id), subscription.url, canonical_json(body)),
        )
        payload: dict[str, Any] = {
            "url": subscription.url,
            "body": body,
            "subscription": str(subscription.id),
            "secret_sealed": base64.b64encode(sealed).decode(),
        }
        if event.type.isascii() and event.type.isprintable():
            payload["event"] = event.type
        return tasks_pb2.TaskSpec(
            type=DELIVER_TYPE,
            payload=json.dumps(payload, separators=(",", ":")).encode(),
            idempotency_key=f"hook:{subscription.id}:{event.id}",
            labels={SUBSCRIPTION_LABEL: str(subscription.id), "event": event.id},
            retry=tasks_pb2.RetryPolicy(
                max_attempts=self._retry.max_attempts,
                initial_backoff_s=self._retry.initial_backoff_s,
                max_backoff_s=self._retry.max_backoff_s,
            ),
        )

    async def _submit(self, specs: list[tasks_pb2.TaskSpec]) -> None:
        """All of them; when TaskService refuses the batch, one by one, so that one it
        will never take (an event too large for a payload) does not hold back the rest,
        nor the stream. Anything else (TaskService unreachable) raises: the events stay
        unacknowledged and are read again."""
        if not specs:
            return
        try:
            await self._tasks.submit(specs)
            return
        except InvalidArgument:
            pass
        for spec in specs:
            try:
                await self._tasks.submit([spec])
            except InvalidArgument as exc:
                log.warning(
                    "a webhook delivery was refused; it is not made",
                    subscription=spec.labels[SUBSCRIPTION_LABEL],
                    event_id=spec.labels["event"],
                    error=str(exc),
                )
