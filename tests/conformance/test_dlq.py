"""Dead-letter queue operations: list with filters, show, redrive, purge."""

from __future__ import annotations

import conveyor
from conveyor.testing import drain


async def _fill(app: conveyor.App, clock: conveyor.ManualClock) -> dict[str, list[str]]:
    fixed: set[int] = set()

    @app.task(name="images.resize", queue="media", retries=1, backoff=conveyor.Backoff.fixed(1))
    async def resize(n: int) -> int:
        if n not in fixed:
            raise ValueError(f"corrupt image {n}")
        return n

    @app.task(name="images.upload", queue="media", retries=0)
    async def upload(n: int) -> None:
        raise PermissionError(f"bucket denied {n}")

    app.fixed = fixed  # type: ignore[attr-defined]
    ids: dict[str, list[str]] = {"resize": [], "upload": []}
    for n in range(3):
        ids["resize"].append((await resize.enqueue(n)).id)
    await drain(app)
    clock.advance(3600)
    for n in range(2):
        ids["upload"].append((await upload.enqueue(n)).id)
    await drain(app)
    return ids


async def test_list_filters_by_task_error_and_time(
    app: conveyor.App, clock: conveyor.ManualClock
) -> None:
    ids = await _fill(app, clock)
    everything = await app.dlq.list("media")
    assert len(everything) == 5
    assert [j.id for j in everything[:2]] == ids["upload"][::-1] or {
        j.id for j in everything[:2]
    } == set(ids["upload"])  # newest first
    by_task = await app.dlq.list("media", conveyor.DeadFilter(task="images.resize"))
    assert sorted(j.id for j in by_task) == sorted(ids["resize"])
    by_error = await app.dlq.list("media", conveyor.DeadFilter(error="PermissionError"))
    assert sorted(j.id for j in by_error) == sorted(ids["upload"])
    recent = await app.dlq.list("media", conveyor.DeadFilter(since=clock.now() - 60))
    assert sorted(j.id for j in recent) == sorted(ids["upload"])
    old = await app.dlq.list("media", conveyor.DeadFilter(until=clock.now() - 60))
    assert sorted(j.id for j in old) == sorted(ids["resize"])
    assert await app.dlq.count("media", conveyor.DeadFilter(task="images.upload")) == 2


async def test_show_has_every_attempt(app: conveyor.App, clock: conveyor.ManualClock) -> None:
    ids = await _fill(app, clock)
    dead = await app.dlq.show("media", ids["resize"][0])
    assert [(a.number, a.error_type) for a in dead.failures] == [
        (1, "ValueError"),
        (2, "ValueError"),
    ]
    assert dead.failures[0].retry_at is not None


async def test_redrive_one_runs_it_again_with_history_kept(
    app: conveyor.App, clock: conveyor.ManualClock
) -> None:
    ids = await _fill(app, clock)
    app.fixed.add(0)  # type: ignore[attr-defined]
    assert await app.dlq.redrive("media", [ids["resize"][0]]) == 1
    job = await app.get_job("media", ids["resize"][0])
    assert job.state is conveyor.State.QUEUED and job.attempts == 0
    counts = await drain(app)
    assert counts.completed == 1
    assert await job.result(timeout=5) == 0
    await job.refresh()
    assert job.attempts == 1
    assert [(a.round, a.number) for a in job.failures] == [(0, 1), (0, 2)]  # history kept
    assert len(await app.dlq.list("media")) == 4


async def test_redrive_filtered_and_all(app: conveyor.App, clock: conveyor.ManualClock) -> None:
    ids = await _fill(app, clock)
    n = await app.dlq.redrive("media", where=conveyor.DeadFilter(error="PermissionError"))
    assert n == 2
    counts = await drain(app)
    assert counts.dead == 2  # they fail again and come back, with a second round recorded
    again = await app.dlq.show("media", ids["upload"][0])
    assert [(a.round, a.number) for a in again.failures] == [(0, 1), (1, 1)]
    assert await app.dlq.redrive("media") == 5


async def test_purge_selected_filtered_and_all(
    app: conveyor.App, clock: conveyor.ManualClock
) -> None:
    ids = await _fill(app, clock)
    assert await app.dlq.purge("media", [ids["upload"][0]]) == 1
    assert await app.dlq.purge("media", where=conveyor.DeadFilter(task="images.resize")) == 3
    assert await app.dlq.purge("media") == 1
    assert await app.dlq.list("media") == []
    stats = {s.queue: s for s in await app.stats()}
    assert stats.get("media") is None or stats["media"].dead == 0


async def test_stats_report_dlq_depth_and_oldest_age(
    app: conveyor.App, clock: conveyor.ManualClock
) -> None:
    await _fill(app, clock)
    stats = {s.queue: s for s in await app.stats()}
    media = stats["media"]
    assert media.dead == 5
    assert media.oldest_dead_at is not None
    assert clock.now() - media.oldest_dead_at >= 3600
