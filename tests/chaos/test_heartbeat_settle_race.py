"""A heartbeat that runs while a settlement is on its way must not cancel the job.

Found by the full-size chaos retries/DLQ run: 11 of 3,077 dead-lettered jobs never reached
their ``on_dead_letter`` hook (nor the alerts). The settlement had been committed, which
removed the lease token; a heartbeat's extend, queued right behind it, then saw the lease
"lost" and cancelled the job's task before it woke up with the settlement's result. The job
was dead (or completed) in the engine, but its hooks, alerts and counts were skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import conveyor
from conveyor.engines.base import Engine
from conveyor.records import Settlement

SETTLE_DELAY = 0.5  # the settlement is stored at once but its answer arrives late
LEASE = 0.3  # heartbeats every 0.1 s: several run while the answer is on its way


class SlowAnswers:
    """The real engine, except that settle() answers ``SETTLE_DELAY`` after storing."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        stored = await self._engine.settle(settlements)
        await asyncio.sleep(SETTLE_DELAY)
        return stored


async def test_hooks_run_when_a_heartbeat_races_the_settlement(tmp_path: Path) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=LEASE)
    calls: list[str] = []

    @app.task(retries=0)
    async def fails() -> None:
        raise ValueError("for good")

    @app.task
    async def works() -> str:
        return "done"

    @fails.on_dead_letter
    def dead(job: conveyor.Job[Any], attempt: conveyor.Attempt) -> None:
        calls.append("dead")

    @works.on_completed
    def completed(job: conveyor.Job[Any], result: Any) -> None:
        calls.append("completed")

    try:
        real = await app.engine()
        app._engines[asyncio.get_running_loop()] = SlowAnswers(real)  # type: ignore[assignment]
        await fails.enqueue()
        await works.enqueue()
        counts = await conveyor.Worker(app, burst=True, idle_wait=0.01).run()
        assert sorted(calls) == ["completed", "dead"]
        assert (counts.completed, counts.dead, counts.lost_leases) == (1, 1, 0)
    finally:
        app._engines[asyncio.get_running_loop()] = real
        await app.close()
