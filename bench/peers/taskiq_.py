"""taskiq with taskiq-redis's ``RedisStreamBroker`` (acknowledged stream consumer groups,
XREADGROUP of 100 entries per call), 100 async tasks at once, no result backend. Async
producer only; no bulk enqueue."""

from __future__ import annotations

from typing import Any, ClassVar

from bench.common import hit
from bench.peers.base import Adapter, flush_redis, run_until_sigterm

MAX_ASYNC = 100


class TaskiqAdapter(Adapter):
    """taskiq + taskiq-redis."""

    name = "taskiq"
    dist = "taskiq"
    concurrency = MAX_ASYNC
    config: ClassVar[str] = (
        f"RedisStreamBroker (xread_count=100, acks), Receiver(max_async_tasks={MAX_ASYNC}), "
        "no result backend"
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        from taskiq_redis import RedisStreamBroker

        # consumer_id "0": a new consumer group reads the jobs stored before it was created
        # (the default "$" would skip the pre-filled queue of the drain measurement).
        self.broker = RedisStreamBroker(url=url, queue_name="bench", consumer_id="0")

        @self.broker.task(task_name="bench.noop")
        async def noop() -> None:
            hit()

        self.task = noop

    async def setup(self) -> None:
        await self.broker.startup()

    async def teardown(self) -> None:
        await self.broker.shutdown()

    async def enqueue_one(self) -> None:  # type: ignore[override]
        await self.task.kiq()

    async def fill(self, n: int) -> None:
        import asyncio

        for start in range(0, n, 500):
            await asyncio.gather(*(self.enqueue_one() for _ in range(min(500, n - start))))

    def reset(self) -> None:
        flush_redis(self.url)

    def run_worker(self) -> None:
        import asyncio

        from taskiq.receiver import Receiver

        finish: Any = None

        async def main() -> None:
            nonlocal finish
            finish = asyncio.Event()
            self.broker.is_worker_process = True
            await self.broker.startup()
            receiver = Receiver(self.broker, max_async_tasks=self.concurrency, run_startup=False)
            await receiver.listen(finish)
            await self.broker.shutdown()

        def stop() -> None:
            finish.set()

        run_until_sigterm(main, stop)
