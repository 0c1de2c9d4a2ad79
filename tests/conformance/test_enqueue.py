"""Producers: validation, idempotent job ids, size limits, delays, priorities, results."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

import conveyor
from conveyor.testing import drain


class Resize(BaseModel):
    image_id: str
    width: int = Field(gt=0)


@dataclass
class Point:
    x: int
    y: int


class Pair(TypedDict):
    a: int
    b: int


async def test_enqueue_runs_the_job_and_keeps_its_result(app: conveyor.App) -> None:
    @app.task
    async def double(job: conveyor.Job[Resize]) -> dict[str, int]:
        return {"width": job.payload.width * 2}

    handle = await double.enqueue(Resize(image_id="a", width=21))
    counts = await drain(app)
    assert counts.completed == 1
    assert await handle.result(timeout=10) == {"width": 42}
    await handle.refresh()
    assert handle.state is conveyor.State.COMPLETED
    assert handle.attempts == 1
    assert handle.percent == 100


async def test_payload_types_dataclass_typeddict_and_plain_argument(app: conveyor.App) -> None:
    @app.task
    def length(p: Point) -> int:
        return p.x + p.y

    @app.task
    async def add(job: conveyor.Job[Pair]) -> int:
        return job.payload["a"] + job.payload["b"]

    j1 = await length.enqueue(Point(3, 4))
    j2 = await add.enqueue({"a": 1, "b": 2})
    await drain(app)
    assert await j1.result(timeout=10) == 7
    assert await j2.result(timeout=10) == 3


async def test_invalid_payload_is_refused_with_a_clear_error_and_nothing_stored(
    app: conveyor.App,
) -> None:
    @app.task
    async def resize(job: conveyor.Job[Resize]) -> None:
        return None

    with pytest.raises(conveyor.PayloadInvalid) as caught:
        await resize.enqueue({"image_id": "x", "width": -5})
    assert "width" in str(caught.value)
    assert "greater than 0" in str(caught.value)
    with pytest.raises(conveyor.PayloadInvalid):
        await resize.enqueue({"width": 10})  # image_id missing
    assert sum(sum(s.counts.values()) for s in await app.stats()) == 0


async def test_oversized_payload_is_refused_with_size_and_advice(engine_url: str) -> None:
    app = conveyor.App(engine_url, max_payload_bytes=1024)

    @app.task
    async def upload(data: str) -> None:
        return None

    @app.task(max_payload_bytes=10_000)
    async def roomy(data: str) -> None:
        return None

    try:
        with pytest.raises(conveyor.PayloadTooLarge) as caught:
            await upload.enqueue("x" * 2000)
        message = str(caught.value)
        assert "2,002 bytes" in message and "1,024" in message
        assert "identifiers" in message
        await roomy.enqueue("x" * 2000)  # the task's own limit wins
        counts = {s.queue: sum(s.counts.values()) for s in await app.stats()}
        assert counts == {"default": 1}
    finally:
        await app.close()


async def test_same_job_id_returns_the_existing_job_and_runs_once(app: conveyor.App) -> None:
    runs: list[str] = []

    @app.task
    async def once(name: str) -> str:
        runs.append(name)
        return name

    first = await once.enqueue("first", job_id="img-42")
    second = await once.enqueue("second", job_id="img-42")
    assert first.created and not second.created
    assert second.id == first.id == "img-42"
    await drain(app)
    assert runs == ["first"]
    assert await second.result(timeout=10) == "first"


def test_job_id_deduplicates_under_ten_concurrent_producers(engine_url: str) -> None:
    ids = [f"order-{i}" for i in range(30)]
    created: list[bool] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def producer() -> None:
        app = conveyor.App(engine_url)  # each producer has its own connection

        @app.task(name="charge")
        def charge(order: str) -> None:
            return None

        try:
            mine = [charge.enqueue_sync(i, job_id=i).created for i in ids]
            with lock:
                created.extend(mine)
        except BaseException as exc:
            errors.append(exc)
        finally:
            app.close_sync()

    threads = [threading.Thread(target=producer) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(created) == 300
    assert sum(created) == len(ids)  # exactly one producer created each job

    check = conveyor.App(engine_url)
    try:
        stats = check.run_sync(check.stats())
        assert sum(stats[0].counts.values()) == len(ids)
    finally:
        check.close_sync()


async def test_enqueue_many_stores_all_or_nothing(app: conveyor.App) -> None:
    @app.task
    async def resize(job: conveyor.Job[Resize]) -> int:
        return job.payload.width

    with pytest.raises(conveyor.PayloadInvalid):
        await resize.enqueue_many([Resize(image_id="a", width=1), {"image_id": "b", "width": 0}])
    assert await app.stats() == []
    jobs = await resize.enqueue_many(
        [Resize(image_id=str(i), width=i + 1) for i in range(50)]
        + [conveyor.Enqueue(Resize(image_id="x", width=7), job_id="fixed")]
    )
    assert len(jobs) == 51 and all(j.created for j in jobs)
    again = await resize.enqueue_many([conveyor.Enqueue(Resize(image_id="x", width=7), "fixed")])
    assert not again[0].created
    counts = await drain(app, concurrency=8)
    assert counts.completed == 51


async def test_delayed_job_waits_until_due(app: conveyor.App, clock: conveyor.ManualClock) -> None:
    ran: list[float] = []

    @app.task
    async def later() -> None:
        ran.append(clock.now())

    start = clock.now()
    handle = await later.enqueue(delay=3600)
    await handle.refresh()
    assert handle.state is conveyor.State.SCHEDULED
    await drain(app, run_scheduled=False)
    assert ran == []
    await drain(app)  # the manual clock jumps to the due time
    assert ran == [start + 3600]


async def test_higher_priority_runs_first(app: conveyor.App) -> None:
    order: list[int] = []

    @app.task
    async def record(n: int) -> None:
        order.append(n)

    for n, priority in [(1, 0), (2, 5), (3, 1), (4, 5), (5, -1)]:
        await record.enqueue(n, priority=priority)
    await drain(app, concurrency=1)
    assert order == [2, 4, 3, 1, 5]


async def test_sync_producer_api_from_plain_code(engine_url: str) -> None:
    app = conveyor.App(engine_url)

    @app.task
    def shout(word: str) -> str:
        return word.upper()

    import asyncio

    def produce() -> str:
        job = shout.enqueue_sync("hi", job_id="sync-1")
        return job.id

    job_id = await asyncio.to_thread(produce)
    try:
        await drain(app)
        job = await app.get_job("default", job_id)
        assert await job.result(timeout=10) == "HI"
    finally:
        await app.close()
