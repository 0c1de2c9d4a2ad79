"""The wire format between engine.py and the Lua scripts: settlement arguments in, job rows
and published events out. Kept apart so the engine reads as the Engine protocol and nothing
else."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.engines.redis.keys import QueueKeys
from conveyor.records import (
    Complete,
    DeadLetter,
    EventKind,
    JobEvent,
    JobRecord,
    Lease,
    NewJob,
    Release,
    Retry,
    Settlement,
    State,
    load_failures_or_empty,
    load_logs_or_empty,
    load_options,
)

log = logging.getLogger("conveyor.engines.redis")

_STATES = {
    b"queued": State.QUEUED,
    b"active": State.ACTIVE,
    b"completed": State.COMPLETED,
    b"dead": State.DEAD,
}

#: The order of the counts stats.lua returns.
STAT_ORDER = (State.QUEUED, State.SCHEDULED, State.ACTIVE, State.COMPLETED, State.DEAD)


def by_queue(leases: Sequence[Lease]) -> dict[str, list[int]]:
    """Indexes of ``leases`` grouped by queue: each queue is one script call."""
    groups: dict[str, list[int]] = {}
    for i, lease in enumerate(leases):
        groups.setdefault(lease.queue, []).append(i)
    return groups


def settle_args(s: Settlement) -> tuple[Any, ...]:
    """The five ARGV entries of one settlement in settle.lua."""
    lease = s.lease
    if isinstance(s, Complete):
        if not s.keep:
            return ("f", lease.job_id, lease.token, "", "")
        if s.result is None:
            return ("n", lease.job_id, lease.token, "", "")
        return ("c", lease.job_id, lease.token, s.result, "")
    if isinstance(s, Retry):
        return ("r", lease.job_id, lease.token, s.run_at, json.dumps(s.attempt.to_dict()))
    if isinstance(s, DeadLetter):
        return ("d", lease.job_id, lease.token, "", json.dumps(s.attempt.to_dict()))
    if isinstance(s, Release):
        return ("l", lease.job_id, lease.token, "", "")
    raise TypeError(f"not a settlement: {s!r}")


def record(queue: str, row: list[Any], now: float) -> JobRecord:
    """Build a record from a script's job row (layout: job_row in _lib.lua)."""
    run_at = float(row[5])
    state = _STATES[row[3]]
    if state is State.QUEUED and run_at > now:
        state = State.SCHEDULED
    raw_options = row[8]
    options = load_options(raw_options)
    if row[9]:
        options["redriven"] = row[9]
    started, finished, token, expires = row[10], row[11], row[14], row[15]
    return JobRecord(
        queue,
        row[0].decode(),
        row[1].decode(),
        row[2],
        state,
        row[4],
        run_at,
        float(row[6]),
        row[7],
        options,
        None if started is None else float(started),
        None if finished is None else float(finished),
        float(row[12]),
        row[13],
        load_failures_or_empty(row[17]),
        load_logs_or_empty(row[18]),
        None if token is None else token.decode(),
        None if expires is None else float(expires),
        row[16].decode(),
    )


def events(queue: str, data: bytes) -> list[JobEvent]:
    """The events of one message the scripts published (``note`` in _lib.lua): a JSON array
    of ``{event, id, state, attempt, at, progress?}``. An item this version cannot read (a
    newer script's) is skipped, never allowed to stop the stream."""
    out: list[JobEvent] = []
    try:
        items = json.loads(data)
    except ValueError:
        log.warning("ignoring an unreadable job event message on queue %r: %r", queue, data[:200])
        return out
    for item in items if isinstance(items, list) else ():
        try:
            progress = item.get("progress")
            out.append(
                JobEvent(
                    EventKind(item["event"]),
                    queue,
                    str(item["id"]),
                    State(item["state"]),
                    int(item["attempt"]),
                    None if progress is None else float(progress),
                    float(item["at"]),
                )
            )
        except (KeyError, ValueError, TypeError, AttributeError):
            log.warning("ignoring an unreadable job event on queue %r: %r", queue, item)
    return out


@dataclass(frozen=True)
class EnqueueBatch:
    """One enqueue script call: its KEYS, its ARGV, and the indexes of the jobs it stores."""

    queue: str
    keys: tuple[str, ...]
    args: list[Any]
    indexes: list[int]


def enqueue_batches(
    jobs: Sequence[NewJob], now: float, keys_of: Callable[[str], QueueKeys], per_call: int
) -> list[EnqueueBatch]:
    """Split ``jobs`` into enqueue script calls: one per queue and per ``per_call`` jobs
    (layout of ARGV: enqueue.lua)."""
    by_queue: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        by_queue.setdefault(job.queue, []).append(i)
    batches = []
    for queue, indexes in by_queue.items():
        k = keys_of(queue)
        keys = (k.jobs, k.ready, k.sched, k.seq, k.wake, k.events)
        for start in range(0, len(indexes), per_call):
            span = indexes[start : start + per_call]
            args: list[Any] = [now]
            for i in span:
                j = jobs[i]
                redriven = j.options.get("redriven", 0)
                args += (
                    j.id,
                    j.task,
                    j.payload,
                    j.priority,
                    j.run_at,
                    j.created_at,
                    json.dumps(j.options) if j.options else "{}",
                    redriven if isinstance(redriven, int) else 0,
                )
            batches.append(EnqueueBatch(queue, keys, args, span))
    return batches


def created(count: int, batches: Sequence[EnqueueBatch], results: Sequence[Any]) -> list[bool]:
    """Per job, whether the enqueue scripts stored it (``False``: the id existed)."""
    out = [False] * count
    for batch, result in zip(batches, results, strict=True):
        for i, stored in zip(batch.indexes, result, strict=True):
            out[i] = stored == 1
    return out
