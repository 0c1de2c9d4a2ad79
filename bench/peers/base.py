"""What every library's adapter provides to the driver, and helpers they share.

An adapter wraps one library in its natural high-throughput configuration: a producer
(one job per call, bulk where the library has it, async where it is async) and a worker
that runs the no-op task (:func:`bench.common.hit`) until SIGTERM. Producer methods are
plain functions or coroutines; the driver looks at which and runs them accordingly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar


class Adapter:
    """Base class. Subclasses set the class attributes and implement the methods they have."""

    #: Key used on the command line and in the results.
    name: ClassVar[str] = ""
    #: Distribution whose version is reported.
    dist: ClassVar[str] = ""
    #: "redis" or "sqlite".
    backend: ClassVar[str] = "redis"
    #: One line saying how the library is configured and run.
    config: ClassVar[str] = ""
    #: Jobs run at once in one worker process.
    concurrency: ClassVar[int] = 10
    #: Which environment runs it: "main" (Conveyor's .venv), "peers", "arq".
    env: ClassVar[str] = "peers"

    def __init__(self, url: str) -> None:
        self.url = url

    # -- producers (override what the library has) -------------------------------------------

    #: ``enqueue_one()`` stores one job; sync function or coroutine function.
    enqueue_one: Callable[[], Any] | None = None
    #: ``enqueue_bulk(n)`` stores n jobs with the library's bulk API.
    enqueue_bulk: Callable[[int], Any] | None = None
    #: Extra single-call mode: Conveyor measures both ``enqueue_sync`` and awaited calls.
    enqueue_one_async: Callable[[], Awaitable[Any]] | None = None

    def setup(self) -> Any:
        """Connect the producer (may be a coroutine)."""
        return None

    def teardown(self) -> Any:
        """Disconnect the producer (may be a coroutine)."""
        return None

    def reset(self) -> Any:
        """Empty the broker so that every repetition starts alike (may be a coroutine)."""
        return None

    def fill(self, n: int) -> Any:
        """Store ``n`` jobs as fast as the library can, before a drain (not measured)."""
        raise NotImplementedError

    def run_worker(self) -> None:
        """Run one worker process's loop until SIGTERM, then return."""
        raise NotImplementedError


def flush_redis(url: str) -> None:
    """FLUSHDB on the benchmark server (redis-py is in every environment)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def run_until_sigterm(main: Callable[[], Awaitable[Any]], stop: Callable[[], Any]) -> None:
    """Run ``main()`` on a fresh event loop; on SIGTERM/SIGINT call ``stop()`` (which may be a
    coroutine) and, if ``main`` has not returned 10 s later, cancel it."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main())
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        waiter = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            out = stop()
            if asyncio.iscoroutine(out):
                with contextlib.suppress(Exception):
                    await out
            done, _ = await asyncio.wait({task}, timeout=10)
            if not done:
                task.cancel()
        waiter.cancel()
        with contextlib.suppress(BaseException):
            await task

    asyncio.run(runner())


def wait_for_sigterm() -> None:
    """Block the main thread until SIGTERM or SIGINT."""
    got = []

    def handler(signum: int, frame: object) -> None:
        got.append(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not got:
        signal.pause()
