"""First throughput figure of the Redis engine: no-op async jobs through one worker process.

Enqueues ``--jobs`` jobs with ``enqueue_many`` (not timed), then times one
``conveyor.Worker`` in burst mode until the queue is empty. Keys live under a random prefix
that is deleted afterwards, so it is safe against a shared server (it never flushes it)::

    .venv/bin/python bench/redis_throughput.py --url redis://127.0.0.1:6379/0 --jobs 10000

``--forget`` deletes jobs as they complete (``Keep(count=0)``) instead of keeping them under
the default retention, which saves two index writes per job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from redis.asyncio import Redis

import conveyor


async def run(url: str, jobs: int, concurrency: int, forget: bool) -> float:
    """Enqueue ``jobs`` no-op jobs, drain them with one worker; returns jobs per second."""
    prefix = f"bench{os.urandom(4).hex()}"
    app = conveyor.App(f"{url}{'&' if '?' in url else '?'}prefix={prefix}")
    keep = conveyor.Keep(count=0) if forget else conveyor.Keep()

    @app.task(queue="bench", keep_completed=keep)
    async def noop() -> None:
        return None

    try:
        for start in range(0, jobs, 5000):
            await noop.enqueue_many([None] * min(5000, jobs - start))
        worker = conveyor.Worker(app, concurrency=concurrency, burst=True)
        began = time.perf_counter()
        counts = await worker.run()
        elapsed = time.perf_counter() - began
        if counts.completed != jobs:
            raise SystemExit(f"expected {jobs} completed jobs, the worker counted {counts}")
        return jobs / elapsed
    finally:
        await app.close()
        await _delete_prefix(url, prefix)


async def _delete_prefix(url: str, prefix: str) -> None:
    client = Redis.from_url(url.split("?", 1)[0])
    try:
        batch = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(batch), 1000):
            await client.unlink(*batch[start : start + 1000])
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    parser.add_argument("--forget", action="store_true", help="delete jobs on completion")
    args = parser.parse_args()
    rates = [
        asyncio.run(run(args.url, args.jobs, args.concurrency, args.forget))
        for _ in range(args.rounds)
    ]
    shown = ", ".join(f"{r:,.0f}" for r in rates)
    print(
        f"{args.jobs} no-op jobs, concurrency {args.concurrency}, one worker process: "
        f"best {max(rates):,.0f} jobs/s (runs: {shown})"
    )


if __name__ == "__main__":
    main()
