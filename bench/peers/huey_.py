"""Huey on Redis (``RedisHuey``, blocking BRPOP) and on SQLite (``SqliteHuey``).

Results are off (``results=False``): a no-op returns nothing worth storing. The consumer runs
thread workers in one process, the way ``huey_consumer -k thread -w N`` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from bench.common import hit
from bench.peers.base import Adapter, flush_redis

WORKERS = 4


class _Huey(Adapter):
    dist = "huey"
    concurrency = WORKERS
    #: Consumer polling delays (seconds); only matter when the queue is empty.
    initial_delay: ClassVar[float] = 0.1
    max_delay: ClassVar[float] = 10.0

    def build(self) -> Any:
        raise NotImplementedError

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.huey = self.build()

        @self.huey.task(name="bench.noop")
        def noop() -> None:
            hit()

        self.task = noop

    def enqueue_one(self) -> None:  # type: ignore[override]
        self.task()

    def fill(self, n: int) -> None:
        for _ in range(n):
            self.task()

    def run_worker(self) -> None:
        from huey.consumer import Consumer

        consumer = Consumer(
            self.huey,
            workers=self.concurrency,
            worker_type="thread",
            periodic=False,
            initial_delay=self.initial_delay,
            max_delay=self.max_delay,
            check_worker_health=False,
        )
        consumer.run()  # SIGTERM stops it (huey's own handler)


class HueyRedis(_Huey):
    """``RedisHuey``: one BRPOP per job, no acknowledgement."""

    name = "huey"
    config: ClassVar[str] = (
        f"RedisHuey(results=False, blocking), consumer with {WORKERS} thread workers"
    )

    def build(self) -> Any:
        from huey import RedisHuey

        return RedisHuey("bench", url=self.url, results=False)

    def reset(self) -> None:
        flush_redis(self.url)


class HueySQLite(_Huey):
    """``SqliteHuey``: the storage polls the table; the consumer sleeps when it is empty."""

    name = "huey-sqlite"
    backend = "sqlite"
    concurrency = 1
    initial_delay = 0.01
    max_delay = 0.01
    config: ClassVar[str] = (
        "SqliteHuey(results=False), consumer with 1 thread worker (more only contend for the "
        "file), poll delay 10 ms (default 100 ms, backing off to 10 s)"
    )

    def build(self) -> Any:
        from huey import SqliteHuey

        self.path = Path(self.url) / "huey.db"
        return SqliteHuey("bench", filename=str(self.path), results=False)

    def reset(self) -> None:
        self.huey.flush()
        os.sync()
