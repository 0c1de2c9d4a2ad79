"""Job events on Redis: ``job.result()`` without polling, ``app.events()``, publishing only
while someone listens, resubscribing after a server restart, and Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

import conveyor
from conveyor import job as job_module
from conveyor.clock import SystemClock
from conveyor.engines.redis import events as hub_module
from conveyor.engines.redis.engine import RedisEngine
from conveyor.records import (
    Attempt,
    DeadLetter,
    EventKind,
    JobEvent,
    JobRecord,
    NewJob,
    Outcome,
    Release,
    State,
)
from tests.servers.redis_server import RedisServer, start_cluster

AOF = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


def new_job(job_id: str, queue: str = "q") -> NewJob:
    now = SystemClock().now()
    return NewJob(queue, job_id, "task", b"1", 0, now, now)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait (in the test, not in the code under test) until ``check()`` holds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


def count_reads(engine: Any) -> list[JobRecord | None]:
    """Wrap ``engine.get`` so every read of a job record is recorded."""
    reads: list[JobRecord | None] = []
    original = engine.get

    async def get(queue: str, job_id: str) -> JobRecord | None:
        record = await original(queue, job_id)
        reads.append(record)
        return record

    engine.get = get
    return reads


async def collect(
    stream: AsyncIterator[JobEvent], done: Callable[[list[JobEvent]], bool], timeout: float = 10
) -> list[JobEvent]:
    seen: list[JobEvent] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            seen.append(event)
            if done(seen):
                return seen
    return seen


@pytest.fixture
async def engine(redis_url: str) -> AsyncIterator[RedisEngine]:
    eng = RedisEngine.from_url(redis_url, SystemClock())
    await eng.connect()
    yield eng
    await eng.close()


# -- job.result() ---------------------------------------------------------------------------


async def test_result_waits_for_the_event_and_reads_the_job_at_most_twice(redis_url: str) -> None:
    app = conveyor.App(redis_url)
    release = asyncio.Event()

    @app.task(queue="q")
    async def slow(n: int) -> int:
        await release.wait()
        return n * 2

    handle = await slow.enqueue(21)
    reads = count_reads(await app.engine())
    worker = conveyor.Worker(app, concurrency=2)
    running = asyncio.create_task(worker.run())
    try:
        waiting = asyncio.create_task(handle.result(timeout=10))
        await asyncio.sleep(1.0)  # polling would have read the job about 8 times by now
        assert len(reads) == 1 and not waiting.done()
        release.set()
        assert await waiting == 42
        assert len(reads) == 2, reads  # once on subscribing, once on the completed event
    finally:
        worker.stop()
        await running
        await app.close()


async def test_result_of_a_finished_job_reads_it_once(redis_url: str) -> None:
    app = conveyor.App(redis_url)

    @app.task(queue="q", retries=0)
    async def fails() -> None:
        raise ValueError("no luck")

    @app.task(queue="q")
    async def works() -> str:
        return "ok"

    bad, good = await fails.enqueue(), await works.enqueue()
    await conveyor.testing.drain(app)
    reads = count_reads(await app.engine())
    assert await good.result(timeout=5) == "ok"
    with pytest.raises(conveyor.JobFailed, match="ValueError: no luck"):
        await bad.result(timeout=5)
    assert len(reads) == 2
    with pytest.raises(conveyor.JobNotFound):
        await conveyor.Job(app, "q", "no-such-job", task="").result(timeout=5)
    await app.close()


async def test_result_of_a_job_that_keeps_no_result_says_so(redis_url: str) -> None:
    app = conveyor.App(redis_url)
    release = asyncio.Event()

    @app.task(queue="q", keep_completed=conveyor.Keep(count=0))
    async def forget() -> int:
        await release.wait()
        return 1

    handle = await forget.enqueue()
    worker = conveyor.Worker(app)
    running = asyncio.create_task(worker.run())
    try:
        waiting = asyncio.create_task(handle.result(timeout=10))
        await asyncio.sleep(0.2)
        release.set()
        with pytest.raises(conveyor.JobNotFound, match="result was not kept"):
            await waiting
    finally:
        worker.stop()
        await running
        await app.close()


async def test_result_gets_a_completion_missed_while_the_server_was_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 mid-wait; the job completes after the restart but before the waiter has
    resubscribed, so no event reaches it: it must re-read the job once it has."""
    monkeypatch.setattr(hub_module, "RECONNECT_DELAYS", (2.0,))
    server = RedisServer(tmp_path, AOF).start()
    url = f"{server.url}?prefix=restart"
    app = conveyor.App(url)

    producer = conveyor.App(url)  # a second process, as far as Redis can tell

    async def double(n: int) -> int:
        return n * 2

    app.task(name="double", queue="q")(double)
    producer.task(name="double", queue="q")(double)
    try:
        handle = await app.tasks["double"].enqueue(21)
        reads = count_reads(await app.engine())
        waiting = asyncio.create_task(handle.result(timeout=30))

        async def read_once() -> bool:
            return len(reads) == 1

        await until(read_once)
        channel = (await app.engine())._k("q").events  # type: ignore[attr-defined]
        server.kill()
        server.start()
        # The hub waits 2 s before reconnecting; complete the job in that window.
        counts = await conveyor.testing.drain(producer)
        assert counts.completed == 1
        raw = Redis.from_url(server.url)
        try:
            ((_, listeners),) = await raw.pubsub_numsub(channel)
            assert listeners == 0  # nobody could have heard the completion
        finally:
            await raw.aclose()
        assert not waiting.done()
        assert await waiting == 42
        assert len(reads) == 2  # the first read, and the read after resubscribing
    finally:
        await app.close()
        await producer.close()
        server.stop()


async def test_result_survives_a_restart_while_the_job_runs(tmp_path: Path) -> None:
    """The worker and the waiter both ride out kill -9 and a restart (AOF always)."""
    server = RedisServer(tmp_path, AOF).start()
    app = conveyor.App(f"{server.url}?prefix=ride")
    release = asyncio.Event()

    @app.task(queue="q")
    async def work(n: int) -> int:
        await release.wait()
        return n + 1

    worker = conveyor.Worker(app, concurrency=2)
    running = asyncio.create_task(worker.run())
    try:
        handle = await work.enqueue(41)
        waiting = asyncio.create_task(handle.result(timeout=40))
        engine = await app.engine()

        async def active() -> bool:
            record = await engine.get("q", handle.id)
            return record is not None and record.state is State.ACTIVE

        await until(active)
        server.kill()
        await asyncio.sleep(0.5)
        server.start()
        release.set()  # the settle retries until the server is back
        assert await waiting == 42
    finally:
        worker.stop()
        await running
        await app.close()
        server.stop()


async def test_many_waiters_share_one_subscription(redis_url: str) -> None:
    app = conveyor.App(redis_url)

    @app.task(queue="q")
    async def square(n: int) -> int:
        await asyncio.sleep(0.01)
        return n * n

    handles = await square.enqueue_many(range(200))
    reads = count_reads(await app.engine())
    waits = [asyncio.create_task(h.result(timeout=20)) for h in handles]
    await asyncio.sleep(0.3)
    engine = await app.engine()
    raw = Redis.from_url(engine.options.redis_url)  # type: ignore[attr-defined]
    try:
        ((_, listeners),) = await raw.pubsub_numsub(engine._k("q").events)  # type: ignore[attr-defined]
        assert listeners == 1  # one connection for all 200 waiters
    finally:
        await raw.aclose()
    worker = conveyor.Worker(app, concurrency=20)
    running = asyncio.create_task(worker.run())
    try:
        assert await asyncio.gather(*waits) == [n * n for n in range(200)]
        assert len(reads) == 400
    finally:
        worker.stop()
        await running
        await app.close()


async def test_result_polls_on_an_engine_without_events(tmp_path: Path) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path / 'c.db'}")

    @app.task(queue="q")
    async def echo(s: str) -> str:
        return s

    handle = await echo.enqueue("hi")
    waiting = asyncio.create_task(handle.result(timeout=10))
    await conveyor.testing.drain(app)
    assert await waiting == "hi"
    with pytest.raises(conveyor.ConfigurationError, match="no event stream"):
        async for _ in app.events(["q"]):
            pass
    await app.close()


# -- app.events() ---------------------------------------------------------------------------


async def test_events_of_each_job_arrive_in_order(redis_url: str) -> None:
    app = conveyor.App(redis_url)

    @app.task(queue="q", retries=1, backoff=conveyor.Backoff.fixed(0))
    async def flaky(job: conveyor.Job[bool]) -> str:
        await job.progress(30)
        if not job.payload or job.attempts == 1:
            raise ValueError("boom")
        return "ok"

    stream = app.events(["q"])
    first = await anext(stream)
    assert first.kind is EventKind.SUBSCRIBED and first.queue == "q"
    good, bad = await flaky.enqueue(True), await flaky.enqueue(False)
    worker = conveyor.Worker(app, concurrency=4)
    running = asyncio.create_task(worker.run())
    try:
        finished = {good.id: False, bad.id: False}

        def both_done(seen: list[JobEvent]) -> bool:
            if seen[-1].finished:
                finished[seen[-1].job_id] = True
            return all(finished.values())

        seen = await collect(stream, both_done)
    finally:
        worker.stop()
        await running
        await stream.aclose()  # type: ignore[attr-defined]
        await app.close()

    def story(job_id: str) -> list[tuple[str, str | None, int, float | None]]:
        return [
            (e.kind.value, e.state and e.state.value, e.attempt, e.progress)
            for e in seen
            if e.job_id == job_id
        ]

    assert story(good.id) == [
        ("enqueued", "queued", 0, None),
        ("active", "active", 1, None),
        ("progress", "active", 1, 30.0),
        ("failed", "queued", 1, None),
        ("active", "active", 2, None),
        ("progress", "active", 2, 30.0),
        ("completed", "completed", 2, None),
    ]
    assert story(bad.id) == [
        ("enqueued", "queued", 0, None),
        ("active", "active", 1, None),
        ("progress", "active", 1, 30.0),
        ("failed", "queued", 1, None),
        ("active", "active", 2, None),
        ("progress", "active", 2, 30.0),
        ("dead", "dead", 2, None),
    ]
    assert all(e.queue == "q" and e.at is not None for e in seen[1:])


async def test_engine_events_cover_release_loss_redrive_and_scheduling(
    engine: RedisEngine,
) -> None:
    now = SystemClock().now()
    stream = engine.subscribe(["q"])
    assert (await anext(stream)).kind is EventKind.SUBSCRIBED
    await engine.enqueue([new_job("a"), NewJob("q", "later", "t", b"1", 0, now + 60, now)])
    (record,) = await engine.reserve(["q"], 1, 30, "w")
    assert await engine.settle([Release(record.lease)]) == [True]
    (record,) = await engine.reserve(["q"], 1, 0.05, "w")
    await asyncio.sleep(0.1)
    (again,) = await engine.reserve(["q"], 1, 30, "w")  # the first lease expired
    assert await engine.settle([DeadLetter(again.lease, _attempt())]) == [True]
    assert await engine.redrive("q", ["a"]) == 1
    seen = await collect(stream, lambda s: s[-1].kind is EventKind.REDRIVEN)
    await stream.aclose()
    assert [(e.kind.value, e.job_id, e.state) for e in seen] == [
        ("enqueued", "a", State.QUEUED),
        ("enqueued", "later", State.SCHEDULED),
        ("active", "a", State.ACTIVE),
        ("released", "a", State.QUEUED),
        ("active", "a", State.ACTIVE),
        ("lost", "a", State.QUEUED),
        ("active", "a", State.ACTIVE),
        ("dead", "a", State.DEAD),
        ("redriven", "a", State.QUEUED),
    ]


def _attempt() -> Attempt:
    return Attempt(1, Outcome.ERROR, "ValueError", "boom")


async def test_a_job_subscription_sees_only_its_job(engine: RedisEngine) -> None:
    mine = engine.subscribe(["q"], job_id="mine")
    everything = engine.subscribe(["q", "other"])
    assert (await anext(mine)).kind is EventKind.SUBSCRIBED
    markers = [await anext(everything), await anext(everything)]
    assert {(e.kind, e.queue) for e in markers} == {
        (EventKind.SUBSCRIBED, "q"),
        (EventKind.SUBSCRIBED, "other"),
    }
    await engine.enqueue([new_job("theirs"), new_job("mine"), new_job("x", "other")])
    assert (await anext(mine)).job_id == "mine"
    got = [(e.queue, e.job_id) for e in [await anext(everything) for _ in range(3)]]
    assert sorted(got) == [("other", "x"), ("q", "mine"), ("q", "theirs")]
    await engine.enqueue([new_job("theirs-2"), new_job("mine")])  # "mine" is a duplicate
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await anext(mine)
    await mine.aclose()
    await everything.aclose()


async def test_scripts_publish_only_while_someone_listens(engine: RedisEngine) -> None:
    channel = engine._k("q").events
    raw = Redis.from_url(engine.options.redis_url)
    spy = raw.pubsub()
    try:
        await spy.subscribe(channel)  # subscribed, but not announced as a listener
        assert (await spy.get_message(timeout=1))["type"] == "subscribe"  # type: ignore[index]
        await engine.enqueue([new_job("unheard")])
        assert await spy.get_message(timeout=0.3) is None
        assert await raw.exists(channel) == 0

        stream = engine.subscribe(["q"])
        assert (await anext(stream)).kind is EventKind.SUBSCRIBED
        ttl = await raw.pttl(channel)
        assert 0 < ttl <= hub_module.LISTEN_TTL * 1000
        await engine.enqueue([new_job("heard")])
        message = await spy.get_message(timeout=2)
        assert message is not None and b'"heard"' in message["data"]
        assert (await anext(stream)).job_id == "heard"
        await stream.aclose()
    finally:
        await spy.aclose()
        await raw.aclose()


async def test_a_consumer_that_falls_behind_is_told_to_reread(
    engine: RedisEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "BUFFER", 5)
    stream = engine.subscribe(["q"])
    assert (await anext(stream)).kind is EventKind.SUBSCRIBED
    await engine.enqueue([new_job(f"j{i}") for i in range(3)])
    await engine.enqueue([new_job(f"k{i}") for i in range(3)])  # the 6th event overflows
    await asyncio.sleep(0.3)
    first = await anext(stream)
    assert first.kind is EventKind.SUBSCRIBED  # the backlog was dropped: re-read
    await engine.enqueue([new_job("fresh")])
    assert (await anext(stream)).job_id == "fresh"
    await stream.aclose()


async def test_a_listening_key_renewed_too_late_is_announced_as_a_gap(
    engine: RedisEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "LISTEN_TTL", 0.3)
    monkeypatch.setattr(hub_module, "LISTEN_RENEW", 0.1)
    monkeypatch.setattr(hub_module, "RENEW_CHECK", 0.02)
    monkeypatch.setattr(hub_module, "TICK", 0.05)
    stream = engine.subscribe(["q"])
    assert (await anext(stream)).kind is EventKind.SUBSCRIBED
    await asyncio.sleep(0.5)  # renewed on time: no gap
    await engine.enqueue([new_job("on-time")])
    assert (await asyncio.wait_for(anext(stream), 2)).job_id == "on-time"
    time.sleep(0.5)  # a blocked event loop: the listening key expires meanwhile
    await engine.enqueue([new_job("unheard")])  # published to nobody: the key had expired
    event = await asyncio.wait_for(anext(stream), 2)
    assert event.kind is EventKind.SUBSCRIBED
    await engine.enqueue([new_job("heard")])
    assert (await asyncio.wait_for(anext(stream), 2)).job_id == "heard"
    await stream.aclose()


async def test_closing_the_engine_ends_waiting_subscribers(redis_url: str) -> None:
    engine = RedisEngine.from_url(redis_url, SystemClock())
    await engine.connect()
    stream = engine.subscribe(["q"])
    assert (await anext(stream)).kind is EventKind.SUBSCRIBED
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    await engine.close()
    with pytest.raises(conveyor.EngineUnavailable, match="closed"):
        await waiting
    await stream.aclose()


async def test_events_resume_after_a_restart_with_a_new_subscribed_event(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path).start()  # no persistence: the listening key goes too
    engine = RedisEngine.from_url(f"{server.url}?prefix=re", SystemClock())
    await engine.connect()
    stream = engine.subscribe(["q"])
    try:
        assert (await anext(stream)).kind is EventKind.SUBSCRIBED
        server.kill()
        server.start()
        again = await asyncio.wait_for(anext(stream), 15)
        assert again.kind is EventKind.SUBSCRIBED
        await engine.enqueue([new_job("after")])
        event = await asyncio.wait_for(anext(stream), 5)
        assert (event.kind, event.job_id) == (EventKind.ENQUEUED, "after")
    finally:
        await stream.aclose()
        await engine.close()
        server.stop()


# -- Redis Cluster --------------------------------------------------------------------------


async def test_cluster_events_for_queues_on_different_nodes(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path)
    url = f"redis://127.0.0.1:{nodes[0].port}/0?cluster=1&prefix=c{os.urandom(3).hex()}"
    try:
        engine = RedisEngine.from_url(url, SystemClock())
        await engine.connect()
        assert engine._sharded_events  # Redis 7: SPUBLISH/SSUBSCRIBE
        ranges = [(0, 5460), (5461, 10922), (10923, 16383)]

        def node_of(queue: str) -> int:
            slot = key_slot(engine._k(queue).events.encode())
            return next(i for i, (lo, hi) in enumerate(ranges) if lo <= slot <= hi)

        names = [f"queue-{i}" for i in range(50)]
        queues: list[str] = []
        for name in names:
            if node_of(name) not in {node_of(q) for q in queues}:
                queues.append(name)
        assert len(queues) == 3

        for sharded in (True, False):  # False: PUBLISH/SUBSCRIBE, as on Redis 6 clusters
            engine._sharded_events = sharded
            engine._hub = None
            stream = engine.subscribe(queues)
            markers = [await anext(stream) for _ in queues]
            assert {(e.kind, e.queue) for e in markers} == {
                (EventKind.SUBSCRIBED, q) for q in queues
            }
            await engine.enqueue([new_job(f"{q}-{sharded}", q) for q in queues])
            got = [await asyncio.wait_for(anext(stream), 5) for _ in queues]
            assert sorted((e.queue, e.job_id) for e in got) == sorted(
                (q, f"{q}-{sharded}") for q in queues
            )
            await stream.aclose()
            hub = engine._hub
            assert hub is not None
            assert len(hub.links) == (3 if sharded else 1)
            await hub.close()
        await engine.close()

        app = conveyor.App(url)

        @app.task(queue=queues[1])
        async def square(n: int) -> int:
            return n * n

        @app.task(queue=queues[2], retries=0)
        async def fail() -> None:
            raise RuntimeError("nope")

        one, two = await square.enqueue(7), await fail.enqueue()
        reads = count_reads(await app.engine())
        waits = [
            asyncio.create_task(one.result(timeout=10)),
            asyncio.create_task(two.result(timeout=10)),
        ]
        await asyncio.sleep(0.3)
        await conveyor.testing.drain(app)
        assert await waits[0] == 49
        with pytest.raises(conveyor.JobFailed, match="nope"):
            await waits[1]
        assert len(reads) == 4
        await app.close()
    finally:
        for node in nodes:
            node.stop()


async def test_cluster_events_resume_after_a_node_restarts(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path)
    url = f"redis://127.0.0.1:{nodes[0].port}/0?cluster=1&prefix=n{os.urandom(3).hex()}"
    engine = RedisEngine.from_url(url, SystemClock())
    try:
        await engine.connect()
        channel = engine._k("q").events
        slot = key_slot(channel.encode())
        owner = next(n for n in nodes if slot in _slots(n))
        stream = engine.subscribe(["q"])
        assert (await anext(stream)).kind is EventKind.SUBSCRIBED
        owner.kill()
        owner.start()  # same port and nodes.conf: it takes its slots back
        again = await asyncio.wait_for(anext(stream), 30)
        assert again.kind is EventKind.SUBSCRIBED

        async def enqueued() -> bool:
            with contextlib.suppress(conveyor.EngineUnavailable):
                await engine.enqueue([new_job("back")])
                return True
            return False

        await until(enqueued, 20)
        event = await asyncio.wait_for(anext(stream), 5)
        assert (event.kind, event.job_id) == (EventKind.ENQUEUED, "back")
        await stream.aclose()
    finally:
        await engine.close()
        for node in nodes:
            node.stop()


def _slots(node: RedisServer) -> set[int]:
    out: set[int] = set()
    myself = node.cli("CLUSTER", "MYID").strip()
    for line in node.cli("CLUSTER", "NODES").splitlines():
        fields = line.split()
        if fields and fields[0] == myself:
            for part in fields[8:]:
                if "-" in part and not part.startswith("["):
                    lo, hi = part.split("-")
                    out.update(range(int(lo), int(hi) + 1))
                elif part.isdigit():
                    out.add(int(part))
    return out


# -- ACLs -----------------------------------------------------------------------------------


async def test_result_works_when_an_acl_refuses_the_event_channels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis 7 users get no channels unless granted: a waiter that may not subscribe falls
    back to polling, and one whose workers may not publish re-reads every RESULT_RECHECK."""
    monkeypatch.setattr(job_module, "RESULT_RECHECK", 0.5)
    server = RedisServer(tmp_path).start()
    grants = ("on", "~ev:*", "+@all", "-config")
    server.cli("ACL", "SETUSER", "deaf", ">pw", *grants, "resetchannels")
    server.cli("ACL", "SETUSER", "ears", ">pw", *grants, "resetchannels", "&ev:*")
    base = f"127.0.0.1:{server.port}/0?prefix=ev"

    async def double(n: int) -> int:
        return n * 2

    apps = {user: conveyor.App(f"redis://{user}:pw@{base}") for user in ("deaf", "ears")}
    for app in apps.values():
        app.task(name="double", queue="q")(double)
    try:
        # The waiter may not subscribe: it polls, and says why once.
        handle = await apps["deaf"].tasks["double"].enqueue(1)
        with caplog.at_level(logging.WARNING, "conveyor.engines.redis"):
            waiting = asyncio.create_task(handle.result(timeout=10))
            await asyncio.sleep(0.2)
            await conveyor.testing.drain(apps["deaf"])
            assert await waiting == 2
        assert "&ev:*" in caplog.text

        # The waiter hears, but the workers may not publish: the safety re-check finds it.
        handle = await apps["ears"].tasks["double"].enqueue(2)
        reads = count_reads(await apps["ears"].engine())
        waiting = asyncio.create_task(handle.result(timeout=10))
        await asyncio.sleep(0.2)
        await conveyor.testing.drain(apps["deaf"])
        assert await waiting == 4
        assert 2 <= len(reads) <= 4
    finally:
        for app in apps.values():
            await app.close()
        server.stop()
