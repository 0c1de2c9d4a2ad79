"""Processes under test: ``conveyor worker`` and producer subprocesses, faults, and reading
the engine's final state back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import conveyor
from chaos.truth import TruthLog
from conveyor.records import JobRecord, State

ROOT = Path(__file__).resolve().parent.parent
#: From importing the app to handling SIGTERM, a worker needs a moment more.
BOOT_SETTLE = 1.0
PAGE = 1000


def child_env(url: str, directory: Path, lease: float, **extra: str) -> dict[str, str]:
    """The environment of a worker or producer: engine URL, log directory, lease."""
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "CONVEYOR_URL": url,
        "CHAOS_DIR": str(directory),
        "CHAOS_LEASE": str(lease),
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        **extra,
    }


@dataclass
class Proc:
    """One child process and where its stderr goes."""

    popen: subprocess.Popen[bytes]
    role: str
    err: IO[bytes]
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid


@dataclass
class Fleet:
    """Worker processes of one scenario; restarts the ones that die when asked to."""

    url: str
    directory: Path
    queues: Sequence[str]
    lease: float
    concurrency: int = 4
    grace: float = 5.0
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    exits: list[tuple[int, int]] = field(default_factory=list)
    err_files: dict[int, Path] = field(default_factory=dict)
    log: TruthLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = TruthLog(self.directory, "harness")
        self._n = 0
        self._booted: set[int] = set()
        self._booted_at: dict[int, float] = {}

    def command(self) -> list[str]:
        """The worker command line."""
        return [
            sys.executable, "-m", "conveyor.cli", "worker", "chaos.tasks:app",
            "--queues", ",".join(self.queues),
            "--concurrency", str(self.concurrency),
            "--grace", str(self.grace),
            "--log-level", "WARNING",
        ]  # fmt: skip

    def start(self, n: int = 1) -> None:
        """Start ``n`` more workers."""
        for _ in range(n):
            self._n += 1
            err = (self.directory / f"worker-{self._n}.err").open("wb")
            env = child_env(self.url, self.directory, self.lease, CHAOS_ROLE="worker", **self.env)
            popen = subprocess.Popen(
                self.command(), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err
            )
            self.procs.append(Proc(popen, "worker", err))
            self.err_files[popen.pid] = Path(err.name)
            self.log.write("spawn", target=popen.pid, role="worker")

    def booted(self) -> list[Proc]:
        """Live workers that have imported the task module (their first log line)."""
        out = []
        for p in self.alive():
            if p.pid not in self._booted:
                path = self.directory / f"truth-{p.pid}.jsonl"
                if path.exists() and path.stat().st_size > 0:
                    self._booted.add(p.pid)
                    self._booted_at[p.pid] = time.monotonic()
            if p.pid in self._booted:
                out.append(p)
        return out

    async def wait_booted(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` workers are up."""
        deadline = time.monotonic() + timeout
        while len(self.booted()) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def alive(self) -> list[Proc]:
        """Workers still running."""
        return [p for p in self.procs if p.popen.poll() is None]

    def reap(self, restart: bool = True) -> int:
        """Forget exited workers (logging their exit codes); start replacements."""
        gone = [p for p in self.procs if p.popen.poll() is not None]
        for p in gone:
            self.procs.remove(p)
            p.err.close()
            code = p.popen.returncode
            self.exits.append((p.pid, code))
            self.log.write("exit", target=p.pid, code=code)
        if restart and gone:
            self.start(len(gone))
        return len(gone)

    def kill(self, proc: Proc, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to one worker, logging it first (a kill is logged before it lands)."""
        self.log.write("kill", target=proc.pid, sig=sig.name)
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(sig)

    def kill_random(self, rng: random.Random, spare: int = 1) -> int | None:
        """SIGKILL a random worker that is up, if ``spare`` others stay up; its pid.

        Killing workers that are still starting would test nothing, and a fleet with no
        worker up measures the restart time rather than the lease recovery.
        """
        live = self.booted()
        if len(live) <= spare:
            return None
        victim = rng.choice(live)
        self.kill(victim)
        victim.popen.wait(10)
        return victim.pid

    async def stop(self, timeout: float = 60.0) -> list[int]:
        """SIGTERM every worker and wait for them; their exit codes.

        A worker still importing its app has no signal handler yet, and SIGTERM would end it
        with -15 (see docs/reliability.md): wait until each is up, plus a moment.
        """
        deadline = time.monotonic() + 30
        while len(self.booted()) < len(self.alive()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        youngest = max((self._booted_at.get(p.pid, 0.0) for p in self.alive()), default=0.0)
        await asyncio.sleep(max(0.0, youngest + BOOT_SETTLE - time.monotonic()))
        live = self.alive()
        for p in live:
            self.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(p.popen.poll() is None for p in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        codes = []
        for p in live:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait(10)
            codes.append(p.popen.returncode)
        self.reap(restart=False)
        return codes

    def stderr_text(self) -> str:
        """Everything the workers wrote to stderr."""
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.directory.glob("worker-*.err"))
        )


def start_producer(
    url: str, directory: Path, lease: float, *, first: int, count: int, seed: int, rate: float,
    kill_fraction: float = 0.0, batch: int = 10, ms_max: float = 40.0,
    env: dict[str, str] | None = None, until: float | None = None,
) -> Proc:  # fmt: skip
    """Start one ``chaos.producer`` process."""
    err = (directory / f"producer-{first}.err").open("wb")
    cmd = [
        sys.executable, "-m", "chaos.producer", "--first", str(first), "--count", str(count),
        "--seed", str(seed), "--rate", str(rate), "--batch", str(batch),
        "--kill-fraction", str(kill_fraction), "--ms-max", str(ms_max),
    ]  # fmt: skip
    if until is not None:
        cmd += ["--until", str(until)]
    popen = subprocess.Popen(
        cmd,
        env=child_env(url, directory, lease, **(env or {})),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    return Proc(popen, "producer", err)


def producing(directory: Path, procs: list[Proc]) -> list[Proc]:
    """Producers that are alive and have begun enqueueing (their log exists)."""
    return [
        p
        for p in procs
        if p.popen.poll() is None and (directory / f"producer-{p.pid}.jsonl").exists()
    ]


async def all_records(app: conveyor.App, queue: str) -> dict[str, JobRecord]:
    """Every job of ``queue`` in every state."""
    engine = await app.engine()
    out: dict[str, JobRecord] = {}
    for state in State:
        offset = 0
        while True:
            page = await engine.list_jobs(queue, state, limit=PAGE, offset=offset)
            for r in page:
                out[r.id] = r
            if len(page) < PAGE:
                break
            offset += PAGE
    return out


async def pending(app: conveyor.App, queue: str) -> int:
    """Jobs of ``queue`` not yet finished (queued, scheduled or active)."""
    for s in await (await app.engine()).stats():
        if s.queue == queue:
            c = s.counts
            return c.get(State.QUEUED, 0) + c.get(State.SCHEDULED, 0) + c.get(State.ACTIVE, 0)
    return 0


async def wait_settled(
    app: conveyor.App, queue: str, fleet: Fleet | None, timeout: float, *, restart: bool = True
) -> bool:
    """Wait until nothing of ``queue`` is pending, restarting dead workers meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fleet is not None:
            fleet.reap(restart=restart)
        with contextlib.suppress(Exception):  # the engine may be down on purpose
            if await pending(app, queue) == 0:
                return True
        await asyncio.sleep(0.2)
    return False


def worker_crashes(stderr: str) -> int:
    """Unhandled errors in worker logs: tracebacks that are not a task's own failure."""
    return stderr.count("unexpected error in the worker") + stderr.count("Traceback (most recent")


def json_safe(value: Any) -> Any:
    """``value`` with floats rounded for printing."""
    if isinstance(value, float):
        return round(value, 4)
    return value
