"""Tasks for the process executor: their child processes import this module by name."""

from __future__ import annotations

import os
import time

import conveyor

app = conveyor.App("sqlite:///:memory:")


@app.task(executor="process", timeout=0.5, retries=1, backoff=conveyor.Backoff.fixed(0))
def spin(seconds: float) -> int:
    """Burn CPU for ``seconds`` (no sleeping, no yielding): only a kill stops it."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return os.getpid()


@app.task(executor="process", timeout=10)
def report_and_square(job: conveyor.Job[int]) -> int:
    """Reports progress from the child, then returns the square."""
    job.progress_sync(50)
    job.log_sync("halfway")
    return job.payload * job.payload
