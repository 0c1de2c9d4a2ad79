"""The ground-truth logs: append-only JSON lines written outside the queue.

Each line is written with a single ``os.write`` on an ``O_APPEND`` descriptor, so it reaches
the kernel before the call returns: a process killed with SIGKILL right after loses nothing
it already logged, and lines from different processes never interleave mid-line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class TruthLog:
    """One process's append-only event log in ``directory``."""

    def __init__(self, directory: str | Path, kind: str) -> None:
        self.directory = Path(directory)
        self.kind = kind
        self._fd: int | None = None
        self._pid = 0

    def write(self, ev: str, **fields: Any) -> None:
        """Append one event with this process's pid and the monotonic and wall times."""
        pid = os.getpid()
        if self._fd is None or pid != self._pid:  # reopen after a fork
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self.kind}-{pid}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._pid = pid
        line = {"ev": ev, "pid": pid, "mono": time.monotonic(), "wall": time.time(), **fields}
        os.write(self._fd, (json.dumps(line) + "\n").encode())


def read(directory: str | Path, kind: str) -> Iterator[dict[str, Any]]:
    """Every event of every ``kind`` log in ``directory``; a torn last line is skipped."""
    for path in sorted(Path(directory).glob(f"{kind}-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # only possible as the last line of a process killed mid-write
