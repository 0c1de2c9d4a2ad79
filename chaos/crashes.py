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
    producing,
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
    ms_max: float = 40.0  # the longest job
    batch: int = 10  # jobs per enqueue call
    commit_kill_odds: float = 0.0  # SQLite: chance per COMMIT that the process dies first


CRASH_CI = CrashSize(jobs=1500, kills=6, workers=4, producers=2, rate=150, kill_fraction=0.002)
CRASH_FULL = CrashSize(
    jobs=20_000, kills=25, workers=4, producers=2, rate=350, kill_fraction=0.0008
)
#: SQS on moto takes about 15 enqueues a second; a slower run with more chosen-point kills.
CRASH_SQS_CI = CrashSize(jobs=300, kills=4, workers=3, producers=1, rate=15, kill_fraction=0.02)
CRASH_SQS_FULL = CrashSize(
    jobs=3000, kills=20, workers=3, producers=1, rate=15, kill_fraction=0.005
)
SQLITE_CI = CrashSize(
    jobs=3000, kills=8, workers=3, producers=3, rate=300, kill_fraction=0.0, ms_max=5, batch=3,
    commit_kill_odds=0.002,
)  # fmt: skip
SQLITE_FULL = CrashSize(
    jobs=20_000, kills=40, workers=3, producers=3, rate=300, kill_fraction=0.0, ms_max=5,
    batch=3, commit_kill_odds=0.001,
)  # fmt: skip


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
    odds = {"CHAOS_KILL_BEFORE_COMMIT": str(size.commit_kill_odds)}
    fleet = Fleet(
        target.url, directory, [QUEUE], size.lease, concurrency=size.concurrency, env=odds
    )
    fleet.start(size.workers)
    await fleet.wait_booted(size.workers)
    duration = size.jobs / size.rate
    until = time.time() + duration + 2.0  # producers need a moment to start
    next_first = 0
    producers: list[Proc] = []

    def new_producer() -> None:
        """A producer of its own id range, at its share of the rate, until the deadline."""
        nonlocal next_first
        producers.append(
            start_producer(
                target.url, directory, size.lease, first=next_first,
                count=size.jobs // size.producers, seed=rng.randrange(1 << 30),
                rate=size.rate / size.producers, kill_fraction=size.kill_fraction,
                ms_max=size.ms_max, batch=size.batch, env=odds, until=until,
            )
        )  # fmt: skip
        next_first += 1_000_000

    for _ in range(size.producers):
        new_producer()
    interval = duration / (size.kills + 1)
    integrity: list[str] = []
    replaced: set[int] = set()
    kills = producer_kills = 0
    started = time.monotonic()
    next_kill = started + interval * rng.uniform(0.5, 1.5)
    while True:
        died = fleet.reap()
        for p in producers:
            if p.popen.poll() is not None and p.popen.returncode < 0 and p.pid not in replaced:
                replaced.add(p.pid)  # died before a COMMIT: carry on with new job ids
                new_producer()
                died += 1
        if died and target.sqlite_path is not None:
            integrity.append(target.integrity())
        running = [p for p in producers if p.popen.poll() is None]
        if kills >= size.kills and not running:
            break
        if time.monotonic() > started + duration * 4 + 60:
            break  # bounded, whatever happens
        if kills < size.kills and time.monotonic() >= next_kill:
            busy = producing(directory, running)
            if kill_producers and busy and rng.random() < 0.5:
                victim = rng.choice(busy)
                fleet.log.write("kill", target=victim.pid, sig="SIGKILL", role="producer")
                victim.popen.send_signal(signal.SIGKILL)
                victim.popen.wait(10)
                producer_kills += 1
                replaced.add(victim.pid)
                new_producer()  # keep the write load up
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
            "worker_kills": kills - producer_kills,
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


DRAIN_CI = DrainSize(jobs=150, stops=5)
DRAIN_FULL = DrainSize(jobs=2000, stops=40, workers=3)


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
        hurried = stops = 0
        drain_times: list[float] = []
        hurry_times: list[float] = []
        while stops < size.stops:
            live = fleet.booted()  # a worker still importing has no handler yet
            if not live:
                fleet.reap()
                await asyncio.sleep(0.1)
                continue
            stops += 1
            victim = rng.choice(live)
            fleet.kill(victim, signal.SIGTERM)
            signalled = time.monotonic()
            hurry = rng.random() < 0.3
            if hurry:
                await asyncio.sleep(0.3)
                fleet.kill(victim, signal.SIGTERM)  # a second signal hurries it
                hurried += 1
                signalled = time.monotonic()
            deadline = time.monotonic() + size.grace + 15
            while victim.popen.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            (hurry_times if hurry else drain_times).append(time.monotonic() - signalled)
            if victim.popen.poll() is None:
                fleet.kill(victim)  # hung past its grace: a failure the checker will show
                victim.popen.wait(10)
            fleet.reap()
            await asyncio.sleep(rng.uniform(0.5, 1.5))
        # Jobs average ~0.8 s and a stop takes a worker away for a few seconds.
        settled = await wait_settled(app, QUEUE, fleet, timeout=60 + size.jobs * 0.1)
        await fleet.stop()
        records = await all_records(app, QUEUE)
    finally:
        await app.close()
    # A second SIGTERM that lands after the worker finished draining (while the interpreter
    # exits) meets the default handler: exit -15, with every job already settled. Such an
    # exit is told apart by the missing "second signal" line of a worker that did see it.
    late = sum(
        1
        for pid, code in fleet.exits
        if code == -signal.SIGTERM
        and "second signal" not in fleet.err_files[pid].read_text(errors="replace")
    )
    cancels = sum(1 for e in checker.load(directory).events if e["ev"] == "cancel")
    return checker.check(
        directory,
        records,
        scenario="drain",
        seed=seed,
        engine=target.engine,
        extra={
            "settled": settled,
            "sigterms": stops,
            "hurried": hurried,
            "drain_seconds_max": round(max(drain_times, default=0.0), 3),
            "hurry_seconds_max": round(max(hurry_times, default=0.0), 3),
            "exits": len(fleet.exits),
            "exit_nonzero": sum(1 for _, c in fleet.exits if c != 0) - late,
            "late_signal_exits": late,
            "released_unfinished": cancels,
            "worker_crashes": worker_crashes(fleet.stderr_text()),
            "grace": size.grace,
        },
    )
