"""What a running job reports (progress, logs), retention of results, pausing queues."""

from __future__ import annotations

import asyncio

import conveyor
from conveyor.testing import drain


async def test_progress_and_logs_are_visible_while_the_job_runs(engine_url: str) -> None:
    app = conveyor.App(engine_url)
    reported = asyncio.Event()
    release = asyncio.Event()

    @app.task
    async def long_job(job: conveyor.Job[None]) -> str:
        await job.progress(40)
        await job.log("resized")
        reported.set()
        await release.wait()
        await job.progress(80)
        return "done"

    try:
        handle = await long_job.enqueue()
        worker = asyncio.create_task(drain(app))
        await asyncio.wait_for(reported.wait(), 10)
        await handle.refresh()
        assert handle.state is conveyor.State.ACTIVE
        assert handle.percent == 40
        assert [line.message for line in handle.logs] == ["resized"]
        release.set()
        assert await handle.result(timeout=10) == "done"
        await worker
        await handle.refresh()
        assert handle.percent == 100
    finally:
        await app.close()


async def test_progress_outside_a_running_job_is_an_error(app: conveyor.App) -> None:
    @app.task
    async def noop() -> None:
        return None

    handle = await noop.enqueue()
    try:
        await handle.progress(10)
    except RuntimeError as exc:
        assert "inside a running task" in str(exc)
    else:
        raise AssertionError("progress() outside a task must raise")


async def test_keep_completed_by_count_trims_oldest_results(
    app: conveyor.App, clock: conveyor.ManualClock
) -> None:
    @app.task(keep_completed=conveyor.Keep(count=3, age=None))
    async def square(n: int) -> int:
        return n * n

    handles = []
    for n in range(6):
        handles.append(await square.enqueue(n))
        await drain(app)
        clock.advance(1)
    engine = await app.engine()
    assert await engine.trim("default", square.name, 3, None) == 3
    kept = await engine.list_jobs("default", conveyor.State.COMPLETED)
    assert sorted(r.id for r in kept) == sorted(h.id for h in handles[3:])
    assert await handles[5].result(timeout=5) == 25


async def test_keep_completed_by_age(app: conveyor.App, clock: conveyor.ManualClock) -> None:
    @app.task(keep_completed=conveyor.Keep(count=None, age=60))
    async def noop(n: int) -> None:
        return None

    old = await noop.enqueue(1)
    await drain(app)
    clock.advance(120)
    new = await noop.enqueue(2)
    await drain(app)
    engine = await app.engine()
    assert await engine.trim("default", noop.name, None, clock.now() - 60) == 1
    assert await engine.get("default", old.id) is None
    assert await engine.get("default", new.id) is not None


async def test_keep_count_zero_deletes_on_completion(app: conveyor.App) -> None:
    @app.task(keep_completed=conveyor.Keep(count=0))
    async def fire_and_forget() -> None:
        return None

    handle = await fire_and_forget.enqueue()
    assert (await drain(app)).completed == 1
    assert await (await app.engine()).get("default", handle.id) is None


async def test_paused_queue_hands_out_nothing_until_resumed(app: conveyor.App) -> None:
    @app.task(queue="mail")
    async def send() -> None:
        return None

    await send.enqueue()
    engine = await app.engine()
    await engine.set_paused("mail", True)
    assert (await drain(app)).completed == 0
    stats = {s.queue: s for s in await app.stats()}
    assert stats["mail"].paused and stats["mail"].counts[conveyor.State.QUEUED] == 1
    await engine.set_paused("mail", False)
    assert (await drain(app)).completed == 1


async def test_stats_count_every_state(app: conveyor.App, clock: conveyor.ManualClock) -> None:
    @app.task(retries=0)
    async def maybe(ok: bool) -> None:
        if not ok:
            raise ValueError("no")

    await maybe.enqueue(True)
    await maybe.enqueue(False)
    await maybe.enqueue(True, delay=600)
    await maybe.enqueue(True)
    engine = await app.engine()
    await drain(app, run_scheduled=False)
    await maybe.enqueue(True)
    await engine.reserve(["default"], 1, 30, "w")
    (stats,) = await app.stats()
    assert stats.counts == {
        conveyor.State.QUEUED: 0,
        conveyor.State.SCHEDULED: 1,
        conveyor.State.ACTIVE: 1,
        conveyor.State.COMPLETED: 2,
        conveyor.State.DEAD: 1,
    }
