"""Redis-specific guarantees: what the Lua scripts promise, the eviction-policy guard, the
blocking wake-up, Redis Cluster, and surviving a server crash with AOF."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

import conveyor
from conveyor.clock import ManualClock, SystemClock
from conveyor.engines.redis.engine import RedisEngine
from conveyor.engines.redis.keys import QueueKeys
from conveyor.engines.redis.scripts import scripts
from conveyor.records import Attempt, Complete, DeadLetter, NewJob, Outcome, Release, Retry, State
from conveyor.testing import drain
from tests.servers import free_port
from tests.servers.redis_server import EPHEMERAL, RedisServer, start_cluster

T0 = 1_700_000_000.0


def job(job_id: str, queue: str = "q", priority: int = 0, run_at: float = T0) -> NewJob:
    return NewJob(queue, job_id, "task", b'"payload"', priority, run_at, T0)


def failure(number: int) -> Attempt:
    return Attempt(number, Outcome.ERROR, "ValueError", "boom")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def engine(redis_url: str, clock: ManualClock) -> AsyncIterator[RedisEngine]:
    eng = RedisEngine.from_url(redis_url, clock)
    await eng.connect()
    yield eng
    await eng.close()


async def raw(engine: RedisEngine) -> Redis:
    return Redis.from_url(engine.options.redis_url)


# -- URL and keys ---------------------------------------------------------------------------


def test_url_options_are_parsed_and_unknown_ones_refused() -> None:
    clock = SystemClock()
    eng = RedisEngine.from_url(
        "rediss://app:s3cret@cache:6380/2?prefix=jobs&socket_timeout=3&ssl_cert_reqs=none", clock
    )
    assert eng.prefix == "jobs" and eng.options.connection["socket_timeout"] == 3.0
    assert eng.options.redis_url == "rediss://app:s3cret@cache:6380/2"
    assert "s3cret" not in repr(eng) and "s3cret" not in eng.options.safe_url
    for bad in (
        "redis://h/0?pool=3",
        "redis://:s3cret@h/0?prefix=a{b}",
        "redis://h/0?ssl_cert_reqs=none",  # TLS options need rediss://
        "redis://:s3cret@h/3?cluster=1",  # a cluster has database 0 only
        "redis://h/0?allow_eviction=maybe",
    ):
        with pytest.raises(conveyor.ConfigurationError) as info:
            RedisEngine.from_url(bad, clock)
        assert "s3cret" not in str(info.value)


def test_every_key_of_a_queue_is_in_one_cluster_slot() -> None:
    for queue in ("images", "a}b", "{x}", "émails"):
        slots = {key_slot(key.encode()) for key in QueueKeys.build("conveyor", queue).all}
        assert len(slots) == 1, queue
    first = QueueKeys.build("conveyor", "images").jobs
    assert key_slot(first.encode()) != key_slot(QueueKeys.build("conveyor", "emails").jobs.encode())


def test_scripts_are_separate_lua_files_sharing_one_prelude() -> None:
    loaded = scripts()
    assert {"enqueue", "reserve", "settle", "extend", "redrive", "trim"} <= set(loaded)
    assert all(s.source.startswith("-- Shared prelude") for s in loaded.values())
    assert len({s.sha for s in loaded.values()}) == len(loaded)


# -- what the scripts promise ---------------------------------------------------------------


async def test_duplicate_ids_are_refused_within_and_across_batches(engine: RedisEngine) -> None:
    assert await engine.enqueue([job("a"), job("b"), job("a")]) == [True, True, False]
    changed = NewJob("q", "a", "other", b"1", 9, T0, T0)
    assert await engine.enqueue([changed]) == [False]
    record = await engine.get("q", "a")
    assert record is not None and record.task == "task" and record.priority == 0


async def test_reserve_orders_by_priority_then_due_time_then_enqueue_order(
    engine: RedisEngine,
) -> None:
    await engine.enqueue(
        [
            job("low-old", priority=0, run_at=T0 - 10),
            job("low-new", priority=0, run_at=T0),
            job("high", priority=5, run_at=T0),
            job("neg", priority=-1, run_at=T0 - 100),
            job("same-time-1", priority=0, run_at=T0),
        ]
    )
    got = [r.id for r in await engine.reserve(["q"], 10, 30, "w")]
    assert got == ["high", "low-old", "low-new", "same-time-1", "neg"]


async def test_reserve_across_queues_merges_by_priority(engine: RedisEngine) -> None:
    await engine.enqueue([job("a1", "a", 1), job("b5", "b", 5), job("a9", "a", 9), job("b0", "b")])
    got = [(r.queue, r.id) for r in await engine.reserve(["a", "b"], 3, 30, "w")]
    assert got == [("a", "a9"), ("b", "b5"), ("a", "a1")]


async def test_scheduled_job_is_promoted_when_due(engine: RedisEngine, clock: ManualClock) -> None:
    await engine.enqueue([job("later", run_at=T0 + 60)])
    assert await engine.reserve(["q"], 10, 30, "w") == []
    assert [r.id for r in await engine.list_jobs("q", State.SCHEDULED)] == ["later"]
    clock.advance(60)
    assert [r.id for r in await engine.list_jobs("q", State.QUEUED)] == ["later"]
    (record,) = await engine.reserve(["q"], 10, 30, "w")
    assert record.id == "later" and record.state is State.ACTIVE and record.attempts == 1


async def test_expired_lease_is_reclaimed_with_its_attempt_counted(
    engine: RedisEngine, clock: ManualClock
) -> None:
    await engine.enqueue([job("j")])
    (first,) = await engine.reserve(["q"], 1, 30, "dies")
    clock.advance(29)
    assert await engine.reserve(["q"], 1, 30, "other") == []
    clock.advance(1)
    (second,) = await engine.reserve(["q"], 1, 30, "other")
    assert second.attempts == 2 and second.worker == "other"
    assert second.lease_token != first.lease_token
    assert await engine.settle([Release(second.lease)]) == [True]
    record = await engine.get("q", "j")
    assert record is not None and record.attempts == 1 and record.state is State.QUEUED


async def test_stale_token_changes_nothing(engine: RedisEngine, clock: ManualClock) -> None:
    await engine.enqueue([job("j")])
    (first,) = await engine.reserve(["q"], 1, 30, "a")
    clock.advance(31)
    (second,) = await engine.reserve(["q"], 1, 30, "b")
    stale = [
        Complete(first.lease, b"x"),
        Retry(first.lease, T0 + 99, failure(1)),
        DeadLetter(first.lease, failure(1)),
        Release(first.lease),
    ]
    assert await engine.settle(stale) == [False] * 4
    assert await engine.report(first.lease, progress=50, log="no") is False
    record = await engine.get("q", "j")
    assert record is not None and record.state is State.ACTIVE
    assert record.lease_token == second.lease_token and record.failures == []
    assert record.logs == [] and record.progress == 0


async def test_settlement_replayed_by_a_reconnect_is_not_a_lost_lease(
    engine: RedisEngine,
) -> None:
    """redis-py resends a command whose reply a dropped connection lost; the script knows
    its own call id and answers the same, while any other settle of that lease is refused."""
    await engine.enqueue([job("j")])
    (record,) = await engine.reserve(["q"], 1, 30, "w")
    k = engine._k("q")
    script = scripts()["settle"]
    args = (T0, "call-1:", "c", "j", record.lease_token, b"done", "")
    assert await engine._run.run(script, k.settle, args) == [1]
    assert await engine._run.run(script, k.settle, args) == [1]  # the replay
    assert await engine.settle([Complete(record.lease, b"again")]) == [False]
    again = await engine.get("q", "j")
    assert again is not None and again.result == b"done"


async def test_failures_and_logs_are_appended_as_json_records(
    engine: RedisEngine, clock: ManualClock
) -> None:
    await engine.enqueue([job("j")])
    (r1,) = await engine.reserve(["q"], 1, 30, "w")
    assert await engine.report(r1.lease, progress=12.5, log="one")
    assert await engine.report(r1.lease, log="two")
    assert await engine.settle([Retry(r1.lease, T0 + 5, failure(1))]) == [True]
    clock.advance(5)
    (r2,) = await engine.reserve(["q"], 1, 30, "w")
    assert r2.progress == 12.5 and [line.message for line in r2.logs] == ["one", "two"]
    assert await engine.settle([DeadLetter(r2.lease, failure(2))]) == [True]
    dead = await engine.get("q", "j")
    assert dead is not None and dead.state is State.DEAD and dead.finished_at == T0 + 5
    assert [a.number for a in dead.failures] == [1, 2]
    assert dead.failures[0].to_dict() == failure(1).to_dict()


async def test_redrive_resets_attempts_keeps_failures_and_counts_rounds(
    engine: RedisEngine,
) -> None:
    await engine.enqueue([NewJob("q", "j", "t", b"1", 0, T0, T0, {"retries": 0, "x": [1, 2]})])
    for round_ in (1, 2):
        (r,) = await engine.reserve(["q"], 1, 30, "w")
        assert await engine.settle([DeadLetter(r.lease, failure(1))]) == [True]
        assert await engine.redrive("q", ["j", "missing"]) == 1
        record = await engine.get("q", "j")
        assert record is not None and record.state is State.QUEUED and record.attempts == 0
        assert record.options == {"retries": 0, "x": [1, 2], "redriven": round_}
        assert len(record.failures) == round_
    assert await engine.redrive("q", ["j"]) == 0  # not dead any more


async def test_delete_skips_active_jobs_and_trim_keeps_the_newest(
    engine: RedisEngine, clock: ManualClock
) -> None:
    await engine.enqueue([job(f"j{i}") for i in range(5)] + [job("sched", run_at=T0 + 99)])
    for _ in range(4):
        (r,) = await engine.reserve(["q"], 1, 30, "w")
        assert await engine.settle([Complete(r.lease, b"ok")]) == [True]
        clock.advance(1)
    (active,) = await engine.reserve(["q"], 1, 30, "w")
    assert await engine.delete("q", [active.id, "sched"]) == 1
    assert await engine.trim("q", "task", keep=3, older_than=None) == 1
    assert await engine.trim("q", "task", keep=None, older_than=T0 + 2) == 1
    done = await engine.list_jobs("q", State.COMPLETED)
    assert [r.id for r in done] == ["j3", "j2"]  # newest first
    (stats,) = await engine.stats()
    assert stats.counts[State.COMPLETED] == 2 and stats.counts[State.ACTIVE] == 1
    assert stats.counts[State.SCHEDULED] == 0


async def test_trim_works_off_a_backlog_in_bounded_batches(
    engine: RedisEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("conveyor.engines.redis.engine.TRIM_BATCH", 2)
    await engine.enqueue([job(f"j{i}") for i in range(5)])
    leased = await engine.reserve(["q"], 5, 30, "w")
    assert await engine.settle([Complete(r.lease, b"ok") for r in leased]) == [True] * 5
    assert [await engine.trim("q", "task", keep=0, older_than=None) for _ in range(4)] == [
        2,
        2,
        1,
        0,
    ]
    assert await engine.list_jobs("q", State.COMPLETED) == []


async def test_wake_tokens_are_bounded_and_dropped_once_nothing_is_due(
    engine: RedisEngine,
) -> None:
    await engine.enqueue([job(f"j{i}") for i in range(1000)])
    client = await raw(engine)
    try:
        wake = engine._k("q").wake
        assert 0 < await client.llen(wake) <= 32
        while await engine.reserve(["q"], 400, 30, "w"):
            pass
        assert await client.exists(wake) == 0
    finally:
        await client.aclose()


async def test_scripts_are_reloaded_after_script_flush(engine: RedisEngine) -> None:
    client = await raw(engine)
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    assert await engine.enqueue([job("a"), job("b", "other")]) == [True, True]
    assert len(await engine.reserve(["q"], 5, 30, "w")) == 1


# -- blocking wake-up -----------------------------------------------------------------------


async def test_wait_blocks_then_wakes_at_once_on_enqueue(redis_url: str) -> None:
    waiter = RedisEngine.from_url(redis_url, SystemClock())
    producer = RedisEngine.from_url(redis_url, SystemClock())
    await waiter.connect()
    await producer.connect()
    try:
        began = time.monotonic()
        await waiter.wait(["q"], 0.3)
        assert time.monotonic() - began >= 0.25  # nothing due: it blocked, not spun

        async def enqueue_soon() -> float:
            await asyncio.sleep(0.2)
            now = SystemClock().now()
            await producer.enqueue([NewJob("q", "j", "t", b"1", 0, now, now)])
            return time.monotonic()

        sent = asyncio.create_task(enqueue_soon())
        await waiter.wait(["q"], 10)
        woke = time.monotonic()
        assert woke - await sent < 0.5
    finally:
        await waiter.close()
        await producer.close()


async def test_wait_is_bounded_by_the_next_scheduled_job(redis_url: str) -> None:
    engine = RedisEngine.from_url(redis_url, SystemClock())
    await engine.connect()
    try:
        now = SystemClock().now()
        await engine.enqueue([NewJob("q", "j", "t", b"1", 0, now + 0.4, now)])
        assert await engine.reserve(["q"], 1, 30, "w") == []
        await engine.wait(["q"], 0.01)  # consumes the token the scheduled enqueue pushed
        began = time.monotonic()
        await engine.wait(["q"], 10)
        assert 0.2 <= time.monotonic() - began < 3
        assert len(await engine.reserve(["q"], 1, 30, "w")) == 1
    finally:
        await engine.close()


async def test_idle_worker_starts_a_new_job_within_milliseconds(redis_url: str) -> None:
    app = conveyor.App(redis_url)
    started: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    @app.task
    async def ping() -> None:
        if not started.done():
            started.set_result(time.monotonic())

    worker = conveyor.Worker(app, concurrency=2, idle_wait=5.0)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)  # the worker is idle, blocked in BLPOP
        sent = time.monotonic()
        await ping.enqueue()
        latency = await asyncio.wait_for(started, 5) - sent
        assert latency < 0.25, f"enqueue -> start took {latency * 1000:.1f} ms"
    finally:
        worker.stop()
        await running
        await app.close()


# -- server configuration -------------------------------------------------------------------


async def test_evicting_server_is_refused_unless_allowed(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, [*EPHEMERAL, "--maxmemory-policy", "allkeys-lru"]).start()
    try:
        engine = RedisEngine.from_url(server.url, SystemClock())
        with pytest.raises(conveyor.ConfigurationError, match=r"allkeys-lru.*noeviction"):
            await engine.connect()
        allowed = RedisEngine.from_url(f"{server.url}?allow_eviction=1", SystemClock())
        await allowed.connect()
        assert await allowed.enqueue([job("j")]) == [True]
        await allowed.close()
    finally:
        server.stop()


async def test_acl_user_without_config_rights_connects_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path).start()
    try:
        server.cli("ACL", "SETUSER", "app", "on", ">s3cret-pw", "~*", "&*", "+@all", "-config")
        url = f"redis://app:s3cret-pw@127.0.0.1:{server.port}/0"
        engine = RedisEngine.from_url(url, SystemClock())
        with caplog.at_level(logging.WARNING, "conveyor.engines.redis"):
            await engine.connect()
        assert "maxmemory-policy" in caplog.text and "s3cret-pw" not in caplog.text
        assert await engine.enqueue([job("j")]) == [True]
        await engine.close()
        wrong = RedisEngine.from_url(url.replace("s3cret-pw", "wr0ng-pw"), SystemClock())
        with pytest.raises(conveyor.EngineUnavailable) as info:
            await wrong.connect()
        assert "wr0ng-pw" not in str(info.value)
    finally:
        server.stop()


async def test_unreachable_server_is_a_clear_error_without_the_password() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5"
    engine = RedisEngine.from_url(url, SystemClock())
    with pytest.raises(conveyor.EngineUnavailable) as info:
        await engine.connect()
    assert "hunter2" not in str(info.value) and "127.0.0.1" in str(info.value)


# -- Redis Cluster --------------------------------------------------------------------------


async def test_cluster_runs_jobs_in_queues_on_different_nodes(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path)
    clock = ManualClock(T0)
    url = f"redis://127.0.0.1:{nodes[0].port}/0?cluster=1&prefix=c{os.urandom(3).hex()}"
    try:
        engine = RedisEngine.from_url(url, clock)
        await engine.connect()
        ranges = [(0, 5460), (5461, 10922), (10923, 16383)]

        def node_of(queue: str) -> int:
            slot = key_slot(engine._k(queue).jobs.encode())
            return next(i for i, (lo, hi) in enumerate(ranges) if lo <= slot <= hi)

        names = [f"queue-{i}" for i in range(50)]
        a = names[0]
        b = next(n for n in names if node_of(n) != node_of(a))
        c = next(n for n in names if node_of(n) not in (node_of(a), node_of(b)))
        queues = [a, b, c]

        created = await engine.enqueue(
            [job(f"{q}-{i}", q, run_at=T0) for q in queues for i in (1, 2)]
        )
        assert created == [True] * 6
        assert await engine.enqueue([job(f"{a}-1", a)]) == [False]
        leased = await engine.reserve(queues, 10, 30, "w")
        assert sorted(r.id for r in leased) == sorted(f"{q}-{i}" for q in queues for i in (1, 2))
        by_id = {r.id: r for r in leased}
        for node in nodes:  # as after a restart or failover: the pipeline reloads them
            node.cli("SCRIPT", "FLUSH")
        outcome = await engine.settle(
            [
                Complete(by_id[f"{a}-1"].lease, b"ok"),
                Retry(by_id[f"{b}-1"].lease, T0 + 10, failure(1)),
                DeadLetter(by_id[f"{c}-1"].lease, failure(1)),
                Release(by_id[f"{c}-2"].lease),
                Complete(by_id[f"{a}-2"].lease, None, keep=False),
                DeadLetter(by_id[f"{b}-2"].lease, failure(1)),
            ]
        )
        assert outcome == [True] * 6
        assert await engine.extend([by_id[f"{a}-1"].lease], 30) == [False]
        assert await engine.redrive(c, [f"{c}-1"]) == 1
        assert await engine.redrive(b, [f"{b}-2"]) == 1
        stats = {s.queue: s.counts for s in await engine.stats()}
        assert stats[a][State.COMPLETED] == 1
        assert stats[b][State.SCHEDULED] == 1 and stats[b][State.QUEUED] == 1
        assert stats[c][State.QUEUED] == 2 and stats[c][State.DEAD] == 0

        clock.advance(10)
        again = await engine.reserve(queues, 10, 30, "w")
        assert sorted(r.id for r in again) == sorted([f"{b}-1", f"{b}-2", f"{c}-1", f"{c}-2"])
        redriven = next(r for r in again if r.id == f"{c}-1")
        assert redriven.options["redriven"] == 1 and len(redriven.failures) == 1
        assert await engine.settle([Complete(r.lease, b"ok") for r in again]) == [True] * 4

        # An idle wait on queues in different slots wakes on an enqueue to any of them.
        waiting = asyncio.create_task(engine.wait(queues, 10))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await engine.enqueue([job("late", c)])
        await asyncio.wait_for(waiting, 3)
        await engine.close()

        # The whole stack (App + Worker) on the cluster.
        app = conveyor.App(url, clock=clock)

        @app.task(queue=b, retries=1, backoff=conveyor.Backoff.fixed(5))
        async def flaky(n: int) -> int:
            if n % 2:
                raise ValueError("odd")
            return n

        handles = [await flaky.enqueue(n) for n in range(4)]
        counts = await drain(app)
        assert counts.completed == 2 and counts.dead == 2 and counts.retried == 2
        assert await handles[2].result(timeout=5) == 2
        await app.close()

        # One evicting primary is enough to refuse the cluster.
        nodes[1].cli("CONFIG", "SET", "maxmemory-policy", "volatile-lru")
        with pytest.raises(conveyor.ConfigurationError, match="volatile-lru"):
            await RedisEngine.from_url(url, clock).connect()
    finally:
        for node in nodes:
            node.stop()


# -- crash and restart ----------------------------------------------------------------------


async def test_kill_9_and_restart_with_aof_loses_no_acknowledged_job(tmp_path: Path) -> None:
    args = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
    server = RedisServer(tmp_path, args).start()
    app = conveyor.App(f"{server.url}?prefix=aof")
    acknowledged: list[str] = []
    total = 150
    lease = 1.5

    @app.task(queue="q", backoff=conveyor.Backoff.fixed(0))
    async def work(n: int) -> int:
        await asyncio.sleep(0.005)
        return n

    @work.on_completed
    def acked(job: conveyor.Job[int], result: int) -> None:
        acknowledged.append(job.id)

    try:
        handles = await work.enqueue_many(range(total))
        worker = conveyor.Worker(app, concurrency=5, burst=True, lease_seconds=lease)
        running = asyncio.create_task(worker.run())
        while len(acknowledged) < 40:
            await asyncio.sleep(0.005)
        before_crash = list(acknowledged)
        server.kill()
        # Longer than redis-py's own retries (about 1.5 s), so the worker's retries of
        # reserve and settle are exercised too.
        await asyncio.sleep(2.0)
        server.start()
        await asyncio.wait_for(running, 20)
        engine = await app.engine()  # the same engine: it reconnected by itself
        (stats,) = await engine.stats()
        if stats.counts[State.ACTIVE]:
            # A reserve whose reply the crash swallowed leased jobs nobody runs: they come
            # back when their lease expires (at-least-once), to a second worker.
            await asyncio.sleep(lease)
            await conveyor.Worker(app, concurrency=5, burst=True).run()
            (stats,) = await engine.stats()
        assert stats.counts[State.COMPLETED] == total, stats
        for record in [await engine.get("q", h.id) for h in handles]:
            assert record is not None and record.state is State.COMPLETED
        assert len(before_crash) < total  # the crash did land mid-run
        assert set(before_crash) <= set(acknowledged)
    finally:
        await app.close()
        server.stop()
