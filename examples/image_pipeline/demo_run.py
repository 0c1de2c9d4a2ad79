"""The body of ``conveyor demo`` (:mod:`image_pipeline.demo`): the seed's image pipeline,
end to end, on the embedded SQLite engine.

It generates sample images, registers them in the app database, enqueues one job per image,
runs workers (concurrency 5, like the seed), shows the queue live, injects the faults a real
pipeline meets (a flaky download, a corrupt upload), and ends with a summary and the exact
commands to inspect and redrive the dead-letter queue.

Everything lives in one directory (``--dir``, default ``./conveyor-demo``) that
``image_pipeline.worker:app`` also reads, so the printed ``conveyor`` commands work on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

import conveyor
from conveyor.logs import JobContext, TextFormatter

# Not image_pipeline.worker: it builds a pipeline from the environment when imported.
from image_pipeline.config import (
    ALERTS_FILE,
    ALL_FORMATS,
    DEFAULT_DIR,
    WORKER_APP,
    PipelineConfig,
)
from image_pipeline.faults import FaultPlan
from image_pipeline.imaging import pillow_can_write
from image_pipeline.models import ImageProcessJob, OutputFormat
from image_pipeline.pipeline import Pipeline, build_pipeline
from image_pipeline.samples import Sample, make_samples
from image_pipeline.sinks import JsonLinesSink, read_alerts
from image_pipeline.view import Snapshot, Watcher, render

#: Present in a directory the demo created; the demo only ever clears such directories.
MARKER = ".conveyor-demo"
FAULTS_FILE = "faults.json"
WORKER_LOG = "worker.log"
#: What a previous run left in the directory, removed before a new run.
OWNED = (
    "conveyor.db",
    "conveyor.db-wal",
    "conveyor.db-shm",
    "app.db",
    "app.db-wal",
    "app.db-shm",
    "storage",
    "faults",
    FAULTS_FILE,
    ALERTS_FILE,
    WORKER_LOG,
)
POLL_SECONDS = 0.1
REFRESH_PER_SECOND = 10
#: Seconds a worker gets to finish its jobs when the demo ends, before it is killed.
WORKER_GRACE = 10.0


class DemoError(click.ClickException):
    """Something stops the demo; the message says what to do."""


@dataclass(frozen=True)
class DemoOptions:
    """The command line, checked."""

    images: int
    workers: int
    concurrency: int
    fail_rate: float
    directory: Path
    time_scale: float
    seed: int


@dataclass
class Summary:
    """What the run did, for the closing table."""

    total: int
    processed: int
    recovered: list[str]
    retried_jobs: int
    retries: int
    dead: list[tuple[str, str, int]]  # (job id, error type, attempts)
    failed_rows: int
    alerts: int
    original_bytes: int
    processed_bytes: int
    seconds: float


async def run_demo(options: DemoOptions, console: Console) -> Summary:
    """The whole demo; returns its summary (also printed)."""
    started = time.monotonic()
    workdir = options.directory.resolve()
    console.print(prepare_workdir(workdir))
    formats = writable_formats()
    if formats != ALL_FORMATS:
        console.print(
            f"[yellow]This Pillow cannot write {', '.join(set(ALL_FORMATS) - set(formats))}; "
            "the demo converts to the other formats only.[/yellow]"
        )
    with console.status(f"Generating {options.images} sample images..."):
        samples = await asyncio.to_thread(
            make_samples,
            options.images,
            fail_rate=options.fail_rate,
            seed=options.seed,
            formats=formats,
        )
    plan = FaultPlan(
        flaky={_key(s): s.flaky_failures for s in samples if s.fault == "flaky"},
        state_dir=workdir / "faults",
    )
    plan.save(workdir / FAULTS_FILE)
    pipeline = build_pipeline(
        workdir,
        config=PipelineConfig(formats=formats),
        time_scale=options.time_scale,
        alerts=conveyor.Alerts([JsonLinesSink(workdir / ALERTS_FILE)]),
        faults=plan,
    )
    try:
        await _register_and_enqueue(pipeline, samples, console)
        _describe_plan(pipeline, options, samples, console)
        watcher = Watcher(
            app=pipeline.app,
            queue=pipeline.queue,
            total=len(samples),
            max_attempts=pipeline.config.retry.retries + 1,
            time_scale=options.time_scale,
            db=pipeline.db,
            alerts_file=workdir / ALERTS_FILE,
        )
        async with _workers(pipeline, options, workdir) as check_workers:
            snapshot = await _watch(watcher, options, console, check_workers)
        # Workers finish their hooks and alerts before they stop; show what came last.
        snapshot, events = await watcher.poll()
        for event in events:
            console.print(event)
        summary = await _summarize(pipeline, snapshot, len(samples), time.monotonic() - started)
    finally:
        await pipeline.close()
    print_summary(summary, options, pipeline, console)
    return summary


# -- set-up -----------------------------------------------------------------------------------


def prepare_workdir(workdir: Path) -> str:
    """Make ``workdir`` ready for a fresh run; returns a line saying what was done.

    A directory the demo made before (it holds :data:`MARKER`) is cleared of what the demo
    put there; any other non-empty directory is refused, so the demo never deletes files it
    did not create.
    """
    marker = workdir / MARKER
    if workdir.exists() and not marker.exists() and any(workdir.iterdir()):
        raise DemoError(
            f"{shown(workdir)} exists and was not created by the demo (it has no {MARKER} file). "
            "Pass another --dir, or empty that directory."
        )
    if marker.exists():
        previous = marker.read_text().strip() or "an earlier run"
        for name in OWNED:
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for log in workdir.glob("worker-*.log"):
            log.unlink()
        message = (
            f"Reusing {shown(workdir)} (demo run of {previous}): its queue, database, images "
            "and logs were cleared, so this run starts afresh."
        )
    else:
        message = f"Created {shown(workdir)} for the demo."
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text(dt.datetime.now().isoformat(timespec="seconds") + "\n")
    return message


def writable_formats() -> tuple[OutputFormat, ...]:
    """The output formats the installed Pillow can write (AVIF needs Pillow >= 11.3)."""
    return tuple(f for f in ALL_FORMATS if pillow_can_write(f))


def _key(sample: Sample) -> str:
    return f"originals/{sample.image_id}.{sample.ext}"


async def _register_and_enqueue(
    pipeline: Pipeline, samples: Sequence[Sample], console: Console
) -> None:
    for s in samples:
        await pipeline.add_image(s.image_id, s.user_id, s.data, s.ext)
    jobs = await pipeline.process_image.enqueue_many(
        conveyor.Enqueue(
            ImageProcessJob(image_id=s.image_id, user_id=s.user_id, operations=list(s.operations)),
            job_id=s.image_id,  # one job per image, however often this runs
        )
        for s in samples
    )
    size = sum(len(s.data) for s in samples)
    console.print(
        f"Uploaded {len(samples)} originals ({_mb(size)}), registered them in app.db and "
        f"enqueued {sum(j.created for j in jobs)} jobs on [bold]{pipeline.queue}[/bold]."
    )


def _describe_plan(
    pipeline: Pipeline, options: DemoOptions, samples: Sequence[Sample], console: Console
) -> None:
    policy = pipeline.config.retry
    delays = " -> ".join(f"{d * options.time_scale:g} s" for d in policy.delays)
    real = " -> ".join(f"{d / 60:g} min" for d in policy.delays)
    scale = "" if options.time_scale == 1 else f" (real time: {real}, x{options.time_scale:g})"
    where = "in this process" if options.workers == 1 else f"in {options.workers} processes"
    console.print(
        f"Workers: {options.workers} x concurrency {options.concurrency} {where}. "
        f"Policy: {policy.retries} retries ({policy.retries + 1} tries in all), "
        f"backoff {delays}{scale}, timeout {policy.timeout:g} s."
    )
    if any(s.fault == "corrupt" for s in samples) and options.time_scale >= 0.1:
        total = sum(policy.delays) * options.time_scale
        console.print(
            f"[yellow]The corrupt image reaches the dead-letter queue after {total / 60:.0f} min "
            "of backoff; --fast shows the same schedule in seconds.[/yellow]"
        )
    for s in samples:
        if s.fault == "flaky":
            console.print(
                f"  fault: [bold]{s.image_id}[/bold] download fails {s.flaky_failures}x, "
                "then succeeds"
            )
        elif s.fault == "corrupt":
            console.print(
                f"  fault: [bold]{s.image_id}[/bold] is a truncated upload: fails every time"
            )


# -- workers ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _workers(
    pipeline: Pipeline, options: DemoOptions, workdir: Path
) -> AsyncIterator[Callable[[], None]]:
    """Run the workers for the duration of the block; yields a check that raises if they
    died. One worker runs in this process; more run as ``conveyor worker`` processes, each
    importing :mod:`image_pipeline.worker` configured through the environment."""
    if options.workers == 1:
        with _log_to(workdir / WORKER_LOG):
            worker = conveyor.Worker(
                pipeline.app, concurrency=options.concurrency, grace_period=WORKER_GRACE
            )
            task = asyncio.create_task(worker.run())

            def check_task() -> None:
                if task.done():
                    task.result()  # raises what stopped it
                    raise DemoError(f"the worker stopped early; see {workdir / WORKER_LOG}")

            try:
                yield check_task
            finally:
                worker.stop()
                await task
        return

    env = {
        **os.environ,
        "PIPELINE_DIR": str(workdir),
        "CONVEYOR_URL": pipeline.app.url,
        "PIPELINE_TIME_SCALE": repr(options.time_scale),
        "PIPELINE_FORMATS": ",".join(pipeline.config.formats),
        "PIPELINE_FAULTS": str(workdir / FAULTS_FILE),
    }
    command = [
        sys.executable,
        "-m",
        "conveyor.cli",
        "worker",
        WORKER_APP,
        "--concurrency",
        str(options.concurrency),
        "--grace",
        str(WORKER_GRACE),
    ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(1, options.workers + 1):
            with open(workdir / f"worker-{n}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                )

        def check_processes() -> None:
            if all(p.poll() is not None for p in processes):
                raise DemoError(f"every worker process exited; see {workdir}/worker-*.log")

        yield check_processes
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # drain: running jobs finish, hooks run
        await asyncio.to_thread(_reap, processes, WORKER_GRACE + 5)


def _reap(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in processes:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Send the in-process worker's ``conveyor`` logs to a file, not over the live view."""
    logger = logging.getLogger("conveyor")
    handler = logging.FileHandler(path)
    handler.setFormatter(TextFormatter())
    handler.addFilter(JobContext())
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], level, logger.propagate = saved
        logger.setLevel(level)
        handler.close()


async def _watch(
    watcher: Watcher, options: DemoOptions, console: Console, check_workers: Callable[[], None]
) -> Snapshot:
    """Poll and redraw until every job is completed or dead."""
    title = f"[bold]conveyor demo[/bold]: {watcher.queue}"

    def view(snapshot: Snapshot | None) -> RenderableType:
        return render(snapshot, watcher.total, watcher.max_attempts, options.time_scale, title)

    with Live(
        view(None), console=console, refresh_per_second=REFRESH_PER_SECOND, transient=False
    ) as live:
        while True:
            check_workers()
            snapshot, events = await watcher.poll()
            for event in events:
                live.console.print(event)
            live.update(view(snapshot))
            if snapshot.finished >= watcher.total:
                return snapshot
            await asyncio.sleep(POLL_SECONDS)


# -- summary ----------------------------------------------------------------------------------


async def _summarize(pipeline: Pipeline, snapshot: Snapshot, total: int, seconds: float) -> Summary:
    images = await asyncio.to_thread(pipeline.db.images)
    rows = await asyncio.to_thread(pipeline.db.failed_jobs)
    processed = [i for i in images if i.status == "processed"]
    completed = snapshot.by_state[conveyor.State.COMPLETED]
    dead = snapshot.by_state[conveyor.State.DEAD]
    every = [r for records in snapshot.by_state.values() for r in records]
    return Summary(
        total=total,
        processed=len(processed),
        recovered=sorted(r.id for r in completed if r.failures),
        retried_jobs=sum(1 for r in every if any(a.retry_at is not None for a in r.failures)),
        retries=sum(1 for r in every for a in r.failures if a.retry_at is not None),
        dead=[
            (r.id, r.failures[-1].error_type.rsplit(".", 1)[-1] if r.failures else "?", r.attempts)
            for r in sorted(dead, key=lambda r: r.id)
        ],
        failed_rows=len(rows),
        alerts=len(read_alerts(pipeline.workdir / ALERTS_FILE)),
        original_bytes=sum(i.original_size for i in processed),
        processed_bytes=sum(i.processed_size or 0 for i in processed),
        seconds=seconds,
    )


def print_summary(
    summary: Summary, options: DemoOptions, pipeline: Pipeline, console: Console
) -> None:
    """The closing table and the commands to go on from here."""
    workdir = pipeline.workdir
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    recovered = (
        f" ({len(summary.recovered)} after retries: {', '.join(summary.recovered)})"
        if summary.recovered
        else ""
    )
    table.add_row("processed", f"{summary.processed} of {summary.total} images{recovered}")
    table.add_row(
        "retried",
        f"{summary.retried_jobs} job(s), {summary.retries} retries in all, "
        "each after its backoff delay",
    )
    dead = ", ".join(f"{i} ({err} after {n} attempts)" for i, err, n in summary.dead)
    table.add_row("dead-lettered", f"{len(summary.dead)}" + (f": {dead}" if dead else ""))
    table.add_row(
        "failed_jobs",
        f"{summary.failed_rows} row(s) in {shown(workdir / 'app.db')}; "
        f"{summary.alerts} alert(s) in {shown(workdir / ALERTS_FILE)}",
    )
    if summary.alerts < len(summary.dead):
        window = pipeline.app.alerts.dedup_window
        table.add_row(
            "",
            f"(dead letters with the same error within {window:g} s fold into one alert, "
            "plus a summary alert with the count when the window closes)",
        )
    saved = summary.original_bytes - summary.processed_bytes
    share = 100 * saved / summary.original_bytes if summary.original_bytes else 0.0
    table.add_row(
        "bytes",
        f"{_mb(summary.original_bytes)} of originals -> {_mb(summary.processed_bytes)} "
        f"processed: {_mb(saved)} saved ({share:.0f}%)",
    )
    outputs = pipeline.storage.location("processed")
    table.add_row("outputs", shown(Path(outputs)) if outputs.startswith("/") else outputs)
    logs = WORKER_LOG if options.workers == 1 else "worker-*.log"
    table.add_row("worker log", shown(workdir / logs))
    console.print()
    console.print(Text(f"Done in {summary.seconds:.1f} s", style="bold green"))
    console.print(table)
    console.print()
    dead_ids = [i for i, _, _ in summary.dead]
    for line in cli_commands(workdir, pipeline.queue, dead_ids, summary.recovered):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def cli_commands(
    workdir: Path, queue: str, dead_ids: Sequence[str], recovered_ids: Sequence[str] = ()
) -> list[str]:
    """The commands that inspect this run's queue and redrive its dead-letter queue."""
    app = f"--app {WORKER_APP}"
    lines = []
    if workdir != Path(DEFAULT_DIR).resolve():
        lines += [
            "# the commands below find the demo's files through PIPELINE_DIR:",
            f"export PIPELINE_DIR={shlex.quote(str(workdir))}",
        ]
    lines.append(f"conveyor status {app}")
    if recovered_ids:
        lines.append(
            f"conveyor job {recovered_ids[0]} {app}    # succeeded after retries: its attempts"
        )
    if not dead_ids:
        return ["Inspect the queue:", *lines]
    first = dead_ids[0]
    lines += [
        f"conveyor dlq list {queue} {app}",
        f"conveyor dlq show {queue} {first} {app}    # every attempt, with tracebacks",
        f"python -m image_pipeline.repair {' '.join(dead_ids)}    # re-upload good originals",
        f"conveyor dlq redrive {queue} {' '.join(dead_ids)} {app}",
        f"conveyor worker {WORKER_APP} --burst    # runs the redriven jobs, then exits",
    ]
    return ["Inspect the dead-letter queue, fix the images and redrive them:", *lines]


def shown(path: Path) -> str:
    """``path`` as people read it: ``./conveyor-demo/app.db`` under the current directory,
    absolute elsewhere."""
    try:
        return f"./{path.relative_to(Path.cwd())}"
    except ValueError:
        return str(path)


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
