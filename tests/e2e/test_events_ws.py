"""WebSocket /v1/events against the real platform: tasks submitted through REST, events
followed live as the website follows them."""

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentry.events.v1.events_pb2 import EventBatch
from libs.common.events import EventBus, make_events
from libs.common.redis_client import Keys

TIMEOUT_S = 15.0


class Client:
    """One connection, read frame by frame; pings are skipped."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def frame(self) -> dict[str, Any]:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT_S))
            if frame.get("type") != "ping":
                return frame

    async def subscribe(self, topics: list[str], after: str | None = None) -> str:
        """Subscribes and answers the position events come after."""
        await self.ws.send(json.dumps({"subscribe": topics, "after": after}))
        answer = await self.frame()
        assert answer["type"] == "subscribed", answer
        return str(answer["position"])

    async def events_until(self, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict]:
        events: list[dict[str, Any]] = []
        while not done(events):
            frame = await self.frame()
            assert "id" in frame, frame
            events.append(frame)
        return events


@pytest.fixture
async def bus(platform, redis_url: str) -> AsyncIterator[EventBus]:
    """Publishes to the platform's event stream, as an agent does; what it published is
    deleted afterwards."""
    # The prefix conftest gives the services.
    keys = Keys(platform.stack._env["AGENTRY_REDIS_PREFIX"])
    client = redis.Redis.from_url(redis_url)
    stream = keys.event_stream()
    last = await client.xrevrange(stream, count=1)
    bus = EventBus(client, keys, "test/e2e")
    yield bus
    entries = await client.xrange(stream, min="(" + last[0][0].decode() if last else "-")
    ours = [
        entry_id
        for entry_id, fields in entries
        if all(e.source == bus.source for e in EventBatch.FromString(fields[b"e"]).events)
    ]
    if ours:
        await client.xdel(stream, *ours)
    await client.aclose()


def _url(platform, query: str = "") -> str:
    return platform.stack.gateway_url.replace("http://", "ws://") + "/v1/events" + query


@asynccontextmanager
async def _connect(platform, role: str = "viewer") -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {platform.token(role)}"}
    async with connect(_url(platform), additional_headers=headers, open_timeout=TIMEOUT_S) as ws:
        yield Client(ws)


@asynccontextmanager
async def _rest(platform, role: str = "operator") -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {platform.token(role)}"}
    async with httpx.AsyncClient(
        base_url=platform.stack.gateway_url, headers=headers, timeout=TIMEOUT_S
    ) as client:
        yield client


async def _submit(platform, count: int = 1) -> list[str]:
    async with _rest(platform) as client:
        reply = await client.post(
            "/v1/tasks/batch",
            json={"tasks": [{"type": "echo", "payload": {"n": n}} for n in range(count)]},
        )
    assert reply.status_code == 201, reply.text[:300]
    return [task["id"] for task in reply.json()["tasks"]]


def _finished(ids: list[str]) -> Callable[[list[dict[str, Any]]], bool]:
    """Whether the events hold every task's success."""
    wanted = {f"task/{i}" for i in ids}
    return lambda events: wanted <= {e["subject"] for e in events if e["type"] == "task.succeeded"}


async def test_a_task_subscriber_gets_that_tasks_events_only(platform) -> None:
    """A task's id is known once it is submitted: the client takes a position first and
    subscribes from it, so it misses nothing the task did in between."""
    async with _connect(platform, "viewer") as client:
        position = await client.subscribe([])
        mine, other = await _submit(platform, 2)
        await client.subscribe([f"task:{mine}"], after=position)
        events = await client.events_until(
            lambda events: any(e["type"] == "task.succeeded" for e in events)
        )

    # An idle agent claims a task as it is stored: it starts without being queued.
    assert [e["type"] for e in events] in (
        ["task.queued", "task.started", "task.succeeded"],
        ["task.started", "task.succeeded"],
    )
    assert {e["subject"] for e in events} == {f"task/{mine}"}
    done = events[-1]
    assert done["data"]["id"] == mine
    assert done["data"]["state"] == "SUCCEEDED"
    assert done["time"].endswith("Z")
    assert done["source"].startswith("task_agent/")
    assert other not in json.dumps(events)


async def test_a_type_subscription_sees_every_task_of_that_type(platform) -> None:
    async with _connect(platform, "viewer") as client:
        await client.subscribe(["type:task.succeeded"])
        ids = await _submit(platform, 3)
        events = await client.events_until(_finished(ids))

    assert {e["type"] for e in events} == {"task.succeeded"}
    assert [e["id"] for e in events] == sorted(set(e["id"] for e in events), key=_order)


async def test_a_client_resumes_where_it_left_off(platform) -> None:
    async with _connect(platform) as watcher:
        await watcher.subscribe(["type:task.succeeded"])
        async with _connect(platform) as first:
            await first.subscribe(["type:task.succeeded"])
            seen = await _submit(platform, 2)
            before = await first.events_until(_finished(seen))
        missed = await _submit(platform, 3)
        await watcher.events_until(_finished(missed))

        async with _connect(platform) as again:
            await again.subscribe(["type:task.succeeded"], after=before[-1]["id"])
            live = await _submit(platform, 1)
            after = await again.events_until(_finished(missed + live))

    ours = {f"task/{i}" for i in seen + missed + live}
    subjects = [e["subject"] for e in after if e["subject"] in ours]
    assert sorted(subjects) == sorted(f"task/{i}" for i in missed + live)
    assert subjects[-1] == f"task/{live[0]}"
    ids = [e["id"] for e in after]
    assert ids == sorted(set(ids), key=_order)
    assert _order(ids[0]) > _order(before[-1]["id"])


async def test_resuming_while_events_pour_in_has_no_gap_and_no_duplicate(
    platform, bus: EventBus
) -> None:
    """Resumes mid-batch while a publisher writes three events per stream entry: the replay
    from the stream and the live feed meet exactly."""
    count = 300
    subject = f"test/{uuid.uuid4()}"

    async def publish() -> None:
        for start in range(0, count, 3):
            batch = [("test.tick", subject, {"n": n}) for n in range(start, start + 3)]
            await bus.publish_events(make_events(batch, bus.source))
            await asyncio.sleep(0.005)

    def numbers(events: list[dict[str, Any]]) -> list[int]:
        return [e["data"]["n"] for e in events if e["subject"] == subject]

    async with _connect(platform, "admin") as first:
        await first.subscribe(["type:test.tick"])
        publishing = asyncio.create_task(publish())
        before = await first.events_until(lambda events: len(numbers(events)) >= 100)
    before = [e for e in before if e["subject"] == subject]
    async with _connect(platform, "admin") as again:
        await again.subscribe(["type:test.tick"], after=before[-1]["id"])
        after = await again.events_until(lambda events: count - 1 in numbers(events))
    await publishing

    assert before[-1]["id"].endswith(":0"), "resumed inside a stream entry"
    assert numbers(before) + numbers(after) == list(range(count))


async def test_only_admins_subscribe_to_everything(platform) -> None:
    async with _connect(platform, "viewer") as viewer:
        await viewer.ws.send(json.dumps({"subscribe": ["*"]}))
        refused = await viewer.frame()
        assert "may not" in refused["error"]
        await viewer.subscribe(["type:task.succeeded"])
        async with _connect(platform, "admin") as admin:
            await admin.subscribe(["*"])
            ids = await _submit(platform)
            everything = await admin.events_until(_finished(ids))
        followed = await viewer.events_until(_finished(ids))

    assert {"task.started", "task.succeeded"} <= {e["type"] for e in everything}
    assert {e["type"] for e in followed} == {"task.succeeded"}
    assert await _audited("PERMISSION_DENIED", "test-viewer", platform)


async def test_a_role_sees_only_the_subjects_it_may_read(platform, bus: EventBus) -> None:
    """Subjects other than tasks, runs and workflows are for admins, whatever the topic."""
    task = f"task/{uuid.uuid4()}"
    topics = ["type:test.secret", "type:test.note"]
    async with _connect(platform, "viewer") as viewer, _connect(platform, "admin") as admin:
        await viewer.subscribe(topics)
        await admin.subscribe(topics)
        await bus.publish("test.secret", f"test/{uuid.uuid4()}", {"secret": True})
        await bus.publish("test.note", task, {})
        seen_by_viewer = await viewer.events_until(lambda events: len(events) == 1)
        seen_by_admin = await admin.events_until(lambda events: len(events) == 2)

    assert [e["subject"] for e in seen_by_viewer] == [task]
    assert [e["type"] for e in seen_by_admin] == ["test.secret", "test.note"]


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "required"), ("abc.def.ghi", "invalid token"), ("expired", "expired")],
)
async def test_connections_need_a_valid_token(platform, token: str | None, reason: str) -> None:
    if token == "expired":
        token = platform.token("viewer", ttl_s=-60)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with connect(_url(platform), additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert reason in closed.value.rcvd.reason
    assert await _audited("UNAUTHENTICATED", "unknown", platform)


async def test_a_connection_ends_when_its_token_expires(platform) -> None:
    headers = {"Authorization": f"Bearer {platform.token('viewer', ttl_s=2)}"}
    async with connect(_url(platform), additional_headers=headers) as ws:
        client = Client(ws)
        await client.subscribe(["type:task.succeeded"])
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.frame()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert closed.value.rcvd.reason == "token expired"


async def test_browsers_pass_the_token_in_the_query(platform) -> None:
    token = platform.token("viewer")
    async with connect(_url(platform, f"?token={token}")) as ws:
        client = Client(ws)
        await client.subscribe(["type:task.succeeded"])
        ids = await _submit(platform)
        assert await client.events_until(_finished(ids))
    assert token not in (platform.log_dir / "gateway.log").read_text()


async def test_a_client_that_stops_reading_is_cut_off_and_resumes(platform, bus: EventBus) -> None:
    """More events than its queue holds pile up behind a client that reads nothing: it is
    closed with 1013 after the events it got, and resuming from the last one loses none."""
    count = 3000
    subject = f"test/{uuid.uuid4()}"
    # A small receive window, so that what the client does not read stays at the gateway.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", platform.stack.ports.gateway))
    headers = {"Authorization": f"Bearer {platform.token('admin')}"}
    slow_ws = await connect(
        _url(platform), sock=sock, additional_headers=headers, compression=None, max_queue=1
    )
    slow = Client(slow_ws)

    def numbers(events: list[dict[str, Any]]) -> list[int]:
        return [e["data"]["n"] for e in events if e["subject"] == subject]

    try:
        async with _connect(platform, "admin") as watcher:
            await watcher.subscribe(["type:test.flood"])
            await slow.subscribe(["type:test.flood"])
            # In steps the watcher keeps up with, however busy the machine.
            for step in range(0, count, 500):
                for start in range(step, step + 500, 10):
                    batch = [
                        ("test.flood", subject, {"n": n, "pad": "x" * 4000})
                        for n in range(start, start + 10)
                    ]
                    await bus.publish_events(make_events(batch, bus.source))
                last = step + 499
                await watcher.events_until(lambda events, last=last: last in numbers(events))
        got: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append(await slow.frame())
        async with _connect(platform, "admin") as again:
            await again.subscribe(["type:test.flood"], after=got[-1]["id"])
            rest = await again.events_until(lambda events: count - 1 in numbers(events))
    finally:
        await slow_ws.close()

    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
    assert "after" in closed.value.rcvd.reason
    assert len(numbers(got)) < count
    assert numbers(got) + numbers(rest) == list(range(count))


async def test_many_clients_all_get_an_event(platform) -> None:
    async def follow(ready: asyncio.Event, clients: list[Client], ids: list[str]) -> list[dict]:
        async with _connect(platform) as client:
            await client.subscribe(["type:task.succeeded"])
            clients.append(client)
            if len(clients) == 50:
                ready.set()
            await ready.wait()
            await submitted.wait()
            return await client.events_until(_finished(ids))

    ready, submitted = asyncio.Event(), asyncio.Event()
    clients: list[Client] = []
    ids: list[str] = []
    following = [asyncio.create_task(follow(ready, clients, ids)) for _ in range(50)]
    await asyncio.wait_for(ready.wait(), TIMEOUT_S)
    ids.extend(await _submit(platform))
    submitted.set()
    received = await asyncio.gather(*following)

    assert all(f"task/{ids[0]}" in {e["subject"] for e in events} for events in received)


def _order(event_id: str) -> tuple[int, ...]:
    entry, _, index = event_id.partition(":")
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq), int(index)


async def _audited(outcome: str, principal: str, platform) -> bool:
    async with _rest(platform, "admin") as admin:
        after = 0
        found = False
        while True:
            page = (await admin.get("/v1/audit", params={"after_id": after, "limit": 1000})).json()
            found = found or any(
                e["action"] == "GET /v1/events"
                and e["outcome"] == outcome
                and e["principal"] == principal
                for e in page["items"]
            )
            if page["next_page_token"] is None:
                return found
            after = int(page["next_page_token"])
