"""arq (its own environment: arq 0.28 needs redis-py < 6). Async producer only, no bulk
enqueue; the worker polls the queue every ``poll_delay`` (0.5 s by default) when idle."""

from __future__ import annotations

from typing import Any, ClassVar

from bench.common import hit
from bench.peers.base import Adapter, flush_redis

MAX_JOBS = 100


async def noop(ctx: dict[str, Any]) -> None:
    """The task."""
    hit()


class ArqAdapter(Adapter):
    """arq."""

    name = "arq"
    dist = "arq"
    env = "arq"
    concurrency = MAX_JOBS
    config: ClassVar[str] = (
        f"Worker(max_jobs={MAX_JOBS}, keep_result=0), default poll_delay 0.5 s (arq polls)"
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        from arq.connections import RedisSettings

        self.settings = RedisSettings.from_dsn(url)
        self.pool: Any = None

    async def setup(self) -> None:
        from arq import create_pool

        self.pool = await create_pool(self.settings)

    async def teardown(self) -> None:
        await self.pool.aclose()

    async def enqueue_one(self) -> None:  # type: ignore[override]
        await self.pool.enqueue_job("noop", _queue_name="bench")

    async def fill(self, n: int) -> None:
        import asyncio

        for start in range(0, n, 500):
            await asyncio.gather(*(self.enqueue_one() for _ in range(min(500, n - start))))

    def reset(self) -> None:
        flush_redis(self.url)

    def run_worker(self) -> None:
        import asyncio

        from arq.worker import Worker

        asyncio.set_event_loop(asyncio.new_event_loop())  # arq looks up the current loop
        worker = Worker(
            functions=[noop],
            redis_settings=self.settings,
            queue_name="bench",
            max_jobs=self.concurrency,
            keep_result=0,
            handle_signals=True,
        )
        worker.run()
