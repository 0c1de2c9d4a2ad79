"""Scenarios 1, 2 and 4: workers (and producers) killed with SIGKILL, workers drained with
SIGTERM, several processes on one SQLite file."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conveyor
from chaos import checker
from chaos.harness import (
    Fleet,
    Proc,
    all_records,
    start_producer,
    wait_settled,
    worker_crashes,
)
from chaos.targets import Target

QUEUE = "chaos"
#: The worker's idle wait: how long an idle worker may take to notice an expired lease.
SWEEP_SECONDS = 1.0


@dataclass(frozen=True)
class CrashSize:
    """How big a crash run is."""

    jobs: int
    kills: int
    workers: int
    producers: int
    rate: float  # jobs per second, all producers together
    kill_fraction: float  # jobs that SIGKILL their own worker at a chosen point
    lease: float = 2.0
    concurrency: int = 6


CRASH_CI = CrashSize(jobs=1500, kills=6, workers=4, producers=2, rate=150, kill_fraction=0.002)
CRASH_FULL = CrashSize(
    jobs=20_000, kills=25, workers=4, producers=2, rate=350, kill_fraction=0.0008
)
SQLITE_CI = CrashSize(jobs=1500, kills=10, workers=3, producers=3, rate=300, kill_fraction=0.0)
SQLITE_FULL = CrashSize(jobs=12_000, kills=40, workers=3, producers=3, rate=400, kill_fraction=0.0)


async def crash_run(
    target: Target,
    directory: Path,
    seed: int,
    size: CrashSize,
    *,
    scenario: str,
    kill_producers: bool = False,
) -> dict[str, Any]:
    """Run ``size.jobs`` jobs while SIGKILLing workers (and producers) at random moments."""
    rng = random.Random(seed)
    fleet = Fleet(target.url, directory, [QUEUE], size.lease, concurrency=size.concurrency)
    fleet.start(size.workers)
    await fleet.wait_booted(size.workers)
    per = size.jobs // size.producers
    next_first = 0
    producers: list[Proc] = []

    def new_producer(count: int) -> None:
        nonlocal next_first
        producers.append(
            start_producer(
                target.url, directory, size.lease, first=next_first, count=count,
                seed=rng.randrange(1 << 30), rate=size.rate / size.producers,
                kill_fraction=size.kill_fraction,
            )
        )  # fmt: skip
        next_first += count

    for _ in range(size.producers):
        new_producer(per)
    duration = size.jobs / size.rate
    interval = duration / (size.kills + 1)
    integrity: list[str] = []
    kills = producer_kills = 0
    started = time.monotonic()
    next_kill = started + interval * rng.uniform(0.5, 1.5)
    while True:
        fleet.reap()
        running = [p for p in producers if p.popen.poll() is None]
        if kills >= size.kills and not running:
            break
        if time.monotonic() > started + duration * 4 + 60:
            break  # bounded, whatever happens
        if kills < size.kills and time.monotonic() >= next_kill:
            if kill_producers and running and rng.random() < 0.5:
                victim = rng.choice(running)
                fleet.log.write("kill", target=victim.pid, sig="SIGKILL", role="producer")
                victim.popen.send_signal(signal.SIGKILL)
                victim.popen.wait(10)
                producer_kills += 1
                new_producer(per // 2)  # keep the write load up
            elif fleet.kill_random(rng) is None:
                await asyncio.sleep(0.05)
                continue  # every worker is still starting: try again shortly
            kills += 1
            if target.sqlite_path is not None:
                integrity.append(target.integrity())
            next_kill = time.monotonic() + interval * rng.uniform(0.5, 1.5)
        await asyncio.sleep(0.02)
    for p in producers:
        p.err.close()
    app = conveyor.App(target.url)
    try:
        settled = await wait_settled(app, QUEUE, fleet, timeout=60 + size.lease * 4)
        codes = await fleet.stop()
        records = await all_records(app, QUEUE)
    finally:
        await app.close()
    if target.sqlite_path is not None:
        integrity.append(target.integrity())
    result = checker.check(
        directory,
        records,
        scenario=scenario,
        seed=seed,
        engine=target.engine,
        extra={
            "settled": settled,
            "producer_kills": producer_kills,
            "worker_crashes": worker_crashes(fleet.stderr_text()),
            "final_exit_codes_nonzero": sum(1 for c in codes if c != 0),
            "recovery_bound": size.lease + SWEEP_SECONDS + 2.0,
        },
    )
    if integrity:
        result["integrity_checks"] = len(integrity)
        result["integrity_failures"] = sum(1 for r in integrity if r != "ok")
    return result


@dataclass(frozen=True)
class DrainSize:
    """How big a graceful-drain run is."""

    jobs: int
    stops: int
    workers: int = 2
    grace: float = 2.0
    long_fraction: float = 0.05


DRAIN_CI = DrainSize(jobs=400, stops=6)
DRAIN_FULL = DrainSize(jobs=4000, stops=40)


async def drain_run(target: Target, directory: Path, seed: int, size: DrainSize) -> dict[str, Any]:
    """Repeated SIGTERM (sometimes twice) while jobs of 0.1-1 s run; some run past the grace.

    Jobs that finish within the grace period must never run again; the rest are released
    and run again later; every worker must exit 0.
    """
    from chaos import tasks
    from chaos.truth import TruthLog

    rng = random.Random(seed)
    lease = 5.0
    fleet = Fleet(target.url, directory, [QUEUE], lease, concurrency=6, grace=size.grace)
    app = conveyor.App(target.url)
    producer_log = TruthLog(directory, "producer")
    try:
        engine = await app.engine()
        batch = []
        for n in range(size.jobs):
            long_job = rng.random() < size.long_fraction
            ms = rng.uniform(3000, 6000) if long_job else rng.uniform(100, 1000)
            batch.append(tasks.work.build(tasks.Work(ms=ms), job_id=f"d-{n:06d}"))
        ids = [j.id for j in batch]
        producer_log.write("try", ids=ids)
        await engine.enqueue(batch)
        producer_log.write("ok", ids=ids)
        fleet.start(size.workers)
        await asyncio.sleep(2.0)  # let the workers start and take jobs
        hurried = 0
        for _ in range(size.stops):
            live = fleet.alive()
            if not live:
                break
            victim = rng.choice(live)
            fleet.kill(victim, signal.SIGTERM)
            if rng.random() < 0.3:
                await asyncio.sleep(0.3)
                fleet.kill(victim, signal.SIGTERM)  # a second signal hurries it
                hurried += 1
            deadline = time.monotonic() + size.grace + 15
            while victim.popen.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if victim.popen.poll() is None:
                fleet.kill(victim)  # hung past its grace: a failure the checker will show
                victim.popen.wait(10)
            fleet.reap()
            await asyncio.sleep(rng.uniform(0.5, 1.5))
        settled = await wait_settled(app, QUEUE, fleet, timeout=120)
        codes = [code for _, code in fleet.exits]
        codes += await fleet.stop()
        records = await all_records(app, QUEUE)
    finally:
        await app.close()
    return checker.check(
        directory,
        records,
        scenario="drain",
        seed=seed,
        engine=target.engine,
        extra={
            "settled": settled,
            "sigterms": size.stops,
            "hurried": hurried,
            "exits": len(codes),
            "exit_nonzero": sum(1 for c in codes if c != 0),
            "worker_crashes": worker_crashes(fleet.stderr_text()),
            "grace": size.grace,
        },
    )
