"""Scenarios 6 and 7: timeouts of CPU-bound jobs on busy cores, and hostile payloads written
straight into the engine."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conveyor
from chaos import checker, tasks
from chaos.harness import Fleet, all_records, pending, wait_settled, worker_crashes
from chaos.targets import Target
from chaos.truth import TruthLog
from conveyor.records import NewJob, Outcome, State

BURN = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {seconds}:\n    pass\n"


@dataclass(frozen=True)
class TimeoutSize:
    """How big a timeout run is."""

    jobs: int
    burners: int = 2
    concurrency: int = 2


TIMEOUT_CI = TimeoutSize(jobs=6)
TIMEOUT_FULL = TimeoutSize(jobs=60)


async def timeouts_run(
    target: Target, directory: Path, seed: int, size: TimeoutSize
) -> dict[str, Any]:
    """CPU-bound ``executor="process"`` jobs that would spin for 30 s, with a 1 s timeout,
    while other processes keep both cores busy: each must really stop within timeout + 1 s
    (its child's last heartbeat tick tells when it stopped burning CPU)."""
    fleet = Fleet(target.url, directory, ["cpu"], 10.0, concurrency=size.concurrency)
    app = conveyor.App(target.url)
    log = TruthLog(directory, "producer")
    seconds = 30 + size.jobs * 2
    burners = [
        subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)])
        for _ in range(size.burners)
    ]
    cpu_before = _cpu_times()
    try:
        engine = await app.engine()
        spin = tasks.Spin(seconds=30)
        jobs = [tasks.spin.build(spin, job_id=f"s-{n:04d}") for n in range(size.jobs)]
        log.write("try", ids=[j.id for j in jobs])
        await engine.enqueue(jobs)
        log.write("ok", ids=[j.id for j in jobs])
        fleet.start(1)
        deadline = time.monotonic() + 60 + size.jobs * 3
        while time.monotonic() < deadline:
            if await _pending(app) == 0:
                break
            await asyncio.sleep(0.5)
        settled = await wait_settled(app, "cpu", fleet, timeout=5)
        busy = _cpu_busy(cpu_before, _cpu_times())
        await fleet.stop()
        records = await all_records(app, "cpu")
    finally:
        for b in burners:
            b.kill()
            b.wait()
        await app.close()
    t = checker.load(directory)
    overrun: list[float] = []
    attempts: list[float] = []
    ticks_after_failure = 0
    for job_id, runs in t.runs.items():
        record = records.get(job_id)
        if record is None or not record.failures:
            continue
        failure = record.failures[-1]
        attempts.append((failure.ended_at or 0.0) - (failure.started_at or 0.0))
        for run in runs:
            # The timeout counts from the function's start in its child (the child's own
            # start-up is not charged to the job); the last tick tells when it stopped.
            overrun.append(run.last_wall - run.start_wall - tasks.SPIN_TIMEOUT)
            ticks_after_failure += int(run.last_wall > (failure.ended_at or 0.0) + 0.2)
    wrong = sum(
        1
        for r in records.values()
        if r.state is not State.DEAD or [a.outcome for a in r.failures] != [Outcome.TIMEOUT]
    )
    return checker.check(
        directory,
        records,
        scenario="timeouts",
        seed=seed,
        engine=target.engine,
        expected_dead=set(records),
        extra={
            "settled": settled,
            "timeout": tasks.SPIN_TIMEOUT,
            "stopped_after_timeout_max": round(max(overrun, default=0.0), 3),
            "stopped_after_timeout_p50": round(checker.percentile(overrun, 50) or 0.0, 3),
            "ticks_after_failure": ticks_after_failure,
            "attempt_seconds_max": round(max(attempts, default=0.0), 3),
            "not_timed_out": wrong,
            "cpu_busy": round(busy, 3),
            "worker_crashes": worker_crashes(fleet.stderr_text()),
        },
    )


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def _cpu_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The fraction of CPU time (all cores) that was busy between two readings."""
    idle, total = after[0] - before[0], after[1] - before[1]
    return 1.0 - idle / total if total else 0.0


async def _pending(app: conveyor.App) -> int:
    return await pending(app, "cpu")


#: A payload ``chaos.typed`` accepts, for jobs whose options are the hostile part.
VALID = b'{"n": 1, "name": "valid"}'
#: Per-job overrides no worker can use.
HOSTILE_OPTIONS: list[dict[str, Any]] = [
    {"retries": "x"},
    {"timeout": -1},
    {"timeout": "1"},
    {"backoff": {"kind": 5}},
]


def pickle_bait(marker: Path) -> list[bytes]:
    """Two pickles (protocols 0 and 2, written by hand: no pickle import) that would run
    ``touch marker`` if anything ever unpickled them."""
    cmd = f"touch {marker}".encode()
    proto0 = b"cos\nsystem\n(S'" + cmd + b"'\ntR."
    proto2 = b"\x80\x02cos\nsystem\nX" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R."
    return [proto0, proto2]


def hostile_payloads(marker: Path) -> dict[str, bytes]:
    """Payloads the ``chaos.typed`` task (``{"n": int, "name": str}``) must refuse."""
    payloads = {
        "truncated": b'{"n": 1, "name": "tru',
        "wrong-types": b'{"n": "one", "name": 2}',
        "missing-field": b'{"n": 1}',
        "array": b"[1, 2, 3]",
        "null": b"null",
        "empty": b"",
        "garbage": bytes(range(256)),
        "bad-utf8": b'{"n": 1, "name": "\xff\xfe"}',
        "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
        "huge-int": b'{"n": 1' + b"0" * 5000 + b', "name": "x"}',
        "nan": b'{"n": NaN, "name": "x"}',
        "float-for-int": b'{"n": 1.5, "name": "x"}',
        "duplicate-key": b'{"n": 1, "name": "x", "n": "y"}',
        "big-string": b'{"n": 1, "name": ' + b"[" + b"1," * 100_000 + b"1]}",
    }
    for i, bait in enumerate(pickle_bait(marker)):
        payloads[f"pickle-{i}"] = bait
    return payloads


async def hostile_run(target: Target, directory: Path, seed: int, full: bool) -> dict[str, Any]:
    """Write undecodable payloads (and a job naming no task) straight into the engine,
    interleaved with valid jobs; every bad one must be dead-lettered once, with the reason,
    and nothing may crash or execute."""
    marker = directory / "PWNED"
    rounds = 5 if full else 1
    raw: list[NewJob] = []
    now = time.time()
    bad: set[str] = set()
    for r in range(rounds):
        for name, payload in hostile_payloads(marker).items():
            job_id = f"h-{name}-{r}"
            raw.append(NewJob("hostile", job_id, "chaos.typed", payload, 0, now, now))
            bad.add(job_id)
        raw.append(NewJob("hostile", f"h-unknown-task-{r}", "no.such.task", b"{}", 0, now, now))
        bad.add(f"h-unknown-task-{r}")
        for i, options in enumerate(HOSTILE_OPTIONS):  # a valid payload, unusable overrides
            job_id = f"h-options-{i}-{r}"
            raw.append(NewJob("hostile", job_id, "chaos.typed", VALID, 0, now, now, options))
            bad.add(job_id)
        for n in range(10):
            raw.append(tasks.typed.build(tasks.Typed(n=n, name="ok"), job_id=f"ok-{r}-{n}"))
    app = conveyor.App(target.url)
    log = TruthLog(directory, "producer")
    fleet = Fleet(target.url, directory, ["hostile"], 10.0, concurrency=4)
    try:
        engine = await app.engine()
        log.write("try", ids=[j.id for j in raw])
        await engine.enqueue(raw)
        if target.sqlite_path is not None:  # values of the wrong SQL type, too
            bad |= _raw_sqlite_rows(target.sqlite_path, now)
        log.write("ok", ids=sorted({j.id for j in raw} | bad))
        fleet.start(2)
        settled = await wait_settled(app, "hostile", fleet, timeout=60)
        alive = len(fleet.alive())
        await fleet.stop()
        records = await all_records(app, "hostile")
    finally:
        await app.close()
    t = checker.load(directory)
    dead_events: dict[str, int] = {}
    for ev in t.events:
        if ev["ev"] == "dead":
            dead_events[ev["job"]] = dead_events.get(ev["job"], 0) + 1
    not_once = 0
    reasons: dict[str, int] = {}
    for job_id in bad:
        r = records.get(job_id)
        ok = (
            r is not None
            and r.state is State.DEAD
            and r.attempts == 1
            and len(r.failures) == 1
            and r.failures[0].outcome in (Outcome.INVALID, Outcome.UNKNOWN_TASK)
            and r.failures[0].error_type in ("PayloadInvalid", "UnknownTask", "OptionsInvalid")
            and bool(r.failures[0].message)
            and dead_events.get(job_id) == 1
        )
        not_once += not ok
        if r is not None and r.failures:
            reasons[r.failures[0].error_type] = reasons.get(r.failures[0].error_type, 0) + 1
    return checker.check(
        directory,
        records,
        scenario="hostile",
        seed=seed,
        engine=target.engine,
        expected_dead=bad,
        extra={
            "settled": settled,
            "hostile": len(bad),
            "hostile_not_dead_lettered_once": not_once,
            "reasons": reasons,
            "code_executed": marker.exists(),
            "workers_alive_at_end": alive,
            "worker_crashes": worker_crashes(fleet.stderr_text())
            + sum(1 for _, code in fleet.exits if code != 0),
        },
    )


def _raw_sqlite_rows(path: Path, now: float) -> set[str]:
    """Rows whose payload column holds TEXT or a number instead of a BLOB, and rows whose
    options column is not a JSON object."""
    rows: list[tuple[str, Any, str]] = [
        ("h-sql-text", '{"n": "x"', "{}"),
        ("h-sql-integer", 42, "{}"),
        ("h-sql-real", 1.5, "{}"),
        ("h-sql-options-corrupt", VALID, "{corrupt"),
        ("h-sql-options-array", VALID, "[1, 2]"),
        ("h-sql-options-blob", VALID, "\x00\xff"),
    ]
    db = sqlite3.connect(str(path))
    try:
        for job_id, payload, options in rows:
            db.execute(
                "INSERT INTO jobs (queue, id, task, payload, state, run_at, created_at, options) "
                "VALUES ('hostile', ?, 'chaos.typed', ?, 'queued', ?, ?, ?)",
                (job_id, payload, now, now, options),
            )
        db.commit()
    finally:
        db.close()
    return {job_id for job_id, _, _ in rows}
