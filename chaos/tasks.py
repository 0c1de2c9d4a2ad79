"""The tasks chaos workers run: ``conveyor worker chaos.tasks:app``.

Every task records what it does in the ground-truth log (``CHAOS_DIR``) before and after its
side effect. Configuration comes from the environment, as a deployed worker's would:
``CONVEYOR_URL`` (the engine), ``CHAOS_DIR``, ``CHAOS_LEASE`` (lease seconds) and
``CHAOS_DEDUP`` (the alert de-duplication window).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import tempfile
import time
from typing import Any, Literal

from pydantic import BaseModel

import conveyor
from chaos.truth import TruthLog

DIRECTORY = os.environ.get("CHAOS_DIR") or os.path.join(tempfile.gettempdir(), "chaos-run")
truth = TruthLog(DIRECTORY, "truth")
_alerts_log = TruthLog(DIRECTORY, "alerts")

#: Keep every completed job: the checker reads them all back.
KEEP_ALL = conveyor.Keep(count=None, age=None)
#: Retries of the ``fated`` task and its backoff (small, so a run takes seconds).
FATE_RETRIES = 3
FATE_BACKOFF = conveyor.Backoff.exponential(0.05, factor=2.0, max=1.0, jitter=0.2)
FATE_TIMEOUT = 0.5
#: Fates by id prefix: ``f-<fate>-<n>``.
FATES = ("normal", "flaky1", "flaky2", "flaky3", "always", "unrecoverable", "timeout")
DEAD_FATES = frozenset({"always", "unrecoverable", "timeout"})
SPIN_TIMEOUT = 1.0
TICK_SECONDS = 0.05


def _record_alert(alert: conveyor.Alert) -> None:
    _alerts_log.write(
        "alert",
        kind=alert.kind,
        queue=alert.queue,
        error_type=alert.error_type,
        count=alert.count,
        job=alert.job_id,
        at=alert.at,
    )


app = conveyor.App(
    lease_seconds=float(os.environ.get("CHAOS_LEASE", "2")),
    alerts=conveyor.Alerts(
        [_record_alert], dedup_window=float(os.environ.get("CHAOS_DEDUP", "300"))
    ),
)


if os.environ.get("CHAOS_ROLE") == "worker":
    truth.write("boot")


def _kill_mid_transaction(odds: float) -> None:
    """Make this process SIGKILL itself, with ``odds`` per commit, just before a COMMIT of
    its SQLite connection: the transaction's writes are made but not committed."""
    connect = sqlite3.connect
    rng = random.Random()

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)

        def trace(statement: str) -> None:
            if statement.startswith("COMMIT") and rng.random() < odds:
                truth.write("kill", job="", att=0, point="before_commit")
                os.kill(os.getpid(), signal.SIGKILL)

        db.set_trace_callback(trace)
        return db

    sqlite3.connect = traced  # type: ignore[assignment]


if float(os.environ.get("CHAOS_KILL_BEFORE_COMMIT", "0")) > 0:
    _kill_mid_transaction(float(os.environ["CHAOS_KILL_BEFORE_COMMIT"]))


class Work(BaseModel):
    """A side effect lasting ``ms`` milliseconds; ``kill`` makes attempt 1 SIGKILL its own
    worker at that point (``after_end``: the side effect is done but not acknowledged)."""

    ms: float = 10.0
    kill: Literal["", "after_start", "after_end"] = ""


def _round(job: conveyor.Job[Any]) -> int:
    return int(job.record.options.get("redriven", 0)) if job.record else 0


def _die(job: conveyor.Job[Any], point: str) -> None:
    truth.write("kill", job=job.id, att=job.attempts, point=point)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="chaos.work", queue="chaos", retries=20, timeout=60, keep_completed=KEEP_ALL)
async def work(job: conveyor.Job[Work]) -> str:
    """The crash scenarios' job: log start, sleep, log end (maybe dying at a chosen point)."""
    truth.write("start", job=job.id, att=job.attempts, round=_round(job))
    if job.payload.kill == "after_start" and job.attempts == 1:
        _die(job, "after_start")
    try:
        await asyncio.sleep(job.payload.ms / 1000)
    except asyncio.CancelledError:
        truth.write("cancel", job=job.id, att=job.attempts)
        raise
    truth.write("end", job=job.id, att=job.attempts, round=_round(job))
    if job.payload.kill == "after_end" and job.attempts == 1:
        _die(job, "after_end")
    return "ok"


def fate_of(job_id: str) -> str:
    """The fate a ``fated`` job's id names (``f-flaky2-17`` -> ``flaky2``)."""
    parts = job_id.split("-")
    return parts[1] if len(parts) >= 3 and parts[1] in FATES else "normal"


class PlannedFailure(Exception):
    """The failure a ``fated`` job was born to raise."""


@app.task(
    name="chaos.fated",
    queue="fates",
    retries=FATE_RETRIES,
    backoff=FATE_BACKOFF,
    timeout=FATE_TIMEOUT,
    keep_completed=KEEP_ALL,
)
async def fated(job: conveyor.Job[int]) -> str:
    """Fails as its id says on the first round; after a redrive it always succeeds."""
    fate, round_, att = fate_of(job.id), _round(job), job.attempts
    truth.write("start", job=job.id, att=att, round=round_)
    if round_ == 0:
        failing = fate in ("always", "unrecoverable") or (
            fate.startswith("flaky") and att <= int(fate[-1])
        )
        if failing:
            truth.write("fail", job=job.id, att=att, round=round_)
            message = f"planned failure of {job.id} attempt {att}"
            if fate == "unrecoverable":
                raise conveyor.Unrecoverable(message)
            raise PlannedFailure(message)
        if fate == "timeout":
            try:
                await asyncio.sleep(FATE_TIMEOUT * 10)
            except asyncio.CancelledError:
                truth.write("cancel", job=job.id, att=att, round=round_)
                raise
    truth.write("end", job=job.id, att=att, round=round_)
    return "ok"


@app.on_dead_letter
def _dead(job: conveyor.Job[Any], attempt: conveyor.Attempt) -> None:
    truth.write(
        "dead", job=job.id, att=attempt.number, error_type=attempt.error_type, queue=job.queue
    )


class Spin(BaseModel):
    """Burn CPU for ``seconds`` (past the timeout, for the timeout scenario)."""

    seconds: float


@app.task(
    name="chaos.spin",
    queue="cpu",
    executor="process",
    timeout=SPIN_TIMEOUT,
    retries=0,
    keep_completed=KEEP_ALL,
)
def spin(job: conveyor.Job[Spin]) -> str:
    """CPU-bound: a busy loop that logs a tick every 50 ms, so its real stop time is known."""
    truth.write("start", job=job.id, att=0)
    start = last = time.monotonic()
    while (now := time.monotonic()) - start < job.payload.seconds:
        if now - last >= TICK_SECONDS:
            truth.write("tick", job=job.id, att=0)
            last = now
    truth.write("end", job=job.id, att=0)
    return "spun"


class Typed(BaseModel):
    """A strictly typed payload, for the hostile-input scenario."""

    n: int
    name: str


@app.task(name="chaos.typed", queue="hostile", retries=3, keep_completed=KEEP_ALL)
async def typed(job: conveyor.Job[Typed]) -> int:
    """Runs only on a valid payload."""
    truth.write("start", job=job.id, att=job.attempts, round=_round(job))
    truth.write("end", job=job.id, att=job.attempts, round=_round(job))
    return job.payload.n
