"""Leases: stale settlements refused, expired leases redelivered, crash loops dead-lettered,
workers killed with SIGKILL lose nothing, SIGTERM drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import conveyor
from conveyor.records import Complete, Release, Retry
from conveyor.testing import drain
from tests.conformance import worker_app


async def test_stale_lease_cannot_settle(app: conveyor.App, clock: conveyor.ManualClock) -> None:
    @app.task
    async def work() -> None:
        return None

    handle = await work.enqueue()
    engine = await app.engine()
    (first,) = await engine.reserve(["default"], 10, 30, "worker-a")
    clock.advance(31)  # worker-a stalls past its lease
    (second,) = await engine.reserve(["default"], 10, 30, "worker-b")
    assert second.id == first.id and second.attempts == 2
    assert second.lease_token != first.lease_token
    assert await engine.settle([Complete(first.lease, b"1")]) == [False]
    assert await engine.extend([first.lease], 30) == [False]
    assert await engine.report(first.lease, progress=50) is False
    assert await engine.settle([Complete(second.lease, b"2")]) == [True]
    assert await engine.settle([Complete(second.lease, b"3")]) == [False]  # exactly once
    record = await engine.get("default", handle.id)
    assert record is not None and record.result == b"2"


async def test_expired_lease_redelivers_and_records_a_lost_attempt(
    app: conveyor.App, clock: conveyor.ManualClock
) -> None:
    @app.task(retries=3)
    async def work() -> str:
        return "ok"

    handle = await work.enqueue()
    engine = await app.engine()
    await engine.reserve(["default"], 1, 30, "doomed-worker")
    assert await engine.reserve(["default"], 1, 30, "other") == []  # leased, not due
    clock.advance(30)
    await drain(app)
    assert await handle.result(timeout=5) == "ok"
    await handle.refresh()
    assert handle.attempts == 2
    assert [(a.number, a.outcome) for a in handle.failures] == [(1, conveyor.Outcome.LOST)]


async def test_extend_keeps_the_lease(app: conveyor.App, clock: conveyor.ManualClock) -> None:
    @app.task
    async def work() -> None:
        return None

    await work.enqueue()
    engine = await app.engine()
    (rec,) = await engine.reserve(["default"], 1, 30, "w")
    for _ in range(5):
        clock.advance(20)
        assert await engine.extend([rec.lease], 30) == [True]
    assert await engine.reserve(["default"], 1, 30, "thief") == []


async def test_crash_loop_ends_in_the_dlq(app: conveyor.App, clock: conveyor.ManualClock) -> None:
    @app.task(retries=2)
    async def oom() -> None:
        return None

    handle = await oom.enqueue()
    engine = await app.engine()
    for _ in range(3):  # every try kills its worker
        assert len(await engine.reserve(["default"], 1, 30, "dies")) == 1
        clock.advance(31)
    counts = await drain(app)
    assert counts.dead == 1 and counts.completed == 0
    dead = await app.dlq.show("default", handle.id)
    outcomes = [(a.number, a.outcome, a.error_type) for a in dead.failures]
    assert outcomes[:3] == [(n, conveyor.Outcome.LOST, "WorkerLost") for n in (1, 2, 3)]
    assert outcomes[3][1:] == (conveyor.Outcome.LOST, "WorkerLost")
    assert "used every try" in dead.failures[-1].message


async def test_release_gives_the_job_back_without_counting_the_attempt(
    app: conveyor.App,
) -> None:
    @app.task
    async def work() -> None:
        return None

    handle = await work.enqueue()
    engine = await app.engine()
    (rec,) = await engine.reserve(["default"], 1, 30, "w")
    assert await engine.settle([Release(rec.lease)]) == [True]
    await handle.refresh()
    assert handle.state is conveyor.State.QUEUED and handle.attempts == 0
    assert handle.failures == []


async def test_retry_settlement_is_refused_after_lease_loss(
    app: conveyor.App, clock: conveyor.ManualClock
) -> None:
    @app.task
    async def work() -> None:
        return None

    await work.enqueue()
    engine = await app.engine()
    (rec,) = await engine.reserve(["default"], 1, 30, "w")
    clock.advance(31)
    await engine.reserve(["default"], 1, 30, "w2")
    attempt = conveyor.Attempt(1, conveyor.Outcome.ERROR, "E", "m")
    assert await engine.settle([Retry(rec.lease, clock.now(), attempt)]) == [False]


def _start_worker(engine_url: str, lease: float, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CONVEYOR_URL": engine_url,
        "CONVEYOR_TEST_LEASE": str(lease),
        "PYTHONPATH": os.getcwd(),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor.cli",
            "worker",
            "tests.conformance.worker_app:app",
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_sigkilled_worker_loses_nothing(engine_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "runs.txt"
    producer = conveyor.App(engine_url)
    task = worker_app.hang_first_attempt
    producer.tasks[task.name] = task
    try:
        handle = producer.run_sync(_enqueue_with(producer, task, str(marker)))
    finally:
        producer.close_sync()
    first = _start_worker(engine_url, lease=1.0)
    try:
        _wait_for(lambda: marker.exists() and "start 1" in marker.read_text())
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    second = _start_worker(engine_url, lease=1.0)
    check = conveyor.App(engine_url)
    check.tasks[task.name] = task
    try:
        result = check.run_sync(_result(check, handle, 30))
        assert result == "done"
        job = check.run_sync(check.get_job("conformance", handle))
        assert job.attempts == 2
        assert [a.outcome for a in job.failures] == [conveyor.Outcome.LOST]
        starts = [line for line in marker.read_text().splitlines() if line.startswith("start")]
        assert [s.split()[1] for s in starts] == ["1", "2"]
    finally:
        check.close_sync()
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0


def test_sigterm_drains_running_jobs_and_exits_zero(engine_url: str, tmp_path: Path) -> None:
    short, long_ = tmp_path / "short.txt", tmp_path / "long.txt"
    producer = conveyor.App(engine_url)
    task = worker_app.sleep_for
    producer.tasks[task.name] = task
    try:
        short_id = producer.run_sync(_enqueue_with(producer, task, str(short), seconds=1.0))
        long_id = producer.run_sync(_enqueue_with(producer, task, str(long_), seconds=60.0))
    finally:
        producer.close_sync()
    proc = _start_worker(engine_url, 30.0, "--grace", "3", "--concurrency", "2")
    try:
        _wait_for(lambda: short.exists() and long_.exists())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    check = conveyor.App(engine_url)
    check.tasks[task.name] = task
    try:
        done = check.run_sync(check.get_job("conformance", short_id))
        assert done.state is conveyor.State.COMPLETED  # finished within the grace period
        released = check.run_sync(check.get_job("conformance", long_id))
        assert released.state is conveyor.State.QUEUED  # given back, due at once
        assert released.attempts == 0 and released.failures == []
        assert short.read_text().splitlines() == ["start 1", "end"]
    finally:
        check.close_sync()


async def _enqueue_with(
    app: conveyor.App, task: conveyor.Task[object], marker: str, seconds: float = 0.0
) -> str:
    payload = worker_app.Marked(marker=marker, seconds=seconds)
    new = task.build(payload)
    engine = await app.engine()
    await engine.enqueue([new])
    return new.id


async def _result(app: conveyor.App, job_id: str, timeout: float) -> object:
    job = await app.get_job("conformance", job_id)
    return await job.result(timeout=timeout)
