"""Webhook signatures, one scheme both ways: the task agents' `webhook.deliver` signs what
it sends, the gateway verifies what it receives (`POST /v1/hooks/{name}`), and receivers
of our webhooks can use `verify` as it is. Also what binds a subscription's secret, sealed
by the orchestrator for the task agents, to the one delivery it is sealed for."""

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

SIGNATURE_HEADER = "Agentry-Webhook-Signature"
TIMESTAMP_HEADER = "Agentry-Webhook-Timestamp"
ID_HEADER = "Agentry-Webhook-Id"
EVENT_HEADER = "Agentry-Webhook-Event"


def canonical_json(value: Any) -> bytes:
    """A webhook body as sent: compact JSON with sorted keys, UTF-8, so the same value always
    gives the same bytes. Raises ValueError for what JSON cannot carry (NaN, infinity)."""
    return json.dumps(
        value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    ).encode()


def sealed_secret_aad(subscription_id: str, url: str, body: bytes) -> bytes:
    """The associated data a subscription's secret is sealed under for one delivery: the
    subscription, the URL and the exact body. Whoever can read (or copy) a delivery task
    sees only ciphertext, and that ciphertext signs that one body to that one URL, nothing
    else."""
    digest = hashlib.sha256(url.encode() + b"\n" + body).digest()
    return b"webhook.secret:" + uuid.UUID(subscription_id).bytes + digest


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Agentry-Webhook-Signature` value: `v1=` and the hex HMAC-SHA256, keyed with
    `secret`, of `f"{timestamp}.".encode() + body` (the raw body, exactly as sent)."""
    mac = hmac.new(secret.encode(), f"{int(timestamp)}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: int | str,
    body: bytes,
    signature: str,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """True when `signature` (the header; several comma-separated values are allowed, for
    secret rotation) signs `body` at `timestamp` and that is within `tolerance_s` of `now`
    (default: the current time), which refuses replays of old deliveries."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if not isinstance(signature, str):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body).encode()
    matches = [hmac.compare_digest(expected, s.strip().encode()) for s in signature.split(",")]
    return any(matches)
