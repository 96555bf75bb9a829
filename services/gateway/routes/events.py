"""`WebSocket /v1/events`: the platform's events, live. WebSockets are not in OpenAPI, so
the protocol is written down here.

Connecting. The client presents its token as `Authorization: Bearer <jwt>` or, from a
browser (which cannot set headers on a WebSocket), as `?token=<jwt>`. The server accepts
the connection, then checks the token: a missing, invalid or expired one closes it with
4401 and the reason, and is audited like a refused REST call. Closing after the handshake
rather than refusing it is deliberate: a browser sees 1006 and nothing else for a refused
handshake, but gets the code and reason of a close. A token that expires while connected
closes the connection with 4401 too.

Client to server, as often as it likes:

    {"subscribe": ["task:<id>", "run:<id>", "type:<event type>", "*"], "after": <id> | null}

- "task:<id>": the task's events; "run:<id>": the run's and its steps'; "workflow:<name>":
  the workflow's. Each needs the role to read them (`GET /v1/tasks`, `GET /v1/runs`,
  `GET /v1/workflows` in the RBAC policy).
- "type:<event type>": every event of that type whose subject the role may read.
- "*": everything. Admins only.

A connection is subscribed to nothing until its first subscribe message; each replaces
the subscription before it. With "after" (an event's id, or a "subscribed" frame's
position) the matching events after it come first, from the stream, then the live ones: no
gap, no duplicate. Without it, events come from the position in the "subscribed" answer on;
when a subscription changes, what the old and new ones share loses nothing. So a page that
is about to create a task subscribes first, keeps the position, and once it has the task's
id subscribes to it with "after" = that position. The stream keeps its last million entries
or so: an older "after" resumes from the oldest kept. A refused message (not JSON, an unknown topic, a topic the role may not read, "*"
for anyone but an admin) is answered `{"error": "..."}` and leaves the subscription as it
was; a refusal for want of permission is audited.

Server to client:

    {"type": "subscribed", "subscribe": [...], "position": "1732712345678-0"}
    {"id": "1732712345678-0:3", "type": "task.succeeded", "subject": "task/<id>",
     "time": "2024-11-27T12:19:05.678Z", "data": {...}, "source": "task_agent/<instance>"}
    {"type": "ping"}      after `events_ping_interval_s` without another frame
    {"error": "..."}

Event frames have an "id"; no other frame does. Event ids increase in stream order.

Close codes: 4401 unauthenticated; 1013 try again later: the client fell
`events_queue_size` events behind (resume with "after" = the last id it got) or the event
stream is unavailable; 1011 internal error; 1012 the gateway is restarting."""

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from redis.exceptions import RedisError

from libs.common.audit import AuditEntry
from libs.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from libs.common.rbac import Policy
from libs.common.tokens import Principal, verify
from libs.common.tracing import trace_id
from services.gateway.auth import ANONYMOUS_ADMIN
from services.gateway.live_events import (
    LiveEvents,
    Position,
    Subscriber,
    Topics,
    format_position,
    parse_position,
)

log = structlog.get_logger(__name__)

router = APIRouter()

PATH = "/v1/events"
UNAUTHENTICATED = 4401
TRY_AGAIN_LATER = 1013
INTERNAL_ERROR = 1011
# The subjects clients may name, "<kind>/<id>", and the REST route whose read permission
# lets a role see them. Other subjects are for admins.
_READ_ROUTES = {
    "task": "/v1/tasks",
    "run": "/v1/runs",
    "workflow": "/v1/workflows",
    "insight": "/v1/insights",
}
_EVERYTHING_ROLE = "admin"
_MAX_TOPICS = 100
_MAX_TOPIC_CHARS = 200
_READY_TIMEOUT_S = 5.0
# A close frame waits behind what a slow client has not read yet; it gets this long.
_CLOSE_TIMEOUT_S = 10.0
_PING = json.dumps({"type": "ping"})


@router.websocket(PATH)
async def events(websocket: WebSocket) -> None:
    token = _take_token(websocket)
    await websocket.accept()
    principal = await _authenticate(websocket, token)
    if principal is None:
        return
    feed: LiveEvents = websocket.app.state.live_events
    if not await feed.wait_ready(_READY_TIMEOUT_S):
        await websocket.close(TRY_AGAIN_LATER, "the event stream is unavailable; try again later")
        return
    await _Connection(websocket, principal, feed).serve()


@dataclass(frozen=True)
class _Subscribe:
    names: list[str]
    topics: Topics
    after: Position | None


class _Connection:
    def __init__(self, websocket: WebSocket, principal: Principal, feed: LiveEvents) -> None:
        self._ws = websocket
        self._principal = principal
        self._feed = feed
        self._ping_interval_s: float = websocket.app.state.event_ping_interval_s
        self._readable = _readable(websocket.app.state.auth.policy, principal.role)
        self._subscriber: Subscriber | None = None
        self._sender: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._last_sent = time.monotonic()
        self._done = asyncio.Event()
        self._close: tuple[int, str] | None = None

    async def serve(self) -> None:
        expiry = None
        if self._principal.expires_at:
            expiry = asyncio.get_running_loop().call_later(
                max(0.0, self._principal.expires_at - time.time()),
                self._finish,
                UNAUTHENTICATED,
                "token expired",
            )
        # Subscribed to nothing until the client says: pings flow meanwhile.
        self._start_pump(self._start(Topics()), None)
        receiving = asyncio.create_task(self._receive())
        receiving.add_done_callback(self._task_ended)
        try:
            await self._done.wait()
        finally:
            if expiry is not None:
                expiry.cancel()
            receiving.cancel()
            await asyncio.wait([receiving])
            await self._stop_sending()
        if self._close is not None:
            with contextlib.suppress(TimeoutError, WebSocketDisconnect):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await self._ws.close(*self._close)

    def _finish(self, code: int | None = None, reason: str = "") -> None:
        """Ends the connection, closing it with `code` unless the client left already."""
        if not self._done.is_set():
            self._close = None if code is None else (code, reason)
            self._done.set()

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or isinstance(exc, WebSocketDisconnect):
            self._finish()
        elif isinstance(exc, RedisError):
            log.warning("the event stream is unavailable", exc_info=exc)
            self._finish(TRY_AGAIN_LATER, "the event stream is unavailable; try again later")
        else:
            log.error("an event connection failed", exc_info=exc)
            self._finish(INTERNAL_ERROR, "internal error")

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        if task is self._sender:
            self._task_ended(task)

    def _overflowed(self) -> None:
        self._finish(
            TRY_AGAIN_LATER, "too far behind: reconnect with after = the last event id received"
        )

    async def _receive(self) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                await self._apply(self._parse(message.get("text") or message.get("bytes") or ""))
            except InvalidArgument as exc:
                await self._send_json({"error": str(exc)})
            except PermissionDenied as exc:
                await self._send_json({"error": str(exc)})
                await _audit(self._ws, self._principal, "PERMISSION_DENIED", str(exc))

    def _parse(self, raw: str | bytes) -> _Subscribe:
        try:
            body = json.loads(raw)
        except ValueError:
            raise InvalidArgument(
                'a message is JSON: {"subscribe": ["task:<id>", ...], "after": null}'
            ) from None
        names = body.get("subscribe") if isinstance(body, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidArgument('"subscribe" is a list of topics, like ["task:<id>"]')
        if len(names) > _MAX_TOPICS:
            raise InvalidArgument(f"at most {_MAX_TOPICS} topics")
        after = body.get("after")
        if after is not None and not isinstance(after, str):
            raise InvalidArgument('"after" is an event id or null')
        try:
            position = None if after is None else parse_position(after)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        return _Subscribe(names, self._topics(names), position)

    def _topics(self, names: list[str]) -> Topics:
        subjects: set[str] = set()
        types: set[str] = set()
        everything = False
        for name in names:
            kind, _, rest = name.partition(":")
            if name == "*":
                if self._principal.role != _EVERYTHING_ROLE:
                    raise PermissionDenied(f'role {self._principal.role} may not subscribe to "*"')
                everything = True
            elif not rest or len(name) > _MAX_TOPIC_CHARS:
                raise InvalidArgument(f"{name[:_MAX_TOPIC_CHARS]!r} is not a topic")
            elif kind == "type":
                types.add(rest)
            elif kind in _READ_ROUTES:
                subject = f"{kind}/{rest}"
                if not self._readable(subject):
                    raise PermissionDenied(f"role {self._principal.role} may not read {kind}s")
                subjects.add(subject)
            else:
                raise InvalidArgument(
                    f"unknown topic {name!r}: task:<id>, run:<id>, workflow:<name>, insight:<id>, "
                    "type:<event type> or *"
                )
        return Topics(frozenset(subjects), frozenset(types), everything)

    async def _apply(self, request: _Subscribe) -> None:
        if request.after is None and self._subscriber is not None:
            position = self._feed.change(self._subscriber, request.topics)
            await self._send_json(_subscribed(request.names, position))
            return
        await self._stop_sending()
        subscriber = self._start(request.topics)
        await self._send_json(_subscribed(request.names, subscriber.since))
        self._start_pump(subscriber, request.after)

    def _start(self, topics: Topics) -> Subscriber:
        self._subscriber = self._feed.subscribe(topics, self._readable, self._overflowed)
        return self._subscriber

    def _start_pump(self, subscriber: Subscriber, after: Position | None) -> None:
        self._sender = asyncio.create_task(self._pump(subscriber, after))
        self._sender.add_done_callback(self._sender_ended)

    async def _stop_sending(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.wait([sender])
        if self._subscriber is not None:
            self._feed.unsubscribe(self._subscriber)
            self._subscriber = None

    async def _pump(self, subscriber: Subscriber, after: Position | None) -> None:
        """The replay after `after`, then the live events, and pings while there are none."""
        if after is not None:
            async for event in self._feed.replay(subscriber, after):
                await self._send_text(event.frame)
        queue = subscriber.queue
        while True:
            try:
                event = queue.get_nowait()
            except asyncio.QueueEmpty:
                idle_s = self._last_sent + self._ping_interval_s - time.monotonic()
                try:
                    async with asyncio.timeout(max(0.0, idle_s)):
                        event = await queue.get()
                except TimeoutError:
                    await self._send_text(_PING)
                    continue
            # Queued before the subscription changed, or already replayed from a position
            # another gateway handed out.
            if not subscriber.topics.name(event.type, event.subject):
                continue
            if after is not None and event.position <= after:
                continue
            await self._send_text(event.frame)

    async def _send_json(self, frame: dict[str, Any]) -> None:
        await self._send_text(json.dumps(frame))

    async def _send_text(self, text: str) -> None:
        async with self._send_lock:
            await self._ws.send_text(text)
        self._last_sent = time.monotonic()


def _subscribed(names: list[str], position: Position) -> dict[str, Any]:
    return {"type": "subscribed", "subscribe": names, "position": format_position(position)}


def _readable(policy: Policy, role: str) -> Callable[[str], bool]:
    """Whether `role` may see events about a subject."""
    if role == _EVERYTHING_ROLE:
        return lambda subject: True
    kinds = frozenset(
        kind for kind, route in _READ_ROUTES.items() if policy.allows_http(role, "GET", route)
    )
    return lambda subject: subject.partition("/")[0] in kinds


async def _authenticate(websocket: WebSocket, token: str | None) -> Principal | None:
    auth = websocket.app.state.auth
    if auth.disabled:
        return ANONYMOUS_ADMIN
    try:
        if not token:
            raise Unauthenticated("a bearer token is required: an Authorization header or ?token=")
        principal: Principal = verify(token, auth.public_key, auth.audience)
    except Unauthenticated as exc:
        await _audit(websocket, None, "UNAUTHENTICATED", str(exc))
        # A close reason is at most 123 bytes.
        await websocket.close(UNAUTHENTICATED, str(exc).encode()[:123].decode(errors="ignore"))
        return None
    return principal


def _take_token(websocket: WebSocket) -> str | None:
    """The bearer token, from the header or the query. A query token is taken out of the
    connection's query string: the server logs the path and query of every WebSocket it
    accepts, and a token there would end up in the logs."""
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    token = websocket.query_params.get("token")
    if token is not None:
        kept = [(k, v) for k, v in websocket.query_params.multi_items() if k != "token"]
        websocket.scope["query_string"] = urlencode(kept).encode()
    return token


async def _audit(
    websocket: WebSocket, principal: Principal | None, outcome: str, detail: str
) -> None:
    await websocket.app.state.audit.record(
        AuditEntry(
            principal=principal.subject if principal else "unknown",
            role=principal.role if principal else "",
            action=f"GET {PATH}",
            resource=PATH,
            outcome=outcome,
            trace_id=trace_id(),
            via="gateway",
            detail=detail,
        )
    )
