"""Output of the ``conveyor`` command line: job tables, job detail, times and durations."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from conveyor.job import failure_log
from conveyor.records import JobRecord

#: Piped output gets wide tables, so job ids and errors are never cut (grep-able).
PIPED_WIDTH = 240
out = Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)


def job_table(records: list[JobRecord], title: str) -> None:
    """A table of jobs (id, task, state, attempts, progress, time, last error)."""
    if not records:
        out.print(f"{title}: none")
        return
    table = Table(title=title)
    for col in ("id", "task", "state", "attempts", "progress", "when", "last error"):
        table.add_column(col)
    for r in records:
        last = r.failures[-1] if r.failures else None
        when = r.finished_at or r.run_at
        table.add_row(
            r.id,
            r.task,
            r.state.value,
            str(r.attempts),
            f"{r.progress:.0f}%",
            when_text(when),
            f"{last.error_type}: {last.message}"[:80] if last else "",
        )
    out.print(table)


def show_record(r: JobRecord, as_json: bool) -> None:
    """One job in full: fields, logs and every attempt with its traceback."""
    failures = failure_log(r)
    if as_json:
        doc = {
            "queue": r.queue,
            "id": r.id,
            "task": r.task,
            "state": r.state.value,
            "attempts": r.attempts,
            "priority": r.priority,
            "payload": json_or_text(r.payload),
            "result": json_or_text(r.result),
            "progress": r.progress,
            "created_at": r.created_at,
            "run_at": r.run_at,
            "finished_at": r.finished_at,
            "logs": [{"at": line.at, "message": line.message} for line in r.logs],
            "failures": [a.to_dict() for a in failures],
            "options": r.options,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    out.print(f"[bold]{r.queue}/{r.id}[/bold]  task {r.task}  state [bold]{r.state.value}[/bold]")
    out.print(f"attempts {r.attempts}  priority {r.priority}  progress {r.progress:.0f}%")
    created, due, ended = when_text(r.created_at), when_text(r.run_at), when_text(r.finished_at)
    out.print(f"created {created}  due {due}  ended {ended}")
    out.print("payload ", json_or_text(r.payload), markup=False)
    if r.result is not None:
        out.print("result  ", json_or_text(r.result), markup=False)
    for line in r.logs:
        out.print(f"log {when_text(line.at)} {line.message}", markup=False)
    for a in failures:
        retry = f", retry at {when_text(a.retry_at)}" if a.retry_at else ""
        out.print(
            f"\n[bold]attempt {a.number}[/bold] (round {a.round}) {a.outcome.value}: "
            f"{a.error_type}: {a.message}",
            markup=True,
            highlight=False,
        )
        out.print(
            f"  worker {a.worker or '?'}  {when_text(a.started_at)} -> "
            f"{when_text(a.ended_at)}{retry}",
            markup=False,
        )
        if a.traceback:
            out.print(a.traceback.rstrip(), markup=False)


def json_or_text(data: bytes | None) -> Any:
    """Stored JSON bytes decoded, or as text when they are not JSON."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")


def when_text(ts: float | None) -> str:
    """An epoch time as local ``YYYY-mm-dd HH:MM:SS`` (``-`` for none)."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def age_text(seconds: float) -> str:
    """A duration as ``45s``, ``12m``, ``3.5h`` or ``2.0d``."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str | None) -> float | None:
    """``30m``/``2h``/``7d`` ago, or an ISO-8601 time, as epoch seconds."""
    if text is None:
        return None
    m = _DURATION.match(text.strip())
    if m:
        return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r}: use 30m, 2h, 7d or an ISO time") from None
