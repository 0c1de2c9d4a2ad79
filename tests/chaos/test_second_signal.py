"""A second SIGTERM hurries a draining worker: running jobs are released at once.

Found by the chaos drain scenario: the second signal set the grace period to 0, but the drain
was already waiting with the old grace period, so the worker still waited it out in full.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import conveyor
from chaos import tasks, truth
from chaos.harness import ROOT, child_env


def _wait_for_start(directory: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["ev"] == "start" for e in truth.read(directory, "truth")):
            return
        time.sleep(0.05)
    raise AssertionError("the job never started")


def test_second_sigterm_releases_running_jobs_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}?poll_interval=0.005"
    app = conveyor.App(url)
    new = tasks.work.build(tasks.Work(ms=60_000), job_id="long-1")

    async def enqueue() -> None:
        await (await app.engine()).enqueue([new])

    app.run_sync(enqueue())
    cmd = [sys.executable, "-m", "conveyor.cli", "worker", "chaos.tasks:app",
           "--queues", "chaos", "--grace", "30", "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=child_env(url, tmp_path, 30.0), cwd=ROOT)
    try:
        _wait_for_start(tmp_path)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        hurried_at = time.monotonic()
        assert proc.wait(20) == 0
        assert time.monotonic() - hurried_at < 3.0  # not the 30 s grace period
    finally:
        proc.kill()
        proc.wait()
    job = app.run_sync(app.get_job("chaos", "long-1"))
    app.close_sync()
    assert job.state is conveyor.State.QUEUED and job.attempts == 0  # released, not failed
