"""Real ``redis-server`` processes for the tests, on free loopback ports.

The session fixture ``redis_server`` runs one throwaway server (no RDB, no AOF) for the
conformance suite; ``redis_url`` gives every test its own key prefix on it. Tests that need
a server of their own (AOF restarts, eviction policies, a cluster) use :class:`RedisServer`
and :func:`start_cluster`. A missing ``redis-server`` fails the run: it never skips.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.servers import free_port

#: Throwaway persistence settings for conformance runs: nothing written to disk.
EPHEMERAL = ("--save", "", "--appendonly", "no")


def executable(name: str = "redis-server") -> str:
    """The path of ``name``; raises with install instructions if it is not on PATH."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not on PATH; the Redis engine's tests need a real server. "
            "Install it (Debian/Ubuntu: apt-get install redis-server redis-tools) and run again."
        )
    return path


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, started and stopped by the test that owns it."""

    def __init__(self, directory: Path, args: Sequence[str] = EPHEMERAL, port: int | None = None):
        self.directory = directory
        self.args = list(args)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (no options)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server (same port and directory as before, after a stop or kill)."""
        cmd = [
            executable(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--logfile",
            "redis.log",
            *self.args,
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = self.directory / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._close_pipes()

    def stop(self) -> None:
        """Stop the server politely (SIGTERM), killing it if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against this server and return its output."""
        cmd = [executable("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port), *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port for a cluster node: at most 55535, with its cluster-bus port (+10000)
    free as well, as redis-server requires."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("found no free pair of ports for a Redis Cluster node")


def start_cluster(directory: Path, nodes: int = 3) -> list[RedisServer]:
    """Start ``nodes`` cluster-enabled servers and join them (no replicas) into one cluster
    covering every slot; returns once the cluster answers ``cluster_state:ok``."""
    servers: list[RedisServer] = []
    try:
        for i in range(nodes):
            port = cluster_port()
            args = [
                *EPHEMERAL,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "5000",
            ]
            servers.append(RedisServer(directory / f"node{i}", args, port).start())
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        servers[0].cli(
            "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"
        )
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in s.cli("cluster", "info") for s in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok in 20 s")
            time.sleep(0.1)
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway redis-server for the session (fails the run if it cannot start)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A URL with a fresh key prefix, so each test sees an empty Redis."""
    return f"{redis_server.url}?prefix=t{os.urandom(6).hex()}"
