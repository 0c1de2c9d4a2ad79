"""Retries, backoff, timeouts, the dead-letter queue, hooks and alerts."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket

import pytest

import conveyor
from conveyor.engines.base import Engine
from conveyor.records import NewJob
from conveyor.testing import drain
from tests.conformance import process_tasks


async def test_seed_rule_three_retries_one_five_thirty_minutes_then_dlq(
    app: conveyor.App, clock: conveyor.ManualClock
) -> None:
    @app.task(retries=3, backoff=conveyor.Backoff.schedule(60, 300, 1800))
    async def flaky(image_id: str) -> None:
        raise ConnectionError(f"storage unreachable for {image_id}")

    handle = await flaky.enqueue("img-1")
    counts = await drain(app)
    assert (counts.retried, counts.dead, counts.completed) == (3, 1, 0)
    await handle.refresh()
    assert handle.state is conveyor.State.DEAD
    assert handle.attempts == 4
    log = handle.failures
    assert [a.number for a in log] == [1, 2, 3, 4]
    assert [a.retry_at - a.ended_at for a in log[:3] if a.retry_at and a.ended_at] == [
        60,
        300,
        1800,
    ]
    assert log[3].retry_at is None
    for a in log:
        assert a.outcome is conveyor.Outcome.ERROR
        assert a.error_type == "ConnectionError"
        assert a.message == "storage unreachable for img-1"
        assert "raise ConnectionError" in a.traceback
        assert a.worker.startswith(f"{socket.gethostname()}:{os.getpid()}:")
        assert a.started_at is not None and a.ended_at is not None
    # each retry starts no earlier than its backoff allows
    gaps = [b.started_at - a.ended_at for a, b in itertools.pairwise(log)]  # type: ignore[operator]
    assert gaps == [60, 300, 1800]


async def test_job_that_fails_twice_then_succeeds(app: conveyor.App) -> None:
    calls = 0

    @app.task(retries=3, backoff=conveyor.Backoff.exponential(10, factor=3, jitter=0))
    async def shaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TimeoutError("upstream slow")
        return "ok"

    handle = await shaky.enqueue()
    await drain(app)
    assert await handle.result(timeout=5) == "ok"
    await handle.refresh()
    assert handle.attempts == 3
    assert [
        round(a.retry_at - a.ended_at) for a in handle.failures if a.retry_at and a.ended_at
    ] == [
        10,
        30,
    ]


async def test_unrecoverable_skips_remaining_retries(app: conveyor.App) -> None:
    @app.task(retries=5)
    async def charge(card: str) -> None:
        raise conveyor.Unrecoverable(f"card {card} was declined")

    handle = await charge.enqueue("4242")
    counts = await drain(app)
    assert counts.dead == 1 and counts.retried == 0
    await handle.refresh()
    assert handle.attempts == 1
    assert handle.failures[0].outcome is conveyor.Outcome.UNRECOVERABLE
    with pytest.raises(conveyor.JobFailed, match="declined"):
        await handle.result(timeout=5)


async def test_async_timeout_cancels_the_attempt_and_counts_it(engine_url: str) -> None:
    app = conveyor.App(engine_url)
    finished = False

    @app.task(timeout=0.2, retries=1, backoff=conveyor.Backoff.fixed(0))
    async def stuck() -> None:
        nonlocal finished
        await asyncio.sleep(30)
        finished = True

    try:
        handle = await stuck.enqueue()
        counts = await drain(app)
        assert counts.dead == 1 and counts.retried == 1
        await handle.refresh()
        assert [a.outcome for a in handle.failures] == [conveyor.Outcome.TIMEOUT] * 2
        assert "0.2s timeout" in handle.failures[0].message
        assert not finished
    finally:
        await app.close()


async def test_cpu_bound_process_job_past_timeout_is_killed_and_retried(engine_url: str) -> None:
    app = conveyor.App(engine_url)
    spin = app.task(executor="process", timeout=0.5, retries=1, backoff=conveyor.Backoff.fixed(0))(
        process_tasks.spin.fn
    )
    try:
        handle = await spin.enqueue(30.0)
        quick = await spin.enqueue(0.0)
        counts = await drain(app, concurrency=2)
        assert counts.completed == 1 and counts.dead == 1 and counts.retried == 1
        assert isinstance(await quick.result(timeout=5), int)
        await handle.refresh()
        assert [a.outcome for a in handle.failures] == [conveyor.Outcome.TIMEOUT] * 2
        assert "process was killed" in handle.failures[0].message
    finally:
        await app.close()


async def test_process_task_reports_progress_and_logs(engine_url: str) -> None:
    app = conveyor.App(engine_url)
    task = app.task(executor="process", timeout=10)(process_tasks.report_and_square.fn)
    try:
        handle = await task.enqueue(12)
        await drain(app)
        assert await handle.result(timeout=5) == 144
        await handle.refresh()
        assert [line.message for line in handle.logs] == ["halfway"]
    finally:
        await app.close()


async def test_dead_letter_fires_hook_and_alert_exactly_once_with_full_log(
    engine_url: str, clock: conveyor.ManualClock
) -> None:
    alerts: list[conveyor.Alert] = []
    app = conveyor.App(engine_url, clock=clock, alerts=conveyor.Alerts([alerts.append]))
    dead_calls: list[tuple[str, int, int]] = []
    failed_calls: list[tuple[int, bool]] = []

    @app.task(retries=2, backoff=conveyor.Backoff.fixed(5))
    async def broken(n: int) -> None:
        raise ValueError(f"bad input {n}")

    @broken.on_dead_letter
    async def record(job: conveyor.Job[int], attempt: conveyor.Attempt) -> None:
        dead_calls.append((job.id, attempt.number, len(job.failures)))

    @broken.on_failed
    def failed(job: conveyor.Job[int], attempt: conveyor.Attempt, will_retry: bool) -> None:
        failed_calls.append((attempt.number, will_retry))

    try:
        handle = await broken.enqueue(7)
        await drain(app)
        assert dead_calls == [(handle.id, 3, 3)]
        assert failed_calls == [(1, True), (2, True), (3, False)]
        assert len(alerts) == 1
        assert alerts[0].kind == "dead_letter" and alerts[0].error_type == "ValueError"
        assert "bad input 7" in alerts[0].message
    finally:
        await app.close()


async def test_alerts_are_deduplicated_per_queue_and_error_type(
    engine_url: str, clock: conveyor.ManualClock
) -> None:
    alerts: list[conveyor.Alert] = []
    policy = conveyor.Alerts([alerts.append], dedup_window=300)
    app = conveyor.App(engine_url, clock=clock, alerts=policy)

    @app.task(retries=0)
    async def boom(n: int) -> None:
        raise KeyError(n)

    try:
        await boom.enqueue_many(range(10))
        await drain(app)
        assert len(alerts) == 1 and alerts[0].count == 1
        clock.advance(301)
        await policy.flush(clock.now())
        assert len(alerts) == 2
        assert alerts[1].count == 9 and "9 more" in alerts[1].message
    finally:
        await app.close()


async def test_dlq_depth_and_age_alerts(engine_url: str, clock: conveyor.ManualClock) -> None:
    alerts: list[conveyor.Alert] = []
    policy = conveyor.Alerts([alerts.append], dlq_max_depth=2, dlq_max_age=3600)
    app = conveyor.App(engine_url, clock=clock, alerts=policy)

    @app.task(retries=0)
    async def boom(n: int) -> None:
        raise RuntimeError("no")

    try:
        await boom.enqueue_many(range(3))
        await drain(app)
        alerts.clear()
        clock.advance(7200)
        await policy.check_dlq(await app.stats(), clock.now())
        kinds = sorted(a.kind for a in alerts)
        assert kinds == ["dlq_age", "dlq_depth"]
        depth = next(a for a in alerts if a.kind == "dlq_depth")
        assert depth.details["depth"] == 3
    finally:
        await app.close()


async def test_hook_that_raises_is_logged_and_loses_nothing(
    app: conveyor.App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    async def fine() -> int:
        return 1

    @fine.on_completed
    def explode(job: conveyor.Job[None], result: int) -> None:
        raise RuntimeError("hook bug")

    handle = await fine.enqueue()
    await drain(app)
    assert await handle.result(timeout=5) == 1
    assert "hook" in caplog.text and "hook bug" in caplog.text


async def test_unknown_task_goes_to_the_dlq_with_the_reason(engine_url: str) -> None:
    producer = conveyor.App(engine_url)
    consumer = conveyor.App(engine_url)

    @producer.task(name="thumbnails.make", queue="media")
    async def make() -> None:
        return None

    @consumer.task(name="thumbnails.other", queue="media")
    async def other() -> None:
        return None

    try:
        handle = await make.enqueue()
        await drain(consumer)
        dead = await consumer.dlq.show("media", handle.id)
        assert dead.failures[-1].outcome is conveyor.Outcome.UNKNOWN_TASK
        assert "thumbnails.make" in dead.failures[-1].message
    finally:
        await producer.close()
        await consumer.close()


async def test_undecodable_payload_is_dead_lettered_and_the_worker_goes_on(
    app: conveyor.App, clock: conveyor.ManualClock
) -> None:
    @app.task(name="resize", retries=5)
    async def resize(width: int) -> int:
        return width

    engine: Engine = await app.engine()
    now = clock.now()
    poison = [
        (b'{"trunc', "truncated"),
        (b'"not a number"', "wrong-type"),
        (b"\x80\x04\x95pickle", "pickle"),
    ]
    await engine.enqueue(
        [NewJob("default", job_id, "resize", raw, 0, now, now) for raw, job_id in poison]
    )
    good = await resize.enqueue(5)
    counts = await drain(app)
    assert counts.completed == 1 and counts.dead == 3
    assert await good.result(timeout=5) == 5
    for _, job_id in poison:
        dead = await app.dlq.show("default", job_id)
        assert dead.attempts == 1  # no retries for a payload that can never be valid
        assert dead.failures[-1].outcome is conveyor.Outcome.INVALID
        assert "resize" in dead.failures[-1].message
