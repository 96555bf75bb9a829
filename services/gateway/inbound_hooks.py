"""Inbound webhooks: the hooks the gateway is configured to receive, and the checks a delivery
passes before it may act. It must be signed with the hook's secret, in the scheme of the task
agent's outbound `webhook.deliver` (its `sign` and `verify`, reused here); its timestamp must
be within the tolerance of our clock; it must not have been accepted before; its body must be
JSON. Replays are remembered in Redis, so every gateway replica refuses them."""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Self

import redis.asyncio as redis
from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.common.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated

# The signing scheme lives with the sender; one copy of it, so both ends always agree.
from libs.common.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify


class InboundHook(BaseModel):
    """One entry of the `inbound_hooks` setting: the name of its secret (in `hook_secrets`)
    and what a delivery does: start `workflow` with the body as input, or publish the body
    as an event of type `event`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str = Field(min_length=1)
    workflow: str | None = Field(default=None, min_length=1)
    event: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        if (self.workflow is None) == (self.event is None):
            raise ValueError('a hook has either "workflow" or "event", not both, not neither')
        return self


@dataclass(frozen=True)
class Hook:
    name: str
    secret: str
    workflow: str | None
    event: str | None


def configured_hooks(
    hooks: Mapping[str, InboundHook], secrets: Mapping[str, str]
) -> dict[str, Hook]:
    """The hooks by name, each with its secret; raises ValueError naming every hook whose
    secret is missing or empty (a hook nobody can sign for would refuse every delivery)."""
    missing = sorted(
        f"{name} (secret {h.secret!r})" for name, h in hooks.items() if not secrets.get(h.secret)
    )
    if missing:
        raise ValueError(f"no secret in hook_secrets for hooks: {', '.join(missing)}")
    return {name: Hook(name, secrets[h.secret], h.workflow, h.event) for name, h in hooks.items()}


def find(hooks: Mapping[str, Hook], name: str) -> Hook:
    hook = hooks.get(name)
    if hook is None:
        raise NotFound(f"no hook {name!r}")
    return hook


@dataclass(frozen=True)
class Signed:
    """A delivery whose signature checked out. `signature` is the one the hook's secret
    makes for it, whatever else the header held: replays are recognised by it, so adding
    values to the header, or spaces, does not make a replay look new."""

    timestamp: int
    signature: str


def authenticate(
    hook: Hook,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    tolerance_s: float,
    now: float,
) -> Signed:
    """Raises Unauthenticated when a header is missing, the signature is not the hook's,
    or (a genuine signature but) the timestamp is more than `tolerance_s` from `now`."""
    if not signature:
        raise Unauthenticated(f"the {SIGNATURE_HEADER} header is required")
    if not timestamp:
        raise Unauthenticated(f"the {TIMESTAMP_HEADER} header is required")
    try:
        ts = int(timestamp)
    except ValueError:
        raise Unauthenticated(f"{TIMESTAMP_HEADER} is not a Unix time in seconds") from None
    # The signature first, at any age: "stale" then only ever describes a genuine delivery.
    if not verify(hook.secret, ts, body, signature, tolerance_s=math.inf, now=now):
        raise Unauthenticated("the signature does not match the body and timestamp")
    if abs(now - ts) > tolerance_s:
        raise Unauthenticated(
            f"stale: the timestamp is {now - ts:+.0f}s from the gateway's clock, "
            f"more than the {tolerance_s:g}s allowed"
        )
    return Signed(ts, sign(hook.secret, ts, body))


def parse_json(body: bytes) -> Any:
    """The body as JSON (NaN and Infinity are not JSON); InvalidArgument otherwise."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(body, parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None


class SeenStore(Protocol):
    async def first_time(self, key: str, ttl_s: int) -> bool:
        """Marks `key` seen for `ttl_s` seconds; True if it was not seen already."""

    async def forget(self, key: str) -> None: ...


class RedisSeen:
    """A SeenStore in Redis (SET NX with an expiry): one for every gateway replica."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self._prefix}:hook-seen:{key}"

    async def first_time(self, key: str, ttl_s: int) -> bool:
        return bool(await self._redis.set(self._key(key), b"1", nx=True, ex=ttl_s))

    async def forget(self, key: str) -> None:
        await self._redis.delete(self._key(key))


class ReplayGuard:
    """Accepts each signed delivery once. A delivery is remembered for as long as its
    timestamp stays within the tolerance (at most twice the tolerance, for a timestamp
    ahead of our clock): after that it is refused as stale anyway."""

    def __init__(self, store: SeenStore, tolerance_s: float) -> None:
        self._store = store
        self._tolerance_s = tolerance_s

    @staticmethod
    def key(hook: Hook, signed: Signed) -> str:
        # The signature covers the timestamp and the body; the name, as hooks may share a secret.
        return f"{hook.name}:{signed.signature}"

    def ttl_s(self, signed: Signed, now: float) -> int:
        return max(1, math.ceil(signed.timestamp + self._tolerance_s - now) + 1)

    async def claim(self, hook: Hook, signed: Signed, now: float) -> None:
        """Raises AlreadyExists when this delivery was accepted already."""
        if not await self._store.first_time(self.key(hook, signed), self.ttl_s(signed, now)):
            raise AlreadyExists("this delivery was accepted already (a replay)")

    async def release(self, hook: Hook, signed: Signed) -> None:
        """Forgets a delivery that could not be carried out, so that the sender's retry of
        the same request is accepted."""
        await self._store.forget(self.key(hook, signed))
