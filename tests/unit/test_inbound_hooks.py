"""Inbound hook deliveries as the gateway checks them: signed with the hook's secret in the
outbound webhooks' scheme, fresh, JSON, and accepted once."""

import pytest
from pydantic import ValidationError

from libs.common.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from libs.common.webhooks import sign
from services.gateway.inbound_hooks import (
    Hook,
    InboundHook,
    ReplayGuard,
    Signed,
    authenticate,
    configured_hooks,
    find,
    parse_json,
)

NOW = 1_700_000_000
TOLERANCE = 300.0
HOOK = Hook("stripe", "whsec_test", workflow="payments", event=None)
BODY = b'{"id":"evt_1","amount":42}'


def _authenticate(
    timestamp: str | None = str(NOW),
    signature: str | None = None,
    body: bytes = BODY,
    now: float = NOW,
) -> Signed:
    if signature is None:
        signature = sign(HOOK.secret, int(timestamp or 0), body)
    return authenticate(HOOK, timestamp, signature, body, TOLERANCE, now)


class MemorySeen:
    """A SeenStore in a dict, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = float(NOW)
        self._until: dict[str, float] = {}

    async def first_time(self, key: str, ttl_s: int) -> bool:
        if self._until.get(key, 0) > self.now:
            return False
        self._until[key] = self.now + ttl_s
        return True

    async def forget(self, key: str) -> None:
        self._until.pop(key, None)


def test_a_delivery_signed_with_the_hooks_secret_is_authentic() -> None:
    signed = _authenticate()
    assert signed == Signed(NOW, sign(HOOK.secret, NOW, BODY))
    assert _authenticate(now=NOW + TOLERANCE).timestamp == NOW


@pytest.mark.parametrize(
    ("timestamp", "signature", "body"),
    [
        (str(NOW), sign("another secret", NOW, BODY), BODY),
        (str(NOW), sign(HOOK.secret, NOW, BODY), b'{"id":"evt_1","amount":4200}'),
        (str(NOW + 1), sign(HOOK.secret, NOW, BODY), BODY),
        (str(NOW), sign(HOOK.secret, NOW, BODY)[:-1] + "0", BODY),
        (str(NOW), "", BODY),
        (None, sign(HOOK.secret, NOW, BODY), BODY),
        ("yesterday", sign(HOOK.secret, NOW, BODY), BODY),
    ],
    ids=[
        "wrong secret",
        "other body",
        "other timestamp",
        "altered",
        "no signature",
        "no timestamp",
        "timestamp not a number",
    ],
)
def test_a_bad_or_missing_signature_is_unauthenticated(
    timestamp: str | None, signature: str, body: bytes
) -> None:
    with pytest.raises(Unauthenticated) as refused:
        authenticate(HOOK, timestamp, signature, body, TOLERANCE, NOW)
    assert "stale" not in str(refused.value)


@pytest.mark.parametrize("age", [TOLERANCE + 1, -TOLERANCE - 1, 86_400])
def test_a_genuine_delivery_outside_the_tolerance_is_stale(age: float) -> None:
    with pytest.raises(Unauthenticated, match="stale"):
        _authenticate(str(NOW), now=NOW + age)


def test_the_signature_kept_is_the_hooks_own_whatever_else_the_header_holds() -> None:
    genuine = sign(HOOK.secret, NOW, BODY)
    padded = _authenticate(signature=f"v1=deadbeef, {genuine} ")
    assert padded.signature == genuine
    assert _authenticate(timestamp=f" {NOW}").signature == genuine


def test_only_json_bodies_are_accepted() -> None:
    assert parse_json(BODY) == {"id": "evt_1", "amount": 42}
    assert parse_json(b"[1, null]") == [1, None]
    for bad in (b"", b"id=evt_1", b'{"a": NaN}', b"\xff\xfe"):
        with pytest.raises(InvalidArgument):
            parse_json(bad)


async def test_a_delivery_is_accepted_once_while_it_is_fresh() -> None:
    store = MemorySeen()
    replays = ReplayGuard(store, TOLERANCE)
    signed = _authenticate()
    await replays.claim(HOOK, signed, NOW)
    store.now = NOW + TOLERANCE
    with pytest.raises(AlreadyExists):
        await replays.claim(HOOK, signed, store.now)
    # Another delivery, or the same one to another hook, is new.
    await replays.claim(HOOK, _authenticate(timestamp=str(NOW + 1), now=NOW + 1), store.now)
    other_hook = Hook("github", HOOK.secret, workflow=None, event="hook.github")
    await replays.claim(other_hook, signed, store.now)


async def test_a_delivery_ahead_of_our_clock_is_remembered_until_it_turns_stale() -> None:
    replays = ReplayGuard(MemorySeen(), TOLERANCE)
    ahead = Signed(NOW + 300, "v1=abc")
    # Fresh until NOW + 600, so remembered that long (and a second more for clock edges).
    assert replays.ttl_s(ahead, NOW) == 601
    assert replays.ttl_s(Signed(NOW - 300, "v1=abc"), NOW) == 1


async def test_a_released_delivery_is_accepted_again() -> None:
    replays = ReplayGuard(MemorySeen(), TOLERANCE)
    signed = _authenticate()
    await replays.claim(HOOK, signed, NOW)
    await replays.release(HOOK, signed)
    await replays.claim(HOOK, signed, NOW)


def test_hooks_are_configured_with_their_secrets() -> None:
    hooks = configured_hooks(
        {
            "stripe": InboundHook(secret="stripe-secret", workflow="payments"),
            "github": InboundHook(secret="gh", event="hook.github"),
        },
        {"stripe-secret": "whsec_1", "gh": "whsec_2"},
    )
    assert find(hooks, "stripe") == Hook("stripe", "whsec_1", "payments", None)
    assert find(hooks, "github") == Hook("github", "whsec_2", None, "hook.github")
    with pytest.raises(NotFound):
        find(hooks, "gitlab")


def test_a_hook_without_its_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match=r"stripe \(secret 'stripe-secret'\)"):
        configured_hooks({"stripe": InboundHook(secret="stripe-secret", workflow="p")}, {})


@pytest.mark.parametrize(
    "entry",
    [
        {"secret": "s"},
        {"secret": "s", "workflow": "w", "event": "e"},
        {"secret": "", "workflow": "w"},
        {"secret": "s", "workflow": "w", "url": "x"},
    ],
    ids=["no action", "two actions", "empty secret", "unknown field"],
)
def test_a_hook_does_one_thing_and_names_its_secret(entry: dict) -> None:
    with pytest.raises(ValidationError):
        InboundHook.model_validate(entry)
