"""Engines under test: a fresh SQLite file, or a fresh key prefix on a chaos-owned Redis."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path


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
