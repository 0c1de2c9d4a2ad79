"""Profile Conveyor's worker hot path with py-spy: ``python -m bench.profile redis|sqlite``.

Fills a queue with no-op jobs, then drains it with one burst worker under ``py-spy record``
(sampling from outside the process, so the worker runs at nearly full speed), and prints
where the samples fall: by function (own time) and by the worker stage they belong to.
Needs py-spy (in the dev extra) and, for Redis, a server: ``--url redis://127.0.0.1:6390/0``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import conveyor

#: Where a sample's stack is attributed, first match from the leaf up.
STAGES = [
    ("start-up (imports)", ("_find_and_load", "_call_with_frames_removed")),
    ("engine: reserve", ("reserve", "take")),
    ("engine: settle", ("settle", "_flush", "apply")),
    ("SQLite thread: transaction begin/commit", ("_write",)),
    ("SQLite thread: idle, waiting for work", ("_worker",)),
    ("engine: wait (idle)", ("wait", "_block")),
    ("codec / result encoding", ("encode_result", "decode_payload", "encode_payload")),
    ("task body", ("noop",)),
    ("worker: per-job bookkeeping", ("_process", "_start", "_completed", "_attempt", "_job")),
    ("event loop", ("_run_once", "run_forever", "select")),
]


def app_for(url: str) -> tuple[conveyor.App, conveyor.Task[None]]:
    """An app with the benchmark's no-op task."""
    app = conveyor.App(url)

    @app.task(name="bench.noop", keep_completed=conveyor.Keep(count=0))
    async def noop() -> None:
        return None

    return app, noop


async def fill(url: str, n: int) -> None:
    """Store ``n`` jobs."""
    app, task = app_for(url)
    for start in range(0, n, 1000):
        await task.enqueue_many([None] * min(1000, n - start))
    await app.close()


async def drain(url: str, concurrency: int) -> None:
    """Run one burst worker until the queue is empty; print the rate."""
    app, _ = app_for(url)
    start = time.perf_counter()
    counts = await conveyor.Worker(app, concurrency=concurrency, burst=True).run()
    elapsed = time.perf_counter() - start
    print(
        f"drained {counts.completed} jobs in {elapsed:.2f} s: {counts.completed / elapsed:,.0f}/s"
    )
    await app.close()


def summarise(raw: Path, top: int = 25) -> str:
    """Own-time by function and samples by stage, from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    stages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf.split(" (")[0] + " (" + leaf.split(" (")[-1] if " (" in leaf else leaf] += n
        names = [f.split(" (")[0].rsplit(".", 1)[-1] for f in frames]
        for stage, keys in STAGES:
            if any(name in keys for name in reversed(names)):
                stages[stage] += n
                break
        else:
            stages["other"] += n
    lines = [f"{total} samples", "", "by stage (first match from the leaf):"]
    for stage, n in stages.most_common():
        lines.append(f"  {n / total:6.1%}  {stage}")
    lines += ["", f"top {top} functions by own time:"]
    for name, n in own.most_common(top):
        lines.append(f"  {n / total:6.1%}  {name}")
    return "\n".join(lines)


def main() -> None:
    """Fill, then drain under py-spy, then summarise."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("engine", choices=["redis", "sqlite"])
    parser.add_argument("--url", default="redis://127.0.0.1:6390/0")
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, help="also write the summary here")
    parser.add_argument("--stage", choices=["fill", "drain"], help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = args.dsn  # set for the children (fill, drain) by the parent
    if args.stage == "fill":
        asyncio.run(fill(url, args.jobs))
        return
    if args.stage == "drain":
        asyncio.run(drain(url, args.concurrency))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    if args.engine == "sqlite":
        url = f"sqlite:///{workdir / 'profile.db'}"
    else:
        url = f"{args.url}?prefix=profile"
    if args.engine == "redis":
        import redis

        redis.Redis.from_url(args.url).flushdb()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    me = [sys.executable, "-m", "bench.profile", args.engine, "--url", args.url]
    me += ["--jobs", str(args.jobs), "--concurrency", str(args.concurrency), "--dsn", url]
    subprocess.run([*me, "--stage", "fill"], env=env, check=True)
    raw = workdir / "pyspy.txt"
    spy = Path(sys.executable).parent / "py-spy"
    subprocess.run(
        [
            str(spy),
            "record",
            "-r",
            str(args.rate),
            "-f",
            "raw",
            "-o",
            str(raw),
            "--threads",
            "--",
            *me,
            "--stage",
            "drain",
        ],
        env=env,
        check=True,
    )
    summary = summarise(raw)
    shutil.rmtree(workdir, ignore_errors=True)
    print(summary)
    if args.out:
        args.out.write_text(summary + "\n")


if __name__ == "__main__":
    main()
