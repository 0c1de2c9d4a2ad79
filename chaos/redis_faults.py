"""Scenario 3: Redis killed and restarted (AOF always / everysec, snapshot-only as the
control that must lose jobs), connections cut, reset and stalled through a fault proxy, and
the server paused with SIGSTOP. Every server is our own, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conveyor
from chaos import checker
from chaos.harness import Fleet, Proc, all_records, start_producer, wait_settled, worker_crashes
from chaos.proxy import FaultProxy
from chaos.targets import Target

QUEUE = "chaos"
#: Client-side timeouts in the chaos URLs: a dead link is noticed within a second.
URL_OPTIONS = "socket_timeout=1&socket_connect_timeout=1"
PERSISTENCE = {
    "always": ("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
    "everysec": ("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
    "snapshot": ("--appendonly", "no", "--save", "3600 1"),  # the control: loses jobs
    "none": ("--appendonly", "no", "--save", ""),
}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A chaos-owned ``redis-server`` on 127.0.0.1 (never the shared one on 6379)."""

    def __init__(self, directory: Path, persistence: str = "none") -> None:
        self.directory = directory
        self.args = PERSISTENCE[persistence]
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The server's URL, without options."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, with the same port and files) and wait until it answers."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        cmd = [exe, "--bind", "127.0.0.1", "--port", str(self.port),
               "--dir", str(self.directory), "--logfile", "redis.log", *self.args]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


@contextlib.asynccontextmanager
async def target(directory: Path) -> AsyncIterator[Target]:
    """An ephemeral server of our own for one scenario run."""
    server = Server(directory / "redis")
    server.start()
    try:
        yield Target("redis", f"{server.url}?prefix=chaos&{URL_OPTIONS}")
    finally:
        server.kill()


@dataclass(frozen=True)
class FaultSize:
    """How big a Redis fault run is."""

    jobs: int
    faults: int
    rate: float = 100.0
    #: Fewer worker slots than the producer's rate needs: a backlog of acknowledged jobs
    #: waits in Redis at every fault, which is what the snapshot control must lose.
    workers: int = 1
    concurrency: int = 2
    ms_max: float = 60.0
    lease: float = 3.0


FAULT_CI = FaultSize(jobs=600, faults=3)
FAULT_FULL = FaultSize(jobs=6000, faults=20)


def client_call_seconds(directory: Path) -> list[float]:
    """How long each producer call took (``try`` to its outcome)."""
    out = []
    for path in directory.glob("producer-*.jsonl"):
        tried: float | None = None
        for line in path.read_text().splitlines():
            ev = json.loads(line)
            if ev["ev"] == "try":
                tried = ev["mono"]
            elif tried is not None:
                out.append(ev["mono"] - tried)
                tried = None
    return out


async def fault_run(
    directory: Path, seed: int, size: FaultSize, fault: str, persistence: str = "none"
) -> dict[str, Any]:
    """Producers and workers on a Redis that ``fault`` hits ``size.faults`` times:
    ``kill`` (kill -9 and restart), ``proxy`` (cut / reset / stall) or ``pause``."""
    rng = random.Random(seed)
    server = Server(directory / "redis", persistence)
    server.start()
    proxy = await FaultProxy(server.port).start() if fault == "proxy" else None
    direct = f"{server.url}?prefix=chaos&{URL_OPTIONS}"
    via = f"redis://127.0.0.1:{proxy.port}/0?prefix=chaos&{URL_OPTIONS}" if proxy else direct
    fleet = Fleet(via, directory, [QUEUE], size.lease, concurrency=size.concurrency)
    producers: list[Proc] = []
    injected: list[str] = []
    try:
        fleet.start(size.workers)
        await fleet.wait_booted(size.workers)
        duration = size.jobs / size.rate
        producers.append(
            start_producer(via, directory, size.lease, first=0, count=size.jobs, seed=seed,
                           rate=size.rate, ms_max=size.ms_max)
        )  # fmt: skip
        interval = duration / (size.faults + 1)
        for _ in range(size.faults):
            await _sleep_reaping(fleet, interval * rng.uniform(0.6, 1.4))
            if fault == "kill":
                fleet.log.write("server", action="kill")
                server.kill()
                await _sleep_reaping(fleet, rng.uniform(0.3, 1.5))
                server.start()
                injected.append("kill")
            elif fault == "pause":
                seconds = rng.uniform(1.0, 2.5)
                fleet.log.write("server", action="pause", seconds=seconds)
                server.signal(signal.SIGSTOP)
                await _sleep_reaping(fleet, seconds)
                server.signal(signal.SIGCONT)
                injected.append("pause")
            elif proxy is not None:
                kind = rng.choice(("cut", "reset", "stall"))
                fleet.log.write("proxy", action=kind)
                if kind == "cut":
                    proxy.cut()
                elif kind == "reset":
                    proxy.reset()
                else:
                    proxy.stall(rng.uniform(1.0, 2.5))
                injected.append(kind)
        while producers[0].popen.poll() is None:
            await _sleep_reaping(fleet, 0.2)
        producers[0].err.close()
        app = conveyor.App(direct)
        try:
            settled = await wait_settled(app, QUEUE, fleet, timeout=60)
            await fleet.stop()
            records = await all_records(app, QUEUE)
        finally:
            await app.close()
    finally:
        for p in producers:
            if p.popen.poll() is None:
                p.popen.kill()
        if proxy is not None:
            await proxy.close()
        server.kill()
    calls = client_call_seconds(directory)
    own_deaths = sum(1 for _, code in fleet.exits if code not in (0, -signal.SIGKILL))
    return checker.check(
        directory,
        records,
        scenario=f"redis-{fault}" + (f"-{persistence}" if fault == "kill" else ""),
        seed=seed,
        engine="redis",
        extra={
            "settled": settled,
            "faults": injected,
            "persistence": persistence,
            "worker_crashes": own_deaths,
            "worker_errors": worker_crashes(fleet.stderr_text()),
            "client_calls": len(calls),
            "client_call_max_seconds": round(max(calls, default=0.0), 3),
        },
    )


async def _sleep_reaping(fleet: Fleet, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        fleet.reap()
        await asyncio.sleep(min(left, 0.1))
