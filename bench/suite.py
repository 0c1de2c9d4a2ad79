"""The orchestrator: starts the benchmark Redis, runs every target's measurements through its
driver (in its own environment), and collects one result document.

Runs in Conveyor's environment with only the standard library and redis-py. Worker processes
are subprocesses in their own process groups, started after their queue is filled, released
together by a "go" on stdin, watched through their recorder files and stopped with SIGTERM
(SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.common import REC_ENV, URL_ENV, Recorder, Summary, create_recorder, redis_url
from bench.peers import ENVS

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = {
    "main": ROOT / ".venv" / "bin" / "python",
    "peers": ROOT / "bench" / ".venv-peers" / "bin" / "python",
    "arq": ROOT / "bench" / ".venv-peers-arq" / "bin" / "python",
}
#: Seconds a worker may take to import, connect and fill its queue before saying "ready".
READY_TIMEOUT = 120.0
#: Seconds a worker gets to stop after SIGTERM before SIGKILL.
STOP_GRACE = 10.0


def log(msg: str) -> None:
    """Progress on stderr (stdout is for results)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Settings:
    """Sizes and bounds of one run."""

    port: int = 6390
    reps: int = 3
    drain_jobs: int = 10_000
    drain_cap: float = 20.0
    single_n: int = 3000
    bulk_n: int = 10_000
    producers: int = 64
    enqueue_cap: float = 5.0
    latency_jobs: int = 500
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))


class RedisServer:
    """A private redis-server on a loopback port: no persistence, no eviction."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()

    def client(self) -> redis.Redis:
        """A client of the benchmark server."""
        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        """Stop the server (SHUTDOWN NOSAVE; terminate if that fails)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(redis.RedisError):
            self.client().shutdown(nosave=True)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)

    def version(self) -> str:
        """The server's version."""
        return str(self.client().info("server")["redis_version"])


class Target:
    """One library on one backend, driven through ``python -m bench.driver``."""

    def __init__(self, name: str, settings: Settings, server: RedisServer) -> None:
        self.name = name
        self.settings = settings
        self.server = server
        self.python = PYTHONS[ENVS[name]]
        self.sqlite = name.endswith("-sqlite")
        if self.sqlite:
            self.url = str(settings.workdir / name)
            Path(self.url).mkdir(parents=True, exist_ok=True)
        else:
            self.url = redis_url(settings.port)

    def env(self, rec: Path | None = None) -> dict[str, str]:
        """Environment of a driver process."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        env[URL_ENV] = self.url
        env.pop(REC_ENV, None)
        if rec is not None:
            env[REC_ENV] = str(rec)
        return env

    def command(self, *args: str) -> list[str]:
        """The driver command line."""
        return [str(self.python), "-m", "bench.driver", self.name, *args]

    def run_json(self, *args: str, timeout: float = 300.0, rec: Path | None = None) -> Any:
        """Run a driver command and parse its JSON answer."""
        proc = subprocess.run(
            self.command(*args),
            env=self.env(rec),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name} {args[0]} failed: {proc.stderr.strip()[-1500:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # -- workers ----------------------------------------------------------------------------

    def start_worker(self, rec: Path, fill: int = 0) -> Worker:
        """Start a worker process (filling the queue first if ``fill``); wait until ready."""
        args = ["worker"] + (["--fill", str(fill)] if fill else [])
        log_path = self.settings.workdir / f"{self.name}-{rec.stem}.log"
        proc = subprocess.Popen(
            self.command(*args),
            env=self.env(rec),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log_path, "wb"),  # noqa: SIM115 - owned by the process
            cwd=ROOT,
            start_new_session=True,
        )
        worker = Worker(proc, Recorder(rec), log_path)
        worker.wait_ready(READY_TIMEOUT)
        return worker

    def reset_sqlite(self) -> None:
        """Remove the target's database files between runs."""
        if self.sqlite:
            shutil.rmtree(self.url, ignore_errors=True)
            Path(self.url).mkdir(parents=True, exist_ok=True)


class Worker:
    """A running worker process and its recorder."""

    def __init__(self, proc: subprocess.Popen[bytes], rec: Recorder, log_path: Path) -> None:
        self.proc = proc
        self.rec = rec
        self.log_path = log_path

    def wait_ready(self, timeout: float) -> None:
        """Wait for the "ready" line."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if line != "ready":
            self.stop()
            raise RuntimeError(f"worker not ready ({line!r}): {self.tail()}")

    def go(self) -> None:
        """Release the worker."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def peak_rss_mb(self) -> float | None:
        """Peak resident memory (VmHWM) of the worker process, in MB."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> bool:
        """SIGTERM the process group; SIGKILL after the grace period. True if it stopped."""
        clean = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                clean = False
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        else:
            with contextlib.suppress(ProcessLookupError):  # children it may have left behind
                os.killpg(self.proc.pid, signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.rec.close()
        return clean

    def tail(self) -> str:
        """The end of the worker's stderr, for error reports."""
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""


def command_stats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (the harness's own excluded)."""
    stats = client.info("commandstats")
    out = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        if name in ("info", "config|resetstat", "config"):
            continue
        out[name] = int(value["calls"])
    return out


SCRIPT_COMMANDS = ("evalsha", "eval", "fcall", "fcall_ro", "evalsha_ro", "eval_ro")


def drain(target: Target, procs: int, s: Settings) -> dict[str, Any]:
    """Fill the queue, start ``procs`` workers, release them and time the drain."""
    target.reset_sqlite()
    client = target.server.client()
    if not target.sqlite:
        client.flushall()
    recs = [create_recorder(s.workdir / f"w{i}.rec") for i in range(procs)]
    workers: list[Worker] = []
    try:
        workers.append(target.start_worker(recs[0], fill=s.drain_jobs))
        for rec in recs[1:]:
            workers.append(target.start_worker(rec))
        client.config_resetstat()
        for w in workers:
            w.go()
        start = time.monotonic()
        deadline = start + s.drain_cap
        while sum(w.rec.count() for w in workers) < s.drain_jobs:
            if time.monotonic() > deadline:
                break
            if not all(w.alive() for w in workers):
                dead = next(w for w in workers if not w.alive())
                raise RuntimeError(f"a worker exited during the drain: {dead.tail()}")
            time.sleep(0.01)
        elapsed_wall = time.monotonic() - start
        commands = command_stats(client) if not target.sqlite else {}
        slots = [w.rec.slots() for w in workers]
        rss = [w.peak_rss_mb() for w in workers]
    finally:
        clean = [w.stop() for w in workers]
        client.close()
    times = sorted(t for per in slots for t, _ in per)
    done = len(times)
    if done < 2:
        raise RuntimeError(f"only {done} job(s) ran in {s.drain_cap:.0f} s")
    complete = done >= s.drain_jobs
    span = (times[-1] - times[0]) if complete else (start + elapsed_wall - times[0])
    rate = (done - 1) / span if complete else done / span
    first = slots[0]
    cpu_us = (first[-1][1] - first[0][1]) / max(len(first) - 1, 1) * 1e6 if first else None
    total_cmds = sum(commands.values())
    scripts = sum(commands.get(c, 0) for c in SCRIPT_COMMANDS)
    return {
        "rate": rate,
        "jobs": done,
        "complete": complete,
        "seconds": span,
        "per_process": [len(p) for p in slots],
        "cpu_us_per_job": cpu_us if procs == 1 else None,
        "peak_rss_mb": max((r for r in rss if r is not None), default=None),
        "redis_commands_per_job": total_cmds / done if commands else None,
        "redis_script_calls_per_job": scripts / done if commands else None,
        "redis_commands": commands,
        "stopped_cleanly": all(clean),
    }


def latency(target: Target, s: Settings) -> dict[str, Any]:
    """Idle worker; a producer enqueues one job at a time and reads when each started."""
    target.reset_sqlite()
    if not target.sqlite:
        target.server.client().flushall()
    rec = create_recorder(s.workdir / "lat.rec")
    worker = target.start_worker(rec)
    try:
        worker.go()
        time.sleep(1.0)  # connected and idle
        out = target.run_json(
            "latency",
            "--rec",
            str(rec),
            "--n",
            str(s.latency_jobs),
            "--reps",
            str(s.reps),
            timeout=300,
        )
    finally:
        worker.stop()
    runs = out["runs"]
    return {
        "p50_ms": _summ([r["p50_ms"] for r in runs]),
        "p99_ms": _summ([r["p99_ms"] for r in runs]),
        "runs": runs,
    }


def measure(name: str, s: Settings, server: RedisServer) -> dict[str, Any]:
    """Every measurement of one target; errors are recorded, not raised."""
    target = Target(name, s, server)
    result: dict[str, Any] = {"target": name, "backend": "sqlite" if target.sqlite else "redis"}
    result["load_before"] = os.getloadavg()

    def step(key: str, fn: Callable[[], Any]) -> None:
        began = time.monotonic()
        try:
            result[key] = fn()
        except Exception as exc:  # a peer that cannot run here is reported, not dropped
            result.setdefault("errors", {})[key] = str(exc)[-2000:]
            log(f"{name}: {key} FAILED: {str(exc)[-300:]}")
        log(f"{name}: {key} done in {time.monotonic() - began:.1f} s")

    if not PYTHONS[ENVS[name]].exists():
        result["errors"] = {"install": f"no environment at {PYTHONS[ENVS[name]]}"}
        return result
    step("info", lambda: target.run_json("info", timeout=120))
    if "info" not in result:
        return result

    def enqueue() -> dict[str, Any]:
        target.reset_sqlite()
        raw = target.run_json(
            "enqueue",
            "--reps",
            str(s.reps),
            "--single-n",
            str(s.single_n),
            "--bulk-n",
            str(s.bulk_n),
            "--producers",
            str(s.producers),
            "--cap",
            str(s.enqueue_cap),
            timeout=600,
        )
        return {
            mode: {"rate": _summ([r["rate"] for r in runs]), "runs": runs}
            for mode, runs in raw.items()
        }

    step("enqueue", enqueue)
    for procs in (1, 2):
        key = f"drain_{procs}"

        def run_drains(procs: int = procs) -> dict[str, Any]:
            runs = [drain(target, procs, s) for _ in range(s.reps)]
            out: dict[str, Any] = {"rate": _summ([r["rate"] for r in runs]), "runs": runs}
            for metric in (
                "cpu_us_per_job",
                "peak_rss_mb",
                "redis_commands_per_job",
                "redis_script_calls_per_job",
            ):
                values = [r[metric] for r in runs if r[metric] is not None]
                out[metric] = _summ(values)
            return out

        step(key, run_drains)
    step("latency", lambda: latency(target, s))
    result["load_after"] = os.getloadavg()
    return result


def _summ(values: list[float]) -> dict[str, Any] | None:
    summary = Summary.of(values)
    return summary.as_dict() if summary else None
