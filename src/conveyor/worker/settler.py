"""Batches settlements: whatever settles while one batch is in flight goes in the next."""

from __future__ import annotations

import asyncio
import logging

from conveyor.engines.base import Engine
from conveyor.records import Settlement

log = logging.getLogger("conveyor.worker")

MAX_BATCH = 500
#: Waits between attempts when the engine is unreachable; then the lease expiry takes over.
RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0)


class Settler:
    """Send settlements to the engine in batches, one batch in flight at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pending: list[tuple[Settlement, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def settle(self, settlement: Settlement) -> bool:
        """Queue ``settlement``; returns once stored (``False``: the lease was stale)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((settlement, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def drain(self) -> None:
        """Wait until every queued settlement has been sent."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            settlements = [s for s, _ in batch]
            for delay in (*RETRY_DELAYS, None):
                try:
                    results = await self.engine.settle(settlements)
                except Exception as exc:
                    if delay is None:
                        for _, future in batch:
                            if not future.done():
                                future.set_exception(exc)
                        break
                    log.warning("settling %d job(s) failed, retrying: %s", len(batch), exc)
                    await asyncio.sleep(delay)
                    continue
                for (_, future), ok in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(ok)
                break
