"""Runs one library's side of a measurement, in that library's environment.

``python -m bench.driver TARGET COMMAND [options]``; prints one JSON object on stdout
(except ``worker``, which prints ``ready`` and then waits for ``go`` on stdin).

Commands:
    info      library version and configuration
    enqueue   enqueue rates: single calls, bulk, concurrent async producers; repeated
    worker    [--fill N] store N jobs, say ready, wait for "go", then work until SIGTERM
    latency   enqueue one job at a time to an idle worker and read when it started
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import URL_ENV, Recorder, percentile
from bench.peers import load
from bench.peers.base import Adapter

#: Jobs lost (not started within --timeout) after which a latency run gives up.
LOST_LIMIT = 5
#: Jobs per call in the bulk measurement.
BULK_BATCH = 1000


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a producer method that may be sync or async, from sync code."""
    out = fn(*args)
    if inspect.isawaitable(out):
        return _loop().run_until_complete(out)
    return out


_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop for the whole driver process, so async clients stay connected."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        asyncio.set_event_loop(_LOOP)
    return _LOOP


def timed_single(fn: Callable[[], Any], n: int, cap: float) -> dict[str, float]:
    """Call ``fn`` up to ``n`` times or ``cap`` seconds, one job per call, one at a time."""
    if inspect.iscoroutinefunction(fn):

        async def run() -> tuple[int, float]:
            start = time.perf_counter()
            deadline = start + cap
            done = 0
            while done < n:
                await fn()
                done += 1
                if done % 50 == 0 and time.perf_counter() > deadline:
                    break
            return done, time.perf_counter() - start

        done, elapsed = _loop().run_until_complete(run())
    else:
        start = time.perf_counter()
        deadline = start + cap
        done = 0
        while done < n:
            fn()
            done += 1
            if done % 50 == 0 and time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - start
    return {"jobs": done, "seconds": elapsed, "rate": done / elapsed}


def timed_bulk(fn: Callable[[int], Any], n: int, cap: float) -> dict[str, float]:
    """Enqueue ``n`` jobs in batches of :data:`BULK_BATCH` (or until ``cap`` seconds)."""
    start = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - start < cap:
        call(fn, min(BULK_BATCH, n - done))
        done += min(BULK_BATCH, n - done)
    elapsed = time.perf_counter() - start
    return {"jobs": done, "seconds": elapsed, "rate": done / elapsed}


def timed_concurrent(fn: Callable[[], Any], n: int, producers: int, cap: float) -> dict[str, float]:
    """``producers`` coroutines on one event loop, each awaiting one job per call."""

    async def run() -> tuple[int, float]:
        done = 0
        start = time.perf_counter()
        deadline = start + cap

        async def producer() -> None:
            nonlocal done
            while done < n and time.perf_counter() < deadline:
                done += 1
                await fn()

        await asyncio.gather(*(producer() for _ in range(producers)))
        return done, time.perf_counter() - start

    done, elapsed = _loop().run_until_complete(run())
    return {"jobs": done, "seconds": elapsed, "rate": done / elapsed}


def cmd_info(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """Version and configuration of the target."""
    version = importlib.metadata.version(adapter.dist)
    return {
        "version": version,
        "config": adapter.config,
        "python": sys.version.split()[0],
        "single_sync": adapter.enqueue_one is not None
        and not inspect.iscoroutinefunction(adapter.enqueue_one),
        "bulk": adapter.enqueue_bulk is not None,
    }


def cmd_enqueue(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """All enqueue measurements, each repeated ``--reps`` times on an empty broker."""
    call(adapter.setup)
    out: dict[str, list[dict[str, float]]] = {}
    modes: list[tuple[str, Callable[[], dict[str, float]]]] = []
    one = adapter.enqueue_one
    if one is not None:
        name = "single_async" if inspect.iscoroutinefunction(one) else "single_sync"
        modes.append((name, lambda: timed_single(one, args.single_n, args.cap)))
    one_async = adapter.enqueue_one_async
    if one_async is not None:
        modes.append(("single_async", lambda: timed_single(one_async, args.single_n, args.cap)))
    bulk = adapter.enqueue_bulk
    if bulk is not None:
        modes.append(("bulk", lambda: timed_bulk(bulk, args.bulk_n, args.cap)))
    concurrent = adapter.enqueue_one_async or (
        one if one is not None and inspect.iscoroutinefunction(one) else None
    )
    if concurrent is not None:
        modes.append(
            (
                "concurrent_async",
                lambda: timed_concurrent(concurrent, args.bulk_n, args.producers, args.cap),
            )
        )
    for name, measure in modes:
        runs = []
        for _ in range(args.reps):
            call(adapter.reset)
            runs.append(measure())
        out[name] = runs
    call(adapter.reset)
    call(adapter.teardown)
    return out


def cmd_worker(adapter: Adapter, args: argparse.Namespace) -> None:
    """Optionally fill the queue; then wait for "go" and work until SIGTERM."""
    if args.fill:
        call(adapter.setup)
        call(adapter.reset)
        call(adapter.fill, args.fill)
        call(adapter.teardown)
        if _LOOP is not None:
            _LOOP.close()
            asyncio.set_event_loop(None)  # the worker makes its own loop
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    adapter.run_worker()


def cmd_latency(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """Sequential jobs to an idle worker: enqueue time to the recorded start time."""
    rec = Recorder(args.rec)
    call(adapter.setup)
    # The quickest producer call the library has: Conveyor's awaited enqueue() (its
    # enqueue_sync on Redis hops to a private event-loop thread and back).
    one = adapter.enqueue_one_async or adapter.enqueue_one
    assert one is not None
    is_async = inspect.iscoroutinefunction(one)
    reps = []
    for _ in range(args.reps):
        samples: list[float] = []
        lost = 0
        rep_deadline = time.monotonic() + args.rep_seconds  # arq polls: ~0.25 s per job
        for _ in range(args.n):
            if time.monotonic() > rep_deadline:
                break
            base = rec.count()
            t0 = time.monotonic()
            if is_async:
                _loop().run_until_complete(one())
            else:
                one()
            deadline = t0 + args.timeout
            while rec.count() <= base and time.monotonic() < deadline:
                time.sleep(0.0001)
            if rec.count() <= base:
                lost += 1
                if lost >= LOST_LIMIT:
                    raise SystemExit(f"{lost} jobs never started: is the worker running?")
                continue
            samples.append(rec.time_of(base) - t0)
            time.sleep(args.gap)  # let the worker go idle again
        reps.append(
            {
                "p50_ms": percentile(samples, 50) * 1000,
                "p99_ms": percentile(samples, 99) * 1000,
                "mean_ms": sum(samples) / max(len(samples), 1) * 1000,
                "jobs": len(samples),
                "lost": lost,
            }
        )
    call(adapter.teardown)
    return {"runs": reps}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m bench.driver")
    parser.add_argument("target")
    parser.add_argument("command", choices=["info", "enqueue", "worker", "latency"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--single-n", type=int, default=3000)
    parser.add_argument("--bulk-n", type=int, default=10_000)
    parser.add_argument("--producers", type=int, default=64)
    parser.add_argument("--cap", type=float, default=5.0)
    parser.add_argument("--fill", type=int, default=0)
    parser.add_argument("--rec")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--gap", type=float, default=0.003)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--rep-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    adapter = load(args.target)(os.environ[URL_ENV])
    commands = {"info": cmd_info, "enqueue": cmd_enqueue, "latency": cmd_latency}
    if args.command == "worker":
        cmd_worker(adapter, args)
        return
    result = commands[args.command](adapter, args)
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
