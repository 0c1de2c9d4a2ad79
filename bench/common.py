"""Shared by the orchestrator and every library's driver: the job recorder and small helpers.

Every library runs the same no-op task, whose only work is :func:`hit`: it writes the time
(``time.monotonic``, one clock for every process on the machine) and the process's CPU time
into the next slot of a memory-mapped file that the orchestrator reads. That is how the
orchestrator knows, without asking the broker, how many jobs ran, when the first started and
the last finished, and what each worker process spent on them; it costs about a microsecond
per job, the same for every library.
"""

from __future__ import annotations

import mmap
import os
import statistics
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Environment variable naming the recorder file of a worker process.
REC_ENV = "BENCH_REC"
#: Environment variable with the broker URL a driver uses.
URL_ENV = "BENCH_URL"
#: Header: number of jobs recorded (int64), then padding.
HEADER = 64
#: Per job: monotonic time, process CPU time (two float64).
SLOT = struct.Struct("dd")
COUNT = struct.Struct("q")
#: Slots per recorder file: enough for the biggest drain plus warm-up jobs.
CAPACITY = 20_000


def create_recorder(path: Path, capacity: int = CAPACITY) -> Path:
    """Create (or zero) a recorder file for one worker process."""
    with open(path, "wb") as f:
        f.truncate(HEADER + SLOT.size * capacity)
    return path


class Recorder:
    """A view of one recorder file (the worker writes it, the orchestrator reads it)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.capacity = (len(self.mm) - HEADER) // SLOT.size
        self._lock = threading.Lock()

    def count(self) -> int:
        """Jobs recorded so far."""
        return int(COUNT.unpack_from(self.mm, 0)[0])

    def hit(self) -> None:
        """Record one job (called by the task body in worker processes)."""
        t, cpu = time.monotonic(), time.process_time()
        with self._lock:  # threaded workers (Huey, Dramatiq, Celery threads) share it
            i = COUNT.unpack_from(self.mm, 0)[0]
            if i < self.capacity:
                SLOT.pack_into(self.mm, HEADER + SLOT.size * i, t, cpu)
            COUNT.pack_into(self.mm, 0, i + 1)

    def slots(self, start: int = 0, stop: int | None = None) -> list[tuple[float, float]]:
        """Recorded (time, cpu) pairs, in recording order."""
        stop = min(self.count() if stop is None else stop, self.capacity)
        return [SLOT.unpack_from(self.mm, HEADER + SLOT.size * i) for i in range(start, stop)]

    def time_of(self, i: int) -> float:
        """The time recorded for job number ``i`` (0-based)."""
        return float(SLOT.unpack_from(self.mm, HEADER + SLOT.size * i)[0])

    def close(self) -> None:
        """Unmap the file."""
        self.mm.close()


_recorder: Recorder | None = None


def hit() -> None:
    """The body of every benchmark task: record the job if this is a measured worker."""
    global _recorder
    if _recorder is None:
        path = os.environ.get(REC_ENV)
        if not path:
            return
        _recorder = Recorder(path)
    _recorder.hit()


@dataclass
class Summary:
    """Median, min and max of repeated measurements."""

    median: float
    min: float
    max: float
    runs: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Summary | None:
        """Summarise ``values``; ``None`` when there are none."""
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), list(values))

    def as_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {"median": self.median, "min": self.min, "max": self.max, "runs": self.runs}


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def redis_url(port: int, db: int = 0) -> str:
    """The benchmark server's URL."""
    return f"redis://127.0.0.1:{port}/{db}"
