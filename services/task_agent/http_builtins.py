"""HTTP task types every agent serves: `http.request` (one call, its response as the result)
and `webhook.deliver` (a signed JSON POST that receivers can verify and de-duplicate).

Both retry what may pass on its own (5xx, 429, network errors and timeouts) no earlier than
the upstream's Retry-After, and fail at once on what will not (other 4xx, a bad payload).
A 429 also empties the host's shared rate bucket for Retry-After seconds, so every replica
that rate-limits that host backs off, not only the one that was told."""

import asyncio
import base64
import binascii
import codecs
import ipaddress
import json
import math
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from libs.common.crypto import MAGIC, Keyring, Undecryptable
from libs.common.webhooks import (
    EVENT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    canonical_json,
    sealed_secret_aad,
    sign,
)
from services.task_agent.handlers import (
    NonRetryableError,
    Resources,
    RetryableError,
    TaskContext,
    task,
)
from services.task_agent.limits import RateLimiter
from services.task_agent.model import RetryPolicy

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A response body is kept up to this size; a longer one is cut and marked "truncated".
MAX_RESPONSE_BYTES = 256 * 1024
# How much of an error response a failure message quotes.
EXCERPT_CHARS = 200
# Below the handlers' 30 s, so a slow upstream fails as an HTTP timeout with its own message.
DEFAULT_REQUEST_TIMEOUT_S = 15.0
MAX_REQUEST_TIMEOUT_S = 300.0
# Longest wait for a host's rate-limit token inside an attempt (it holds a worker slot and must
# end before the attempt's timeout); a longer wait becomes a retry after that wait.
MAX_RATE_WAIT_S = 10.0
# An upstream cannot push a retry further out than this.
MAX_RETRY_AFTER_S = 3600.0

_WEBHOOK_OWN_HEADERS = frozenset(
    h.lower() for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, ID_HEADER, EVENT_HEADER)
) | {"content-type"}


@dataclass(frozen=True)
class _Call:
    method: str
    url: httpx.URL
    headers: dict[str, str]
    content: bytes | None
    timeout_s: float
    rate_limit_per_s: float | None
    follow_redirects: bool = False

    @property
    def where(self) -> str:
        """The target without credentials or query string, fit for messages and logs."""
        return f"{self.method} {self.url.scheme}://{self.url.netloc.decode()}{self.url.path}"


@dataclass(frozen=True)
class _Response:
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    encoding: str

    def text(self) -> str:
        return self.body.decode(self.encoding, errors="replace")

    def is_json(self) -> bool:
        kind = self.headers.get("content-type", "").split(";")[0].strip().lower()
        return kind == "application/json" or kind.endswith("+json")


# Task types


@task(
    "http.request",
    timeout_s=30,
    retry=RetryPolicy(max_attempts=5, initial_backoff_s=1, max_backoff_s=60),
)
async def http_request(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Payload: {"method", "url", "headers", "json" | "body", "timeout_s", "rate_limit_per_s",
    "follow_redirects"}. Result: {"status", "headers" (lowercase names), "json" when the
    response is JSON, else "text" (cut at 256 KiB, with "truncated": true when cut)}."""
    p = _object(payload)
    method = p.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise NonRetryableError(f"payload.method must be one of {', '.join(sorted(METHODS))}")
    headers = _headers(p.get("headers"))
    if "json" in p and "body" in p:
        raise NonRetryableError("give payload.json or payload.body, not both")
    content: bytes | None = None
    if "json" in p:
        content = _compact_json(p["json"], "payload.json")
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
    elif "body" in p:
        if not isinstance(p["body"], str):
            raise NonRetryableError("payload.body must be a string (send JSON as payload.json)")
        content = p["body"].encode()
    follow = p.get("follow_redirects", False)
    if not isinstance(follow, bool):
        raise NonRetryableError("payload.follow_redirects must be true or false")
    call = _Call(
        method=method.upper(),
        url=_url(p.get("url")),
        headers=headers,
        content=content,
        timeout_s=_timeout(p.get("timeout_s")),
        rate_limit_per_s=_rate(p.get("rate_limit_per_s")),
        follow_redirects=follow,
    )
    response = await _send(ctx, call, MAX_RESPONSE_BYTES)
    result: dict[str, Any] = {
        "status": response.status,
        "headers": {k.lower(): v for k, v in response.headers.items()},
    }
    parsed = _json_or_none(response) if response.is_json() and not response.truncated else None
    if parsed is not None:
        result["json"] = parsed[0]
    else:
        result["text"] = response.text()
        if response.truncated:
            result["truncated"] = True
    return result


@task(
    "webhook.deliver",
    timeout_s=30,
    retry=RetryPolicy(max_attempts=5, initial_backoff_s=1, max_backoff_s=60),
)
async def deliver_webhook(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Payload: {"url", "body" (any JSON), "secret_ref" | "secret_sealed" and "subscription",
    "headers", "event", "timeout_s", "rate_limit_per_s"}. The secret itself never travels in
    a payload, so it is not stored with the task nor shown to anyone who can read tasks:
    `secret_ref` names one of the agent's `webhook_secrets`; `secret_sealed` (base64) is a
    webhook subscription's secret, sealed by the orchestrator with the data keys for this
    one delivery (bound to the subscription, the URL and the body: see
    `libs.common.webhooks.sealed_secret_aad`). POSTs the body as compact JSON with sorted
    keys, signed (see `sign`); the webhook id is the task id, the same on every attempt.
    Result: {"status", "delivered_at"} once the receiver answers 2xx."""
    p = _object(payload)
    if "body" not in p:
        raise NonRetryableError("payload.body is required (any JSON)")
    url = _url(p.get("url"))
    body = _compact_json(p["body"], "payload.body")
    secret = _signing_secret(p, ctx.resources, p["url"], body)
    headers = _headers(p.get("headers"))
    clashing = sorted(k for k in headers if k.lower() in _WEBHOOK_OWN_HEADERS)
    if clashing:
        raise NonRetryableError(f"payload.headers may not set {', '.join(clashing)}")
    event = p.get("event")
    if event is not None:
        if not isinstance(event, str) or not event.isprintable() or not event.isascii():
            raise NonRetryableError("payload.event must be printable ASCII text")
        headers[EVENT_HEADER] = event
    # Signed afresh on every attempt: receivers refuse timestamps outside their tolerance.
    timestamp = int(time.time())
    headers.update(
        {
            "Content-Type": "application/json",
            ID_HEADER: ctx.task_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body),
        }
    )
    call = _Call(
        method="POST",
        url=url,
        headers=headers,
        content=body,
        timeout_s=_timeout(p.get("timeout_s")),
        rate_limit_per_s=_rate(p.get("rate_limit_per_s")),
    )
    response = await _send(ctx, call, EXCERPT_CHARS * 4)
    if not 200 <= response.status < 300:
        raise NonRetryableError(
            f"HTTP {response.status} from {call.where}: not delivered (redirects are not followed)"
        )
    return {"status": response.status, "delivered_at": datetime.now(UTC).isoformat()}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP-date), capped at
    MAX_RETRY_AFTER_S; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


# Sending


async def _send(ctx: TaskContext, call: _Call, keep_bytes: int) -> _Response:
    """Sends `call` (after a token of the host's rate limit, when it has one) and reads at
    most `keep_bytes` of the body. A 5xx or 429 raises RetryableError, another 4xx
    NonRetryableError; anything else is returned."""
    if not ctx.resources.allow_private_networks:
        await _refuse_private(call)
    if call.rate_limit_per_s:
        await _take_token(ctx.resources.limiter, call.url.host, call.rate_limit_per_s)
    client = ctx.resources.http
    try:
        request = client.build_request(
            call.method,
            call.url,
            headers=call.headers,
            content=call.content,
            timeout=call.timeout_s,
        )
    except (TypeError, ValueError) as exc:  # a header that is not ASCII, for one
        raise NonRetryableError(f"cannot build the request: {exc}") from exc
    try:
        sent = await client.send(request, stream=True, follow_redirects=call.follow_redirects)
        try:
            body, truncated = await _read(sent, keep_bytes)
        finally:
            await sent.aclose()
    except httpx.UnsupportedProtocol as exc:  # a redirect to something other than http(s)
        raise NonRetryableError(f"{call.where}: {exc}") from exc
    except httpx.TransportError as exc:
        raise RetryableError(f"{type(exc).__name__} on {call.where}: {exc}".rstrip(": ")) from exc
    except httpx.RequestError as exc:  # too many redirects, an undecodable body
        raise NonRetryableError(f"{type(exc).__name__} on {call.where}: {exc}") from exc
    response = _Response(sent.status_code, sent.headers, body, truncated, _encoding(sent))
    ctx.log.info("http response", target=call.where, status=response.status)
    status = response.status
    if status == 429 or status >= 500:
        wait = parse_retry_after(response.headers.get("retry-after"))
        if status == 429 and wait:
            await ctx.resources.limiter.penalize(_bucket(call.url.host), wait)
        raise RetryableError(f"HTTP {status} from {call.where}{_excerpt(response)}", wait)
    if status >= 400:
        raise NonRetryableError(f"HTTP {status} from {call.where}{_excerpt(response)}")
    return response


async def _take_token(limiter: RateLimiter, host: str, rate_per_s: float) -> None:
    """Waits for a token of the host's bucket, shared by every replica. Another replica may
    take the token we waited for, hence the loop."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + MAX_RATE_WAIT_S
    while True:
        wait = await limiter.acquire(_bucket(host), rate_per_s)
        if wait <= 0:
            return
        if loop.time() + wait > give_up_at:
            raise RetryableError(
                f"rate limit of {host} ({rate_per_s}/s): no token within {MAX_RATE_WAIT_S:.0f}s",
                retry_after_s=wait,
            )
        await asyncio.sleep(wait)


async def _read(response: httpx.Response, keep_bytes: int) -> tuple[bytes, bool]:
    """At most `keep_bytes` of the body, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    # Breaking out early is fine: the caller closes the response.
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > keep_bytes:
            break
    return b"".join(chunks)[:keep_bytes], size > keep_bytes


def _encoding(response: httpx.Response) -> str:
    """The charset the response declares, when Python knows it, else UTF-8."""
    name = response.charset_encoding or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _bucket(host: str) -> str:
    return f"host:{host}"


def _excerpt(response: _Response) -> str:
    text = " ".join(response.text().split())
    if not text:
        return ""
    return ": " + (text[:EXCERPT_CHARS] + "…" if len(text) > EXCERPT_CHARS else text)


def _json_or_none(response: _Response) -> tuple[Any] | None:
    """(the parsed body,) or None when it is not valid JSON (NaN and Infinity are not)."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return (json.loads(response.body, parse_constant=refuse),)
    except ValueError:
        return None


# Payload checks: a bad payload fails at once, with a message saying what is wrong


def _object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise NonRetryableError("the payload must be a JSON object")
    return payload


async def _refuse_private(call: _Call) -> None:
    """Keeps tasks from reaching the agent's own network (loopback, private ranges, cloud
    metadata): whoever may submit a task must not get a way into internal services."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(call.url.host, call.url.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RetryableError(f"cannot resolve {call.url.host}: {exc}") from exc
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global:
            raise NonRetryableError(
                f"{call.where}: {address} is not a public address, and this agent does not "
                "call private networks (AGENTRY_HTTP_ALLOW_PRIVATE_NETWORKS)"
            )


def _url(value: Any) -> httpx.URL:
    if not isinstance(value, str) or not value:
        raise NonRetryableError("payload.url is required: an http or https URL")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise NonRetryableError(f"payload.url is not a valid URL: {exc}") from exc
    if url.scheme not in ("http", "https"):
        raise NonRetryableError(
            f"payload.url must be an http or https URL, not {url.scheme or 'one without a scheme'}"
        )
    if not url.host:
        raise NonRetryableError("payload.url has no host")
    return url


def _signing_secret(p: dict[str, Any], resources: Resources, url: str, body: bytes) -> str:
    if "secret_sealed" in p:
        if "secret_ref" in p:
            raise NonRetryableError("give payload.secret_ref or payload.secret_sealed, not both")
        return _open_sealed(p["secret_sealed"], p.get("subscription"), resources.keyring, url, body)
    secret_ref = p.get("secret_ref")
    if not isinstance(secret_ref, str) or not secret_ref:
        raise NonRetryableError(
            "payload.secret_ref is required: the name of a webhook secret"
            " (or payload.secret_sealed, for a subscription's)"
        )
    secret = resources.secrets.get(secret_ref)
    if not secret:
        raise NonRetryableError(f"unknown secret_ref {secret_ref!r}: no such webhook secret")
    return secret


def _open_sealed(sealed: Any, subscription: Any, keyring: Keyring, url: str, body: bytes) -> str:
    """A subscription's secret, sealed for this very delivery: one sealed for another
    subscription, URL or body does not open."""
    try:
        uuid.UUID(subscription if isinstance(subscription, str) else "")
    except ValueError:
        raise NonRetryableError(
            "payload.subscription is required with payload.secret_sealed: a subscription id"
        ) from None
    if not isinstance(sealed, str) or not sealed:
        raise NonRetryableError("payload.secret_sealed must be base64 text")
    try:
        raw = base64.b64decode(sealed, validate=True)
    except binascii.Error:
        raise NonRetryableError("payload.secret_sealed is not base64") from None
    # With the keys held, only a sealed value is taken (a plain one would be the caller's
    # own secret, passed in clear).
    if keyring.enabled and not raw.startswith(MAGIC):
        raise NonRetryableError("payload.secret_sealed is not sealed with the data keys")
    try:
        return keyring.decrypt(raw, sealed_secret_aad(subscription, url, body)).decode()
    except Undecryptable as exc:
        raise NonRetryableError(
            f"payload.secret_sealed does not open for this subscription, URL and body: {exc}"
        ) from None
    except UnicodeError:
        raise NonRetryableError("payload.secret_sealed does not hold a text secret") from None


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise NonRetryableError("payload.headers must be an object of strings")
    return dict(value)


def _timeout(value: Any) -> float:
    if value is None:
        return DEFAULT_REQUEST_TIMEOUT_S
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_REQUEST_TIMEOUT_S
    ):
        raise NonRetryableError(
            f"payload.timeout_s must be a number of seconds in (0, {MAX_REQUEST_TIMEOUT_S:.0f}]"
        )
    return float(value)


def _rate(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 10_000:
        raise NonRetryableError("payload.rate_limit_per_s must be a number in (0, 10000]")
    return float(value)


def _compact_json(value: Any, name: str) -> bytes:
    """Compact, sorted, UTF-8: the same value always gives the same bytes."""
    try:
        return canonical_json(value)
    except ValueError as exc:
        raise NonRetryableError(f"{name} is not valid JSON: {exc}") from exc
