"""RQ: ``SimpleWorker`` (no fork per job, RQ's fast mode; the default ``Worker`` forks for
every job), ``result_ttl=0``. Bulk: ``Queue.enqueue_many`` (one pipeline)."""

from __future__ import annotations

from typing import ClassVar

from bench.common import hit
from bench.peers.base import Adapter, flush_redis


def noop() -> None:
    """The task (RQ imports it by dotted path)."""
    hit()


class RQAdapter(Adapter):
    """RQ."""

    name = "rq"
    dist = "rq"
    concurrency = 1
    config: ClassVar[str] = "SimpleWorker (no fork), result_ttl=0; bulk = enqueue_many"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        from redis import Redis
        from rq import Queue

        self.conn = Redis.from_url(url)
        self.queue = Queue("bench", connection=self.conn)

    def enqueue_one(self) -> None:  # type: ignore[override]
        self.queue.enqueue(noop, result_ttl=0)

    def enqueue_bulk(self, n: int) -> None:  # type: ignore[override]
        from rq import Queue

        self.queue.enqueue_many([Queue.prepare_data(noop, result_ttl=0) for _ in range(n)])

    def fill(self, n: int) -> None:
        for start in range(0, n, 1000):
            self.enqueue_bulk(min(1000, n - start))

    def reset(self) -> None:
        flush_redis(self.url)

    def run_worker(self) -> None:
        import logging

        from rq import SimpleWorker

        logging.getLogger("rq").setLevel(logging.WARNING)
        worker = SimpleWorker([self.queue], connection=self.conn)
        worker.work(burst=False, logging_level="WARNING", with_scheduler=False)
