"""Run queued jobs in-process, for users' own tests of tasks, retries and dead-lettering.

Honest, not eager: jobs go through the real engine and the real worker code path (payload
validation, timeouts, retries, the DLQ, hooks); only the separate worker process is gone.
With a :class:`conveyor.ManualClock` the clock jumps to each scheduled job's due time, so a
"1 min -> 5 min -> 30 min" retry schedule runs in milliseconds::

    clock = conveyor.ManualClock()
    app = conveyor.App("sqlite:///test.db", clock=clock)
    ...
    await conveyor.testing.drain(app)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from conveyor.app import App
from conveyor.clock import ManualClock
from conveyor.records import State
from conveyor.worker import Worker
from conveyor.worker.runner import WorkerCounts

#: With the system clock, ``drain`` waits for scheduled jobs only up to this many seconds ahead.
DEFAULT_MAX_WAIT = 5.0


async def drain(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    run_scheduled: bool = True,
    max_wait: float = DEFAULT_MAX_WAIT,
    concurrency: int = 1,
) -> WorkerCounts:
    """Process jobs until none is queued, scheduled (if ``run_scheduled``) or running.

    With a :class:`ManualClock`, scheduled jobs (delays, retry backoff) run by moving the
    clock to their due time. With a real clock, ``drain`` sleeps until they are due if that is
    within ``max_wait`` seconds, and leaves them scheduled otherwise. Returns the totals.
    """
    names = list(queues) if queues else app.queues
    total = WorkerCounts()
    while True:
        counts = await Worker(app, queues=names, concurrency=concurrency, burst=True).run()
        _add(total, counts)
        if not run_scheduled:
            return total
        due = await next_due(app, names)
        if due is None:
            return total
        if isinstance(app.clock, ManualClock):
            app.clock.set(due)
            continue
        wait = due - app.clock.now()
        if wait > max_wait:
            return total
        await asyncio.sleep(max(wait, 0.0))


def drain_sync(app: App, **kwargs: object) -> WorkerCounts:
    """:func:`drain` for synchronous tests."""
    return asyncio.run(_drain_and_close(app, **kwargs))


async def _drain_and_close(app: App, **kwargs: object) -> WorkerCounts:
    try:
        return await drain(app, **kwargs)  # type: ignore[arg-type]
    finally:
        await app.close()


async def next_due(app: App, queues: Sequence[str]) -> float | None:
    """The earliest due time of a scheduled job in ``queues``, or ``None``."""
    engine = await app.engine()
    times = []
    for queue in queues:
        first = await engine.list_jobs(queue, State.SCHEDULED, limit=1)
        if first:
            times.append(first[0].run_at)
    return min(times, default=None)


def _add(total: WorkerCounts, counts: WorkerCounts) -> None:
    total.completed += counts.completed
    total.retried += counts.retried
    total.dead += counts.dead
    total.released += counts.released
    total.lost_leases += counts.lost_leases
    for key, value in counts.by_outcome.items():
        total.by_outcome[key] = total.by_outcome.get(key, 0) + value
