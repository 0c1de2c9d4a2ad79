"""What the dashboard's pages show, read through the engine contract (so: every engine).

Throughput and failure rate are derived from stored jobs: completed and dead jobs whose
``finished_at`` falls in the window. Completed jobs removed by retention (``keep_completed``)
are not seen, so with aggressive retention the throughput shown is a lower bound; the pages
say so. Scans stop after a bounded number of jobs and then show the count as ``N+``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from conveyor.app import App
from conveyor.dashboard.render import age
from conveyor.dlq import DeadFilter
from conveyor.engines.base import Engine
from conveyor.errors import ConfigurationError
from conveyor.records import JobRecord, QueueStats, State

#: The window of the throughput and failure-rate columns, in seconds.
RATE_WINDOW = 3600.0
#: At most this many finished jobs per queue and state are read for the window counts.
RATE_SCAN_LIMIT = 10_000
#: Page size used when reading many jobs from the engine.
SCAN_PAGE = 500


@dataclass
class QueueSummary:
    """One row of the overview."""

    queue: str
    counts: dict[str, int]
    paused: bool
    oldest_dead_at: float | None
    #: ``None`` when the engine cannot list finished jobs (SQS without a state table).
    completed_recent: int | None
    dead_recent: int | None
    #: True when a window count hit :data:`RATE_SCAN_LIMIT` (the real count is higher).
    capped: bool

    @property
    def dead(self) -> int:
        """DLQ depth."""
        return self.counts.get(State.DEAD.value, 0)

    @property
    def failure_rate(self) -> float | None:
        """Dead / (completed + dead) among jobs that finished in the window."""
        if self.completed_recent is None or self.dead_recent is None:
            return None
        finished = self.completed_recent + self.dead_recent
        return self.dead_recent / finished if finished else None

    def to_json(self, now: float) -> dict[str, Any]:
        """The row as JSON, for the live-update endpoint and API users."""
        age = None if self.oldest_dead_at is None else max(0.0, now - self.oldest_dead_at)
        return {
            "queue": self.queue,
            "counts": self.counts,
            "paused": self.paused,
            "dlq_depth": self.dead,
            "oldest_dead_age_seconds": age,
            "completed_last_window": self.completed_recent,
            "dead_last_window": self.dead_recent,
            "failure_rate": self.failure_rate,
            "window_seconds": RATE_WINDOW,
            "capped": self.capped,
        }


@dataclass
class Totals:
    """The overview's headline numbers, summed over queues."""

    waiting: int
    scheduled: int
    active: int
    completed_recent: int
    dead_recent: int
    dead: int
    paused: int
    oldest_dead_at: float | None

    @property
    def failure_rate(self) -> float | None:
        """Dead / (completed + dead) among jobs that finished in the window, all queues."""
        finished = self.completed_recent + self.dead_recent
        return self.dead_recent / finished if finished else None


def totals(rows: list[QueueSummary]) -> Totals:
    """Sum the overview rows."""
    oldest = [r.oldest_dead_at for r in rows if r.oldest_dead_at is not None]
    return Totals(
        waiting=sum(r.counts.get("queued", 0) + r.counts.get("scheduled", 0) for r in rows),
        scheduled=sum(r.counts.get("scheduled", 0) for r in rows),
        active=sum(r.counts.get("active", 0) for r in rows),
        completed_recent=sum(r.completed_recent or 0 for r in rows),
        dead_recent=sum(r.dead_recent or 0 for r in rows),
        dead=sum(r.dead for r in rows),
        paused=sum(1 for r in rows if r.paused),
        oldest_dead_at=min(oldest) if oldest else None,
    )


def all_queues(app: App, stats: list[QueueStats]) -> list[str]:
    """Queues the app's tasks use plus every queue the engine holds jobs for."""
    return sorted(set(app.queues) | {s.queue for s in stats})


async def overview(app: App, now: float) -> list[QueueSummary]:
    """A summary of every queue."""
    engine = await app.engine()
    stats = await app.stats()
    by_queue = {s.queue: s for s in stats}
    since = now - RATE_WINDOW
    rows = []
    for queue in all_queues(app, stats):
        stat = by_queue.get(queue) or QueueStats(queue, {})
        completed: int | None
        dead: int | None
        try:
            completed, capped_c = await finished_since(engine, queue, State.COMPLETED, since)
            dead, capped_d = await finished_since(engine, queue, State.DEAD, since)
        except ConfigurationError:  # the engine cannot list jobs in these states
            completed = dead = None
            capped_c = capped_d = False
        rows.append(
            QueueSummary(
                queue=queue,
                counts={state.value: stat.counts.get(state, 0) for state in State},
                paused=stat.paused,
                oldest_dead_at=stat.oldest_dead_at,
                completed_recent=completed,
                dead_recent=dead,
                capped=capped_c or capped_d,
            )
        )
    return rows


async def finished_since(
    engine: Engine, queue: str, state: State, since: float, limit: int = RATE_SCAN_LIMIT
) -> tuple[int, bool]:
    """How many ``state`` jobs of ``queue`` finished at or after ``since``; ``True`` if capped.

    Relies on the contract's order (finished jobs newest first) to stop early.
    """
    count = offset = 0
    while count < limit:
        page = await engine.list_jobs(queue, state, limit=SCAN_PAGE, offset=offset)
        for record in page:
            if (record.finished_at or 0.0) < since:
                return count, False
            count += 1
            if count >= limit:
                return count, True
        if len(page) < SCAN_PAGE:
            return count, False
        offset += SCAN_PAGE
    return count, True


@dataclass
class DeadPage:
    """One page of a filtered DLQ listing, with the values the filters can take."""

    jobs: list[JobRecord]
    matching: int
    total: int
    tasks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def dead_page(app: App, queue: str, where: DeadFilter, offset: int, limit: int) -> DeadPage:
    """Dead jobs of ``queue`` matching ``where``: the slice ``[offset, offset+limit)``, the
    number matching, and the tasks and error types present in the whole DLQ."""
    jobs: list[JobRecord] = []
    matching = total = 0
    tasks: set[str] = set()
    errors: set[str] = set()
    async for record in all_dead(app, queue):
        total += 1
        tasks.add(record.task)
        errors.add(last_error(record))
        if where.matches(record):
            if offset <= matching < offset + limit:
                jobs.append(record)
            matching += 1
    return DeadPage(jobs, matching, total, sorted(tasks), sorted(e for e in errors if e))


async def all_dead(app: App, queue: str) -> AsyncIterator[JobRecord]:
    """Every dead job of ``queue``, newest first, read page by page."""
    engine = await app.engine()
    offset = 0
    while True:
        page = await engine.list_jobs(queue, State.DEAD, limit=SCAN_PAGE, offset=offset)
        for record in page:
            yield record
        if len(page) < SCAN_PAGE:
            return
        offset += SCAN_PAGE


def last_error(record: JobRecord) -> str:
    """The error type of the attempt that ended the job ('' if none was recorded)."""
    return record.failures[-1].error_type if record.failures else ""


def fingerprint(data: Any) -> str:
    """A short digest of JSON-able ``data``: pages reload a region when it changes."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def counts_of(stats: list[QueueStats], queue: str) -> dict[str, int]:
    """Counts by state name of ``queue`` (zeros when the engine has no jobs for it)."""
    for stat in stats:
        if stat.queue == queue:
            return {s.value: stat.counts.get(s, 0) for s in State}
    return {s.value: 0 for s in State}


def job_summary(record: JobRecord) -> dict[str, Any]:
    """The live fields of a job, as JSON."""
    return {
        "queue": record.queue,
        "id": record.id,
        "task": record.task,
        "state": record.state.value,
        "attempts": record.attempts,
        "progress": record.progress,
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        "logs": len(record.logs),
        "failures": len(record.failures),
    }


def job_fingerprint(record: JobRecord) -> str:
    """Changes when the job page would show something new."""
    return fingerprint(job_summary(record))


def jobs_fingerprint(records: list[JobRecord], counts: dict[str, int]) -> str:
    """Changes when a jobs listing page would show something new."""
    return fingerprint([counts, [(r.id, r.state.value, r.attempts) for r in records]])


def overview_fingerprint(rows: list[QueueSummary], now: float) -> str:
    """Changes when the overview would show something new (ages as displayed)."""
    shown = [
        (
            r.queue,
            r.counts,
            r.paused,
            age(None if r.oldest_dead_at is None else now - r.oldest_dead_at),
            r.completed_recent,
            r.dead_recent,
        )
        for r in rows
    ]
    return fingerprint(shown)
