"""Engines under test: a fresh SQLite file, a fresh key prefix on a chaos-owned Redis, or a
fresh queue prefix and state table on a chaos-owned moto server (SQS)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode


@dataclass
class Target:
    """One engine URL for one scenario run."""

    engine: str
    url: str
    sqlite_path: Path | None = None

    def integrity(self) -> str:
        """``PRAGMA integrity_check`` of the SQLite file (``"ok"`` when healthy)."""
        if self.sqlite_path is None:
            return "ok"
        db = sqlite3.connect(str(self.sqlite_path), timeout=30)
        try:
            rows = db.execute("PRAGMA integrity_check").fetchall()
        finally:
            db.close()
        return "; ".join(str(r[0]) for r in rows)


def sqlite_target(directory: Path) -> Target:
    """A fresh SQLite file in ``directory``."""
    path = directory / "chaos.db"
    return Target("sqlite", f"sqlite:///{path}?poll_interval=0.005", path)


def redis_target(base_url: str) -> Target:
    """A fresh key prefix on the Redis at ``base_url`` (``redis://127.0.0.1:PORT/0``)."""
    return Target("redis", f"{base_url}?prefix=chaos{os.urandom(4).hex()}")


class MotoServer:
    """moto's AWS API server (SQS, DynamoDB) on a free loopback port, for the SQS engine."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self) -> MotoServer:
        """Start it and wait until it answers; sets test credentials for child processes."""
        exe = shutil.which("moto_server") or os.path.join(
            os.path.dirname(sys.executable), "moto_server"
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.process = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
            os.environ.setdefault(key, value)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start (pip install -e '.[dev]')")

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def sqs_target(endpoint: str) -> Target:
    """A fresh queue prefix and DynamoDB state table on a moto endpoint."""
    tag = os.urandom(4).hex()
    query = urlencode({"region": "us-east-1", "endpoint_url": endpoint, "prefix": f"c{tag}-",
                       "create": "true", "state_table": f"chaos-{tag}"})  # fmt: skip
    return Target("sqs", f"sqs://?{query}")
