"""A module-level app that worker subprocesses import in the conformance tests.

Its engine URL comes from CONVEYOR_URL; its lease from CONVEYOR_TEST_LEASE. Each task writes
what it does to files named in its payload, so the test can see it from outside.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel

import conveyor

# Lets a test signal a worker while it is still importing its app.
time.sleep(float(os.environ.get("CONVEYOR_TEST_IMPORT_DELAY", "0")))

app = conveyor.App(lease_seconds=float(os.environ.get("CONVEYOR_TEST_LEASE", "30")))


class Marked(BaseModel):
    """A job that records its runs in ``marker`` and sleeps ``seconds`` on attempt 1."""

    marker: str
    seconds: float = 0.0


@app.task(queue="conformance", retries=3, backoff=conveyor.Backoff.fixed(0.1), timeout=120)
async def hang_first_attempt(job: conveyor.Job[Marked]) -> str:
    """Attempt 1 hangs (the test kills its worker); later attempts complete."""
    with Path(job.payload.marker).open("a") as f:
        f.write(f"start {job.attempts} {os.getpid()}\n")
    if job.attempts == 1:
        await asyncio.sleep(3600)
    return "done"


@app.task(queue="conformance", retries=0, timeout=120)
async def sleep_for(job: conveyor.Job[Marked]) -> str:
    """Sleeps ``seconds`` then records completion."""
    with Path(job.payload.marker).open("a") as f:
        f.write(f"start {job.attempts}\n")
    await asyncio.sleep(job.payload.seconds)
    with Path(job.payload.marker).open("a") as f:
        f.write("end\n")
    return "slept"
