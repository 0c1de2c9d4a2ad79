"""A worker that exits sends the summaries of its open alert windows.

Found by the chaos retries/DLQ scenario: de-duplicated dead-letter alerts were counted in
memory until their window closed, so a worker stopped (SIGTERM, a deploy) within the window
dropped them: three jobs dead-lettered, one alert with count 1, the other two never told.
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


def test_worker_exit_flushes_deduplicated_dead_letter_alerts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}?poll_interval=0.005"
    app = conveyor.App(url)
    ids = [f"f-unrecoverable-{n}" for n in range(3)]

    async def enqueue() -> None:
        await (await app.engine()).enqueue(
            [tasks.fated.build(n, job_id=i) for n, i in enumerate(ids)]
        )

    app.run_sync(enqueue())
    cmd = [sys.executable, "-m", "conveyor.cli", "worker", "chaos.tasks:app",
           "--queues", "fates", "--log-level", "ERROR"]  # fmt: skip
    env = child_env(url, tmp_path, 30.0, CHAOS_DEDUP="300")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while sum(e["ev"] == "dead" for e in truth.read(tmp_path, "truth")) < 3:
            assert time.monotonic() < deadline, "the jobs were not dead-lettered in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        app.close_sync()
    alerts = [e for e in truth.read(tmp_path, "alerts") if e["kind"] == "dead_letter"]
    assert [a["count"] for a in alerts] == [1, 2]  # the first at once, the rest at exit
