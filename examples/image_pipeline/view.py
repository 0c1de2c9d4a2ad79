"""The demo's live view: what the queue, the app database and the alert file say, polled.

Everything shown is read back from storage (the engine, ``failed_jobs``, ``alerts.jsonl``)
rather than from in-process callbacks, so the view is the same whether the workers run in
the demo's process or in ``conveyor worker`` processes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

import conveyor
from conveyor.records import JobRecord
from image_pipeline.db import Database
from image_pipeline.sinks import read_alerts

STATE_STYLES: dict[conveyor.State, str] = {
    conveyor.State.QUEUED: "cyan",
    conveyor.State.SCHEDULED: "yellow",
    conveyor.State.ACTIVE: "blue",
    conveyor.State.COMPLETED: "green",
    conveyor.State.DEAD: "red",
}
#: Rows of running jobs and of jobs waiting for a retry shown at most.
MAX_ROWS = 10
BAR_WIDTH = 24
#: Error messages in event lines are cut to this many characters (`conveyor dlq show` has all).
MESSAGE_WIDTH = 100


@dataclass
class Snapshot:
    """The queue as one poll saw it."""

    counts: dict[conveyor.State, int]
    by_state: dict[conveyor.State, list[JobRecord]]
    at: float

    @property
    def finished(self) -> int:
        """Jobs that will not run again: completed or dead."""
        return self.counts[conveyor.State.COMPLETED] + self.counts[conveyor.State.DEAD]


@dataclass
class Watcher:
    """Polls one queue and turns what changed into event lines."""

    app: conveyor.App
    queue: str
    total: int
    max_attempts: int
    time_scale: float
    db: Database
    alerts_file: Path
    _seen_attempts: set[tuple[str, int, int]] = field(default_factory=set)
    _seen_recovered: set[str] = field(default_factory=set)
    _seen_rows: int = 0
    _seen_alerts: int = 0

    async def poll(self) -> tuple[Snapshot, list[Text]]:
        """Read the queue, ``failed_jobs`` and the alerts; return the snapshot and new events."""
        engine = await self.app.engine()
        # Counts come from one statement, so they always add up; the job lists below are
        # read one state after another and may overlap by a job that moved in between.
        stats = {s.queue: s.counts for s in await self.app.stats()}
        counts = stats.get(self.queue) or {s: 0 for s in conveyor.State}
        by_state: dict[conveyor.State, list[JobRecord]] = {}
        for state in conveyor.State:
            by_state[state] = await engine.list_jobs(self.queue, state, limit=self.total + 100)
        snapshot = Snapshot(counts, by_state, self.app.clock.now())
        events = self._job_events(snapshot)
        rows = await asyncio.to_thread(self.db.failed_jobs)
        for row in rows[self._seen_rows :]:
            events.append(
                Text.assemble(
                    (f"{row.job_id:<8}", "bold"),
                    ("  failed_jobs row ", "red"),
                    (f"#{row.id}", "bold red"),
                    f" written by the on_dead_letter hook ({len(row.attempts)} attempts)",
                )
            )
        self._seen_rows = len(rows)
        alerts = read_alerts(self.alerts_file)
        for alert in alerts[self._seen_alerts :]:
            events.append(
                Text.assemble(("ALERT", "bold white on red"), f" {alert.title}: {alert.message}")
            )
        self._seen_alerts = len(alerts)
        return snapshot, events

    def _job_events(self, snapshot: Snapshot) -> list[Text]:
        events: list[Text] = []
        for state, records in snapshot.by_state.items():
            for record in records:
                for attempt in record.failures:
                    key = (record.id, attempt.round, attempt.number)
                    if key in self._seen_attempts:
                        continue
                    self._seen_attempts.add(key)
                    events.append(self._attempt_event(record, attempt))
                recovered = state is conveyor.State.COMPLETED and record.failures
                if recovered and record.id not in self._seen_recovered:
                    self._seen_recovered.add(record.id)
                    events.append(
                        Text.assemble(
                            (f"{record.id:<8}", "bold"),
                            ("  succeeded", "green"),
                            f" on attempt {record.attempts} after "
                            f"{len(record.failures)} failed attempt(s)",
                        )
                    )
        return events

    def _attempt_event(self, record: JobRecord, attempt: conveyor.Attempt) -> Text:
        event = Text.assemble(
            (f"{record.id:<8}", "bold"), f"  attempt {attempt.number}/{self.max_attempts} failed"
        )
        if attempt.retry_at is not None and attempt.ended_at is not None:
            delay = attempt.retry_at - attempt.ended_at
            event.append(
                f" -> retry in {delay:.2f}s{_real(delay, self.time_scale)}", style="yellow"
            )
        else:
            event.append(" -> dead-letter queue", style="bold red")
        event.append(": ")
        event.append(attempt.error_type.rsplit(".", 1)[-1], style="bold")
        event.append(f": {_shorten(attempt.message, MESSAGE_WIDTH)}", style="dim")
        return event


def render(
    snapshot: Snapshot | None, total: int, max_attempts: int, time_scale: float, title: str
) -> RenderableType:
    """The live panel: counts by state, overall progress, running jobs, pending retries."""
    if snapshot is None:
        return Panel(Text("starting workers..."), title=title)
    counts = Text()
    for state in conveyor.State:
        counts.append(f"{state.value} ", style=STATE_STYLES[state])
        counts.append(f"{snapshot.counts[state]:<4}", style="bold")
    overall = Table.grid(padding=(0, 1))
    overall.add_row(
        Text("all jobs", style="bold"),
        ProgressBar(total=total, completed=snapshot.finished, width=BAR_WIDTH * 2),
        Text(f"{snapshot.finished}/{total} finished"),
    )
    parts: list[RenderableType] = [counts, overall]

    active = snapshot.by_state[conveyor.State.ACTIVE][:MAX_ROWS]
    if active:
        table = Table.grid(padding=(0, 1))
        for record in active:
            step = record.logs[-1].message if record.logs else "starting"
            table.add_row(
                Text(f"{record.id:<8}", style="bold"),
                Text(f"attempt {record.attempts}/{max_attempts}"),
                ProgressBar(total=100, completed=record.progress, width=BAR_WIDTH),
                Text(f"{record.progress:>3.0f}%"),
                Text(_shorten(step, 48), style="dim"),
            )
        parts += [Text("running", style="bold blue"), table]

    waiting = snapshot.by_state[conveyor.State.SCHEDULED][:MAX_ROWS]
    if waiting:
        table = Table.grid(padding=(0, 1))
        for record in waiting:
            left = max(0.0, record.run_at - snapshot.at)
            last = record.failures[-1] if record.failures else None
            why = last.error_type.rsplit(".", 1)[-1] if last else ""
            table.add_row(
                Text(f"{record.id:<8}", style="bold"),
                Text(
                    f"retry {record.attempts}/{max_attempts - 1} in {left:5.2f}s"
                    f"{_real(left, time_scale)}"
                ),
                Text(f"after {why}", style="dim"),
            )
        parts += [Text("waiting to retry (backoff)", style="bold yellow"), table]
    return Panel(Group(*parts), title=title, border_style="blue")


def _shorten(text: str, width: int) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _real(seconds: float, time_scale: float) -> str:
    """`` (5 min at real time)`` for a scaled delay; nothing at real time."""
    if time_scale == 1:
        return ""
    real = seconds / time_scale
    if real < 59.5:
        text = f"{real:.0f} s"
    elif real < 5400:
        text = f"{real / 60:.0f} min"
    else:
        text = f"{real / 3600:.1f} h"
    return f" ({text} at real time)"
