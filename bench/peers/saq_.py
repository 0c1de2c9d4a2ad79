"""SAQ on Redis: async worker with concurrency 100, completed jobs not kept (``ttl=-1``).
SAQ has no bulk enqueue."""

from __future__ import annotations

from typing import Any, ClassVar

from bench.common import hit
from bench.peers.base import Adapter, flush_redis, run_until_sigterm

CONCURRENCY = 100


async def noop(ctx: dict[str, Any]) -> None:
    """The task."""
    hit()


class SaqAdapter(Adapter):
    """SAQ."""

    name = "saq"
    dist = "saq"
    concurrency = CONCURRENCY
    config: ClassVar[str] = f"Worker(concurrency={CONCURRENCY}), job ttl=-1 (not kept)"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.queue: Any = None

    def _queue(self) -> Any:
        from saq import Queue

        return Queue.from_url(self.url, name="bench")

    async def setup(self) -> None:
        self.queue = self._queue()
        await self.queue.connect()

    async def teardown(self) -> None:
        await self.queue.disconnect()

    async def enqueue_one(self) -> None:  # type: ignore[override]
        await self.queue.enqueue("noop", ttl=-1)

    async def fill(self, n: int) -> None:
        import asyncio

        for start in range(0, n, 500):
            await asyncio.gather(*(self.enqueue_one() for _ in range(min(500, n - start))))

    def reset(self) -> None:
        flush_redis(self.url)

    def run_worker(self) -> None:
        from saq import Worker

        worker: Any = None

        async def main() -> None:
            nonlocal worker
            queue = self._queue()
            worker = Worker(queue, functions=[noop], concurrency=self.concurrency)
            await worker.start()

        async def stop() -> None:
            await worker.stop()

        run_until_sigterm(main, stop)
