"""The ``conveyor`` command line: workers, status, jobs, the dead-letter queue, the demo."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from conveyor.app import App
from conveyor.cli_output import age_text, job_table, out, parse_when, show_record
from conveyor.dlq import DeadFilter
from conveyor.engines import redact
from conveyor.errors import ConveyorError
from conveyor.records import State

if TYPE_CHECKING:
    from conveyor.metrics import MetricsServer

T = TypeVar("T")


# -- loading the app --------------------------------------------------------------------------


def load_app(app_path: str | None = None, url: str | None = None) -> App:
    """The App named by ``module:attribute`` (or ``CONVEYOR_APP``), else a bare App on ``url``
    (or ``CONVEYOR_URL``, or ./conveyor.db). A bare App can inspect and redrive queues but
    knows no tasks, so it cannot enqueue or run jobs."""
    app_path = app_path or os.environ.get("CONVEYOR_APP")
    if not app_path:
        return App(url)
    module_name, _, attr = app_path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn and celery: import from the project
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import {module_name!r} for --app: {exc}") from exc
    candidate = getattr(module, attr or "app", None)
    if not isinstance(candidate, App):
        raise click.ClickException(
            f"--app {app_path!r}: expected module:attribute naming a conveyor.App, "
            f"found {type(candidate).__name__}"
        )
    if url is not None and url != candidate.url:
        raise click.ClickException("give --app or --url, not both: the app has its own URL")
    return candidate


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def command(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command with the app loaded, closing it afterwards."""

    @wraps(fn)
    def wrapper(app_path: str | None, url: str | None, **kwargs: Any) -> None:
        app = load_app(app_path, url)

        async def main() -> None:
            try:
                await fn(app, **kwargs)
            finally:
                await app.close()

        _run(main())

    return wrapper


app_option = click.option(
    "--app", "app_path", metavar="MODULE:ATTR", help="The conveyor.App (or CONVEYOR_APP)."
)
url_option = click.option("--url", help="Engine URL when no --app is given (or CONVEYOR_URL).")


def with_app(fn: Callable[..., None]) -> Callable[..., None]:
    """Add --app and --url options."""
    return app_option(url_option(fn))


class ConveyorGroup(click.Group):
    """Turns errors into one clear line instead of a traceback (``--debug`` shows it)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command, translating errors."""
        try:
            return super().invoke(ctx)
        except (ConveyorError, ValueError, OSError) as exc:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@click.group(cls=ConveyorGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(package_name="conveyor")
def cli(debug: bool) -> None:
    """Conveyor: typed background jobs on SQLite, Redis and SQS."""


# -- worker -----------------------------------------------------------------------------------


@cli.command()
@click.argument("app_path", metavar="MODULE:APP", envvar="CONVEYOR_APP")
@click.option("--queues", "-q", help="Comma-separated queues (default: all the app's tasks use).")
@click.option("--concurrency", "-c", default=10, show_default=True, help="Jobs at once.")
@click.option("--processes", "-p", default=1, show_default=True, help="Worker processes.")
@click.option("--grace", default=30.0, show_default=True, help="Seconds to finish on SIGTERM.")
@click.option("--burst", is_flag=True, help="Exit when no job is due and none runs.")
@click.option(
    "--idle-wait",
    default=1.0,
    show_default=True,
    help="Longest idle wait per engine call, in seconds (SQS: up to 20 saves requests).",
)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--metrics-port",
    type=int,
    help="Serve Prometheus metrics on this port (with --processes N: ports PORT..PORT+N-1).",
)
@click.option(
    "--metrics-addr", default="127.0.0.1", show_default=True, help="Metrics bind address."
)
def worker(
    app_path: str,
    queues: str | None,
    concurrency: int,
    processes: int,
    grace: float,
    burst: bool,
    idle_wait: float,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_addr: str,
) -> None:
    """Run jobs of MODULE:APP until SIGTERM/SIGINT (the first drains, a second hurries)."""
    from conveyor import logs
    from conveyor.worker import Worker
    from conveyor.worker.supervisor import supervise

    # A stop requested while the app is still importing (or after the drain, while the
    # interpreter exits) must end the worker cleanly, not kill it with the default action.
    stop_requested: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop_requested.append(signum))
    logs.configure(log_level, log_format)
    if processes > 1:
        args = _strip_option_values(sys.argv[1:], ("--processes", "-p", "--metrics-port"))
        per_child = [
            [*args, "--processes", "1"]
            + ([] if metrics_port is None else ["--metrics-port", str(metrics_port + i)])
            for i in range(processes)
        ]
        sys.exit(supervise(per_child))
    app = load_app(app_path)
    queue_list = [q.strip() for q in queues.split(",")] if queues else None
    w = Worker(
        app,
        queues=queue_list,
        concurrency=concurrency,
        grace_period=grace,
        burst=burst,
        idle_wait=idle_wait,
    )
    tracking: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if metrics_port is not None:
        tracking = _start_metrics(app, metrics_port, metrics_addr).metrics.track_worker()

    async def main() -> None:
        if stop_requested:
            w.stop()  # asked to stop before it started: drain nothing, exit 0
        try:
            with tracking:
                await w.run_until_signal()
        finally:
            await app.close()

    _run(main())


def _strip_option_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(n + "=") for n in names):
            continue
        kept.append(arg)
    return kept


def _start_metrics(app: App, port: int, addr: str) -> MetricsServer:
    try:
        from conveyor.metrics import start_metrics_server
    except ImportError as exc:
        raise click.ClickException(
            f"--metrics-port needs the dashboard extra: pip install 'conveyor[dashboard]' ({exc})"
        ) from exc
    return start_metrics_server(app, port, addr)


# -- inspection -------------------------------------------------------------------------------


@cli.command()
@with_app
@command
async def status(app: App) -> None:
    """Counts per queue and state, DLQ depth and the oldest dead job's age."""
    stats = await app.stats()
    table = Table(title=f"Conveyor at {redact(app.url)}")
    table.add_column("queue")
    for state in State:
        table.add_column(state.value, justify="right")
    table.add_column("oldest dead", justify="right")
    table.add_column("paused")
    now = app.clock.now()
    for s in stats:
        oldest = "-" if s.oldest_dead_at is None else age_text(now - s.oldest_dead_at)
        table.add_row(
            s.queue,
            *(str(s.counts.get(state, 0)) for state in State),
            oldest,
            "yes" if s.paused else "",
        )
    if not stats:
        out.print("no queues yet: nothing has been enqueued")
        return
    out.print(table)


@cli.command()
@click.argument("queue")
@click.option(
    "--state",
    type=click.Choice([s.value for s in State]),
    default="queued",
    show_default=True,
)
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0)
@with_app
@command
async def jobs(app: App, queue: str, state: str, limit: int, offset: int) -> None:
    """List jobs of QUEUE in one state."""
    engine = await app.engine()
    records = await engine.list_jobs(queue, State(state), limit=limit, offset=offset)
    job_table(records, f"{queue}: {state}")


@cli.command()
@click.argument("job_id")
@click.option("--queue", "-q", help="The job's queue (default: look in every queue).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@with_app
@command
async def job(app: App, job_id: str, queue: str | None, as_json: bool) -> None:
    """Show job JOB_ID: payload, state, progress, logs, result and every attempt."""
    engine = await app.engine()
    queues = [queue] if queue else [s.queue for s in await engine.stats()]
    found = [r for r in [await engine.get(q, job_id) for q in queues] if r is not None]
    if not found:
        where = f"queue {queue!r}" if queue else "any queue"
        raise click.ClickException(f"no job {job_id!r} in {where}")
    if len(found) > 1:
        names = ", ".join(r.queue for r in found)
        raise click.ClickException(f"job id {job_id!r} exists in {names}: add --queue")
    show_record(found[0], as_json)


@cli.command()
@click.argument("task_name", metavar="TASK")
@click.option("--json", "payload", default="null", help="The payload as JSON.")
@click.option("--job-id")
@click.option("--delay", type=float)
@click.option("--priority", type=int)
@with_app
@command
async def enqueue(
    app: App,
    task_name: str,
    payload: str,
    job_id: str | None,
    delay: float | None,
    priority: int | None,
) -> None:
    """Enqueue TASK with a JSON payload (validated against the task's type)."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--json is not valid JSON: {exc}") from exc
    task = app.get_task(_resolve_task(app, task_name))
    handle = await task.enqueue(data, job_id=job_id, delay=delay, priority=priority)
    verb = "enqueued" if handle.created else "already exists (same job id):"
    out.print(f"{verb} {handle.queue}/{handle.id}")


def _resolve_task(app: App, name: str) -> str:
    if name in app.tasks:
        return name
    matches = [t for t in app.tasks if t.rsplit(".", 1)[-1] == name]
    return matches[0] if len(matches) == 1 else name


@cli.command()
@click.argument("queue")
@with_app
@command
async def pause(app: App, queue: str) -> None:
    """Pause QUEUE: jobs stay, workers take none."""
    await (await app.engine()).set_paused(queue, True)
    out.print(f"paused {queue}")


@cli.command()
@click.argument("queue")
@with_app
@command
async def resume(app: App, queue: str) -> None:
    """Resume a paused QUEUE."""
    await (await app.engine()).set_paused(queue, False)
    out.print(f"resumed {queue}")


# -- dead-letter queue ------------------------------------------------------------------------


@cli.group()
def dlq() -> None:
    """Inspect, redrive and purge dead-letter queues."""


filter_options = [
    click.option("--task", help="Only jobs of this task."),
    click.option("--error", help="Only jobs whose last error has this type (e.g. ValueError)."),
    click.option("--since", help="Only jobs dead since: 30m, 2h, 7d or an ISO time."),
    click.option("--until", help="Only jobs dead until: 30m, 2h, 7d ago or an ISO time."),
]


def with_filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the DLQ filter options."""
    for option in reversed(filter_options):
        fn = option(fn)
    return fn


def _filter(
    task: str | None, error: str | None, since: str | None, until: str | None
) -> DeadFilter:
    return DeadFilter(task=task, error=error, since=parse_when(since), until=parse_when(until))


@dlq.command("list")
@click.argument("queue")
@with_filters
@click.option("--limit", default=50, show_default=True)
@with_app
@command
async def dlq_list(
    app: App,
    queue: str,
    task: str | None,
    error: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> None:
    """List dead jobs of QUEUE, newest first."""
    found = await app.dlq.list(queue, _filter(task, error, since, until), limit=limit)
    job_table([j.record for j in found if j.record], f"{queue}: dead-letter queue")


@dlq.command("show")
@click.argument("queue")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@with_app
@command
async def dlq_show(app: App, queue: str, job_id: str, as_json: bool) -> None:
    """Show a dead job with every attempt and its traceback."""
    found = await app.dlq.show(queue, job_id)
    assert found.record is not None
    show_record(found.record, as_json)


@dlq.command("redrive")
@click.argument("queue")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every dead job matching the filters.")
@with_filters
@with_app
@command
async def dlq_redrive(
    app: App,
    queue: str,
    job_ids: tuple[str, ...],
    everything: bool,
    task: str | None,
    error: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Queue dead jobs again: JOB_IDS, or --all (optionally filtered)."""
    where = _filter(task, error, since, until)
    if not job_ids and not everything and where == DeadFilter():
        raise click.ClickException("name job ids, or give --all (with optional filters)")
    n = await app.dlq.redrive(queue, list(job_ids) if job_ids else None, where)
    out.print(f"redrove {n} job(s) of {queue}")


@dlq.command("purge")
@click.argument("queue")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every dead job matching the filters.")
@with_filters
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_app
@command
async def dlq_purge(
    app: App,
    queue: str,
    job_ids: tuple[str, ...],
    everything: bool,
    task: str | None,
    error: str | None,
    since: str | None,
    until: str | None,
    yes: bool,
) -> None:
    """Delete dead jobs for good: JOB_IDS, or --all (optionally filtered)."""
    where = _filter(task, error, since, until)
    if not job_ids and not everything and where == DeadFilter():
        raise click.ClickException("name job ids, or give --all (with optional filters)")
    if not job_ids:
        count = await app.dlq.count(queue, where)
        if not yes and not click.confirm(f"delete {count} dead job(s) of {queue} for good?"):
            raise click.Abort()
    n = await app.dlq.purge(queue, list(job_ids) if job_ids else None, where)
    out.print(f"purged {n} job(s) of {queue}")


# -- commands that live elsewhere -------------------------------------------------------------


def _register_optional() -> None:
    """Add commands whose modules need optional packages, if they import."""
    for module, attr in (("image_pipeline.demo", "demo"), ("conveyor.dashboard.cli", "dashboard")):
        try:
            cmd = getattr(importlib.import_module(module), attr)
        except Exception as exc:  # one broken optional module must not break every command
            cli.add_command(_missing(attr, module, exc))
            continue
        cli.add_command(cmd)


def _missing(name: str, module: str, exc: Exception) -> click.Command:
    @click.command(name, help=f"(unavailable: {module} did not import)")
    def unavailable() -> None:
        raise click.ClickException(f"{name} is unavailable: {exc}")

    return unavailable


_register_optional()


def main() -> None:
    """Entry point of the ``conveyor`` script."""
    cli(prog_name="conveyor")


if __name__ == "__main__":
    main()
