"""Conveyor on Redis and on SQLite: async no-op task, completed jobs not kept (``Keep(0)``,
like the peers, which keep no result by default or were told not to)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import conveyor
from bench.common import hit
from bench.peers.base import Adapter, flush_redis

#: Jobs run at once by one worker process; reserves and settles are batched up to this.
CONCURRENCY = 200


class _Conveyor(Adapter):
    dist = "conveyor"
    env = "main"
    concurrency = CONCURRENCY

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.app = conveyor.App(url)

        @self.app.task(name="bench.noop", keep_completed=conveyor.Keep(count=0))
        async def noop() -> None:
            hit()

        self.task = noop

    def enqueue_one(self) -> None:  # type: ignore[override]
        """``enqueue_sync``: what a Django view or a script calls."""
        self.task.enqueue_sync()

    async def enqueue_one_async(self) -> None:  # type: ignore[override]
        """``await task.enqueue()`` from async code."""
        await self.task.enqueue()

    async def enqueue_bulk(self, n: int) -> None:  # type: ignore[override]
        """``enqueue_many``: one engine round trip for the batch."""
        await self.task.enqueue_many([None] * n)

    async def fill(self, n: int) -> None:
        for start in range(0, n, 1000):
            await self.task.enqueue_many([None] * min(1000, n - start))

    async def teardown(self) -> None:
        await self.app.close()

    def run_worker(self) -> None:
        async def work() -> None:
            worker = conveyor.Worker(self.app, concurrency=self.concurrency)
            await worker.run_until_signal()
            await self.app.close()

        asyncio.run(work())


class ConveyorRedis(_Conveyor):
    """Conveyor's Redis engine."""

    name = "conveyor-redis"
    config: ClassVar[str] = (
        f"async task, Worker(concurrency={CONCURRENCY}), one process per worker, "
        "Keep(count=0); leases, batched reserve and settle"
    )

    def __init__(self, url: str) -> None:
        super().__init__(url + "?prefix=bench")

    def reset(self) -> None:
        flush_redis(urlsplit(self.url)._replace(query="").geturl())


class ConveyorSQLite(_Conveyor):
    """Conveyor's SQLite engine (WAL, synchronous=NORMAL, the defaults)."""

    name = "conveyor-sqlite"
    backend = "sqlite"
    config: ClassVar[str] = (
        f"async task, Worker(concurrency={CONCURRENCY}), WAL + synchronous=NORMAL (defaults), "
        "Keep(count=0)"
    )

    def __init__(self, url: str) -> None:
        path = Path(url) / "conveyor.db"
        super().__init__(f"sqlite:///{path}")
        self.path = path

    def reset(self) -> None:
        if not self.path.exists():
            return
        db = sqlite3.connect(self.path, timeout=10)
        with contextlib.suppress(sqlite3.OperationalError):  # no table yet
            db.execute("DELETE FROM jobs")
            db.commit()
        db.close()
