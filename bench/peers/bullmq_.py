"""The BullMQ Python port: async Worker with concurrency 100, ``removeOnComplete``.
Bulk: ``Queue.addBulk``."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from bench.common import hit
from bench.peers.base import Adapter, flush_redis, run_until_sigterm

CONCURRENCY = 100
OPTS = {"removeOnComplete": True, "removeOnFail": True}


async def process(job: Any, token: str) -> None:
    """The task."""
    hit()


class BullMQAdapter(Adapter):
    """bullmq (Python)."""

    name = "bullmq"
    dist = "bullmq"
    concurrency = CONCURRENCY
    config: ClassVar[str] = f"Worker(concurrency={CONCURRENCY}), removeOnComplete; bulk = addBulk"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.queue: Any = None

    async def setup(self) -> None:
        from bullmq import Queue

        self.queue = Queue("bench", {"connection": self.url})

    async def teardown(self) -> None:
        await self.queue.close()

    async def enqueue_one(self) -> None:  # type: ignore[override]
        await self.queue.add("noop", {}, OPTS)

    async def enqueue_bulk(self, n: int) -> None:  # type: ignore[override]
        await self.queue.addBulk([{"name": "noop", "data": {}, "opts": OPTS} for _ in range(n)])

    async def fill(self, n: int) -> None:
        for start in range(0, n, 1000):
            await self.enqueue_bulk(min(1000, n - start))

    def reset(self) -> None:
        flush_redis(self.url)

    def run_worker(self) -> None:
        from bullmq import Worker

        worker: Any = None

        async def main() -> None:
            nonlocal worker
            worker = Worker(
                "bench", process, {"connection": self.url, "concurrency": self.concurrency}
            )
            while not worker.closing:
                await asyncio.sleep(0.2)

        async def stop() -> None:
            await worker.close()

        run_until_sigterm(main, stop)
