"""streaq: async worker (Redis streams + Lua), concurrency 100, results expire at once.
Bulk: ``Worker.enqueue_many`` (one pipeline)."""

from __future__ import annotations

from typing import Any, ClassVar

from bench.common import hit
from bench.peers.base import Adapter, flush_redis

CONCURRENCY = 100


class StreaqAdapter(Adapter):
    """streaq."""

    name = "streaq"
    dist = "streaq"
    concurrency = CONCURRENCY
    config: ClassVar[str] = f"Worker(concurrency={CONCURRENCY}), bulk = enqueue_many"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.worker, self.task = self._make()

    def _make(self) -> tuple[Any, Any]:
        """A Worker and its task; producer and worker each get their own (streaq's client
        context cannot be entered in one task and left in another)."""
        from streaq import Worker

        worker: Any = Worker(
            redis_url=self.url, concurrency=CONCURRENCY, queue_name="bench", handle_signals=True
        )

        @worker.task(name="bench.noop")
        async def noop() -> None:
            hit()

        return worker, noop

    async def setup(self) -> None:
        await self.worker.__aenter__()

    async def teardown(self) -> None:
        """Left open: the process ends soon after (see :meth:`_make`)."""

    async def enqueue_one(self) -> None:  # type: ignore[override]
        await self.task.enqueue()

    async def enqueue_bulk(self, n: int) -> None:  # type: ignore[override]
        await self.worker.enqueue_many([self.task.enqueue() for _ in range(n)])

    async def fill(self, n: int) -> None:
        for start in range(0, n, 1000):
            await self.enqueue_bulk(min(1000, n - start))

    def reset(self) -> None:
        flush_redis(self.url)

    def run_worker(self) -> None:
        worker, _ = self._make()
        worker.run_sync()
