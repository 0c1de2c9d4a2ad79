"""Dramatiq with its Redis broker: one worker process with 8 threads (Dramatiq's default),
prefetch by the broker, no retries. Dramatiq has no bulk enqueue."""

from __future__ import annotations

from typing import ClassVar

from bench.common import hit
from bench.peers.base import Adapter, flush_redis, wait_for_sigterm

THREADS = 8


class DramatiqAdapter(Adapter):
    """Dramatiq."""

    name = "dramatiq"
    dist = "dramatiq"
    concurrency = THREADS
    config: ClassVar[str] = f"RedisBroker, 1 process x {THREADS} threads, max_retries=0"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        self.broker = RedisBroker(url=url)
        dramatiq.set_broker(self.broker)

        @dramatiq.actor(queue_name="bench", max_retries=0, actor_name="noop")
        def noop() -> None:
            hit()

        self.task = noop

    def enqueue_one(self) -> None:  # type: ignore[override]
        self.task.send()

    def fill(self, n: int) -> None:
        for _ in range(n):
            self.task.send()

    def reset(self) -> None:
        flush_redis(self.url)

    def run_worker(self) -> None:
        import dramatiq

        worker = dramatiq.Worker(self.broker, worker_threads=self.concurrency, worker_timeout=100)
        worker.start()
        wait_for_sigterm()
        worker.stop()
