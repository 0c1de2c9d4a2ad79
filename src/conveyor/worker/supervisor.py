"""``conveyor worker --processes N``: run N worker processes, restart crashed ones, and pass
SIGTERM/SIGINT on so every child drains before the supervisor exits."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("conveyor.supervisor")

RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
#: A child that ran this long before dying resets its restart backoff.
STABLE_AFTER = 30.0
POLL_SECONDS = 0.2


def supervise(per_child_args: Sequence[Sequence[str]]) -> int:
    """Run one ``python -m conveyor.cli <args>`` process per entry; returns an exit code.

    A child that dies unexpectedly (``kill -9``, OOM) is restarted with backoff; its jobs
    are delivered again when their leases expire. The first signal stops all children
    gracefully; the supervisor exits 0 if they all drained cleanly.
    """
    cmds = [[sys.executable, "-m", "conveyor.cli", *args] for args in per_child_args]
    children: list[tuple[subprocess.Popen[bytes], float, int, list[str]]] = []
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc, _, _, _ in children:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for cmd in cmds:
        children.append((subprocess.Popen(cmd), time.monotonic(), 0, cmd))
    log.info("supervisor started %d worker processes", len(cmds))
    codes: list[int] = []
    while children:
        time.sleep(POLL_SECONDS)
        alive = []
        for proc, started, restarts, cmd in children:
            code = proc.poll()
            if code is None:
                alive.append((proc, started, restarts, cmd))
                continue
            if stopping:
                codes.append(code)
                continue
            restarts = 0 if time.monotonic() - started > STABLE_AFTER else restarts + 1
            delay = RESTART_DELAYS[min(restarts, len(RESTART_DELAYS) - 1)]
            log.warning("worker pid %d exited with %d; restarting in %gs", proc.pid, code, delay)
            time.sleep(delay)
            if not stopping:
                alive.append((subprocess.Popen(cmd), time.monotonic(), restarts, cmd))
        children = alive
    return 0 if all(code == 0 for code in codes) else 1
