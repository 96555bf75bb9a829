"""Payloads and results at rest: sealed in Postgres, in the Redis cache and in a workflow
step's end event, plaintext at the API, rotated to a new key without downtime, and a clear
error (never the data) when a value cannot be opened."""

import asyncio
import json
import stat
import uuid
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import redis.asyncio as redis

from agentry.events.v1 import events_pb2
from agentry.tasks.v1 import tasks_pb2
from libs.common.crypto import (
    Keyring,
    Undecryptable,
    add_key,
    generate_key_file,
    remove_key,
    use_key,
)
from libs.common.events import sealed_result_aad
from libs.common.redis_client import Keys
from services.task_agent.changes import RESULT_IN_EVENT_BYTES
from services.task_agent.key_rotation import rotate
from tests.integration.conftest import MakeAgent
from tests.integration.task_client import spec, stub_for, submit, terminal, until

S = tasks_pb2
SECRET = "4111-1111-1111-1111"
QUICK_RETRY = S.RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02)


@pytest.fixture
def data_keys(tmp_path: Path) -> Path:
    """A key file of this test's own: rotation tests change it."""
    path = tmp_path / "data-keys.json"
    generate_key_file(path)
    return path


async def _stored(database_url: str) -> dict[str, tuple[bytes, bytes | None]]:
    """Every task's payload and result as Postgres holds them, by task id."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (await conn.execute("SELECT id, payload, result FROM tasks.tasks")).fetchall()
    return {str(task_id): (payload, result) for task_id, payload, result in rows}


def _values(stored: dict[str, tuple[bytes, bytes | None]]) -> list[bytes]:
    return [value for pair in stored.values() for value in pair if value is not None]


async def _succeeded_events(
    redis_url: str, prefix: str, task_ids: list[str], within: float = 5.0
) -> dict[str, tuple[events_pb2.Event, bytes]]:
    """The task.succeeded event of each task, awaited on the durable event stream, with the
    stream entry that holds it as Redis stores it."""
    subjects = {f"task/{task_id}": task_id for task_id in task_ids}
    found: dict[str, tuple[events_pb2.Event, bytes]] = {}
    stream = Keys(prefix).event_stream()
    client = redis.Redis.from_url(redis_url)
    last = b"0-0"
    try:
        async with asyncio.timeout(within):
            while len(found) < len(task_ids):
                reply: Any = await client.xread({stream: last}, block=100)
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last, entry = entry_id, fields[b"e"]
                        for event in events_pb2.EventBatch.FromString(entry).events:
                            if event.type == "task.succeeded" and event.subject in subjects:
                                found[subjects[event.subject]] = (event, entry)
    finally:
        await client.aclose()
    return found


async def test_a_payload_and_its_result_are_ciphertext_at_rest_and_plaintext_at_the_api(
    make_task_agent: MakeAgent, data_keys: Path, redis_url: str, redis_prefix: str
) -> None:
    agent = await make_task_agent(data_keys_file=data_keys)
    payload = {"card": SECRET}
    async with stub_for(agent) as stub:
        done = await until(stub, (await submit(stub, "echo", payload)).id, terminal)

    assert done.state == S.TASK_STATE_SUCCEEDED
    assert json.loads(done.payload) == payload
    assert json.loads(done.result) == payload
    stored_payload, stored_result = (await _stored(agent.settings.database_url))[done.id]
    assert stored_result is not None
    for value in (stored_payload, stored_result):
        assert value.startswith(agent.keyring.write_prefix)
        assert SECRET.encode() not in value
    client = redis.Redis.from_url(redis_url)
    cached = await client.get(Keys(redis_prefix).task_cache(done.id))
    await client.aclose()
    assert cached is not None and b'"state":"SUCCEEDED"' in cached
    assert SECRET.encode() not in cached


async def test_a_workflow_steps_end_event_carries_its_result_sealed_to_the_task(
    make_task_agent: MakeAgent, data_keys: Path, redis_url: str, redis_prefix: str
) -> None:
    agent = await make_task_agent(data_keys_file=data_keys)
    payload = {"card": SECRET}
    async with stub_for(agent) as stub:
        task = await submit(stub, "echo", payload, labels={"run": str(uuid.uuid4())})
        [(event, entry)] = (await _succeeded_events(redis_url, redis_prefix, [task.id])).values()
        done = (await stub.GetTask(S.GetTaskRequest(task_id=task.id))).task

    assert event.sealed_result.startswith(agent.keyring.write_prefix)
    assert SECRET.encode() not in entry
    opened = agent.keyring.decrypt(event.sealed_result, sealed_result_aad(uuid.UUID(task.id)))
    assert opened == done.result
    assert json.loads(opened) == payload
    # Bound to its task: moved to another task's event, it does not open.
    with pytest.raises(Undecryptable):
        agent.keyring.decrypt(event.sealed_result, sealed_result_aad(uuid.uuid4()))


async def test_only_a_workflow_steps_result_of_at_most_8_kib_rides_in_its_end_event(
    make_task_agent: MakeAgent, redis_url: str, redis_prefix: str
) -> None:
    agent = await make_task_agent()
    run = {"run": str(uuid.uuid4())}
    # An echoed string's result is the string in quotes: two bytes more than it.
    specs = {
        "not a step": spec("echo", "small"),
        "at the limit": spec("echo", "x" * (RESULT_IN_EVENT_BYTES - 2), labels=run),
        "over it": spec("echo", "x" * (RESULT_IN_EVENT_BYTES - 1), labels=run),
    }
    async with stub_for(agent) as stub:
        batch = await stub.SubmitTasks(S.SubmitTasksRequest(tasks=list(specs.values())))
        ids = [task.id for task in batch.tasks]
        ends = await _succeeded_events(redis_url, redis_prefix, ids)
        done = [await until(stub, task_id, terminal) for task_id in ids]

    assert [len(task.result) for task in done[1:]] == [
        RESULT_IN_EVENT_BYTES,
        RESULT_IN_EVENT_BYTES + 1,
    ]
    carried = {
        name: bool(ends[task_id][0].sealed_result) for name, task_id in zip(specs, ids, strict=True)
    }
    assert carried == {"not a step": False, "at the limit": True, "over it": False}


async def test_every_path_that_stores_a_payload_seals_it(
    make_task_agent: MakeAgent, data_keys: Path
) -> None:
    agent = await make_task_agent(data_keys_file=data_keys)
    async with stub_for(agent) as stub:
        batch = await stub.SubmitTasks(
            S.SubmitTasksRequest(tasks=[spec("echo", {"n": n, "card": SECRET}) for n in range(3)])
        )
        with_fallback = await submit(
            stub, "fail", {"times": 5, "card": SECRET}, retry=QUICK_RETRY, fallback_type="echo"
        )
        dead = await submit(stub, "fail", {"times": 5, "card": SECRET}, retry=QUICK_RETRY)
        for task in [*batch.tasks, with_fallback, dead]:
            await until(stub, task.id, terminal)
        [letter] = (await stub.ListDeadLetters(S.ListDeadLettersRequest())).dead_letters
        assert json.loads(letter.task.payload) == {"times": 5, "card": SECRET}
        edited = json.dumps({"times": 0, "card": SECRET}).encode()
        redriven = await stub.RedriveDeadLetter(
            S.RedriveDeadLetterRequest(dead_letter_id=letter.id, payload=edited)
        )
        done = await until(stub, redriven.task.id, terminal)

    assert done.payload == edited
    stored = await _stored(agent.settings.database_url)
    # The batch, the failed task and its fallback, the dead letter and its redrive.
    assert len(stored) == 7
    for value in _values(stored):
        assert value.startswith(agent.keyring.write_prefix)
        assert SECRET.encode() not in value


async def test_rotation_reseals_every_value_under_the_new_key_and_the_old_key_can_go(
    make_task_agent: MakeAgent, data_keys: Path
) -> None:
    # Written while encryption was off: plaintext, which rotation seals too.
    plain = await make_task_agent(data_keys_file=None, encryption_disabled=True)
    async with stub_for(plain) as stub:
        first = await until(stub, (await submit(stub, "echo", {"n": 1})).id, terminal)
    await plain.stop()
    agent = await make_task_agent(data_keys_file=data_keys)
    old_key = agent.keyring.write_key_id
    async with stub_for(agent) as stub:
        second = await until(stub, (await submit(stub, "echo", {"n": 2})).id, terminal)
        parked = await submit(stub, "echo", {"n": 3}, queue="served-by-nobody")
    before = await _stored(agent.settings.database_url)
    assert before[first.id] == (b'{"n": 1}', b'{"n":1}')

    new_key = add_key(data_keys)
    use_key(data_keys, new_key)
    keyring = Keyring.from_file(data_keys)
    rewritten = await rotate(agent.settings.database_url, keyring, batch_size=2)

    # Two tasks with a payload and a result, one with a payload only.
    assert rewritten == 5
    assert await rotate(agent.settings.database_url, keyring, batch_size=2) == 0
    after = await _stored(agent.settings.database_url)
    assert all(value.startswith(keyring.write_prefix) for value in _values(after))
    assert keyring.write_key_id == new_key != old_key

    await agent.stop()
    assert old_key is not None
    remove_key(data_keys, old_key)
    assert Keyring.from_file(data_keys).key_ids == [new_key]
    rotated = await make_task_agent(data_keys_file=data_keys)
    async with stub_for(rotated) as stub:
        # The cache still holds copies sealed with the old key: read as misses.
        read = [(await stub.GetTask(S.GetTaskRequest(task_id=t.id))).task for t in (first, second)]
        listed = (await stub.ListTasks(S.ListTasksRequest())).tasks

    assert [json.loads(t.payload) for t in read] == [{"n": 1}, {"n": 2}]
    assert [json.loads(t.result) for t in read] == [{"n": 1}, {"n": 2}]
    assert {t.id: json.loads(t.payload)["n"] for t in listed} == {
        first.id: 1,
        second.id: 2,
        parked.id: 3,
    }


async def test_a_value_under_a_key_the_agent_does_not_hold_is_a_clear_error(
    make_task_agent: MakeAgent, data_keys: Path, tmp_path: Path
) -> None:
    writer = await make_task_agent(data_keys_file=data_keys)
    async with stub_for(writer) as stub:
        task = await until(stub, (await submit(stub, "echo", {"card": SECRET})).id, terminal)
    other_keys = tmp_path / "other-keys.json"
    generate_key_file(other_keys)
    reader = await make_task_agent(data_keys_file=other_keys)

    async with stub_for(reader) as stub:
        for call in (
            stub.GetTask(S.GetTaskRequest(task_id=task.id)),
            stub.ListTasks(S.ListTasksRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert repr(writer.keyring.write_key_id) in (refused.value.details() or "")
            assert SECRET not in (refused.value.details() or "")


async def test_a_ciphertext_moved_to_another_row_does_not_open(
    make_task_agent: MakeAgent, data_keys: Path
) -> None:
    agent = await make_task_agent(data_keys_file=data_keys)
    async with stub_for(agent) as stub:
        victim = await submit(stub, "echo", {"owner": "victim"}, queue="served-by-nobody")
        thief = await submit(stub, "echo", {"owner": "thief"}, queue="served-by-nobody")
        async with await psycopg.AsyncConnection.connect(agent.settings.database_url) as conn:
            await conn.execute(
                "UPDATE tasks.tasks SET payload = (SELECT payload FROM tasks.tasks WHERE id = %s)"
                " WHERE id = %s",
                [uuid.UUID(victim.id), uuid.UUID(thief.id)],
            )
        await agent.changes.cache.forget(uuid.UUID(thief.id))

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetTask(S.GetTaskRequest(task_id=thief.id))

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "integrity" in (refused.value.details() or "")
    assert "victim" not in (refused.value.details() or "")


# The key file


def test_a_new_key_file_is_private_and_holds_one_write_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "data-keys.json"

    kid = generate_key_file(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keyring = Keyring.from_file(path)
    assert keyring.key_ids == [kid] and keyring.write_key_id == kid
    with pytest.raises(FileExistsError):
        generate_key_file(path)


def test_an_added_key_reads_then_writes_and_the_older_ones_still_read(tmp_path: Path) -> None:
    path = tmp_path / "data-keys.json"
    old = generate_key_file(path)
    sealed = Keyring.from_file(path).encrypt(b'{"n": 1}', b"aad")

    new = add_key(path)
    # Added for reading only, until every process holds it.
    assert Keyring.from_file(path).write_key_id == old
    use_key(path, new)

    keyring = Keyring.from_file(path)
    assert keyring.write_key_id == new and keyring.key_ids == sorted([old, new])
    assert keyring.decrypt(sealed, b"aad") == b'{"n": 1}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="is the write key"):
        remove_key(path, new)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{", "not valid JSON"),
        (b'{"write": "k1", "keys": {"k1": "%%%"}}', "'k1' is not base64"),
        (b'{"write": "k2", "keys": {"k1": "AAAA"}}', '"write" does not name'),
        (b'{"write": "k1", "keys": {"k1": "AAAA"}}', "not 32 bytes"),
    ],
)
def test_a_malformed_key_file_is_refused_without_showing_its_keys(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "data-keys.json"
    path.write_bytes(content)

    with pytest.raises(ValueError, match=problem) as refused:
        Keyring.from_file(path)

    assert "AAAA" not in str(refused.value)
