"""The data engines store and move: job records, attempt records, leases and settlements.

These are plain values. Engines persist them; the core decides what happens to them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class State(StrEnum):
    """Where a job is in its life.

    ``queued`` jobs are due now, ``scheduled`` jobs wait for their ``run_at`` (a delay or a
    retry's backoff), ``active`` jobs are leased to a worker, ``completed`` jobs kept a result,
    ``dead`` jobs are in their queue's dead-letter queue.
    """

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    COMPLETED = "completed"
    DEAD = "dead"


class Outcome(StrEnum):
    """Why an attempt ended without a result."""

    ERROR = "error"  # the task raised
    TIMEOUT = "timeout"  # the task ran past its timeout and was stopped
    LOST = "lost"  # the worker died or hung; its lease expired
    INVALID = "invalid"  # the payload could not be decoded or validated
    UNKNOWN_TASK = "unknown_task"  # no task of that name in the worker's app
    UNRECOVERABLE = "unrecoverable"  # the task raised conveyor.Unrecoverable


@dataclass
class Attempt:
    """The record of one failed attempt, kept in the job's failure log forever."""

    number: int
    outcome: Outcome
    error_type: str
    message: str
    traceback: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    worker: str = ""
    retry_at: float | None = None
    #: How many times the job had been redriven when this attempt ran (0: first round).
    round: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of this attempt."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        """Rebuild an attempt stored by :meth:`to_dict`."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["outcome"] = Outcome(fields.get("outcome", "error"))
        return cls(**fields)


@dataclass
class LogLine:
    """One line a task wrote with ``job.log()``."""

    at: float
    message: str


#: Put in ``JobRecord.options`` by an engine when a job's stored options cannot be decoded
#: (a corrupted or hand-written row); the worker dead-letters the job with this reason.
UNREADABLE_OPTIONS = "unreadable_options"


@dataclass
class JobRecord:
    """Everything an engine stores about one job."""

    queue: str
    id: str
    task: str
    payload: bytes
    state: State
    priority: int = 0
    run_at: float = 0.0
    created_at: float = 0.0
    attempts: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0
    result: bytes | None = None
    failures: list[Attempt] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    lease_token: str | None = None
    lease_expires_at: float | None = None
    worker: str = ""

    @property
    def redrive_round(self) -> int:
        """How many times the job was redriven from the DLQ (0 if the stored count is unusable).

        Engines keep it in ``options["redriven"]``; attempts of round N carry ``round == N``.
        """
        value = self.options.get("redriven", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def lease(self) -> Lease:
        """The lease this record was reserved under (only for active records)."""
        if self.lease_token is None:
            raise ValueError(f"job {self.id} in queue {self.queue} holds no lease")
        return Lease(self.queue, self.id, self.lease_token)


@dataclass
class NewJob:
    """A job to store, as built by the core from a validated enqueue call."""

    queue: str
    id: str
    task: str
    payload: bytes
    priority: int
    run_at: float
    created_at: float
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lease:
    """Proof that a worker holds a job: a settle or extend with a stale token is refused."""

    queue: str
    job_id: str
    token: str


@dataclass(frozen=True)
class Complete:
    """Settle: the job succeeded. ``keep=False`` deletes it instead of keeping the result."""

    lease: Lease
    result: bytes | None
    keep: bool = True


@dataclass(frozen=True)
class Retry:
    """Settle: the attempt failed; run the job again at ``run_at``."""

    lease: Lease
    run_at: float
    attempt: Attempt


@dataclass(frozen=True)
class DeadLetter:
    """Settle: the job failed for good; move it to its queue's dead-letter queue."""

    lease: Lease
    attempt: Attempt


@dataclass(frozen=True)
class Release:
    """Settle: give the job back unrun (graceful shutdown); the attempt does not count."""

    lease: Lease


Settlement = Complete | Retry | DeadLetter | Release


class EventKind(StrEnum):
    """What a :class:`JobEvent` reports.

    Every kind but ``subscribed`` is a job's transition; its event carries the job's state
    after it. ``subscribed`` is the stream's own: it is listening to the queue from now on,
    for the first time or again after a gap (a reconnect, or a consumer too slow to keep
    up). Events may have been missed before it, so re-read any job you are waiting for.
    """

    ENQUEUED = "enqueued"  # stored (state queued or scheduled)
    ACTIVE = "active"  # leased to a worker; attempt counts the try that starts
    PROGRESS = "progress"  # the running task reported progress
    COMPLETED = "completed"  # succeeded (the result may not have been kept)
    FAILED = "failed"  # an attempt failed and a retry is scheduled
    DEAD = "dead"  # failed for good: moved to the dead-letter queue
    RELEASED = "released"  # handed back unrun by a stopping worker
    LOST = "lost"  # its worker died or stalled: the lease expired, the job is due again
    REDRIVEN = "redriven"  # moved from the dead-letter queue back to queued
    SUBSCRIBED = "subscribed"  # the stream listens to the queue (again): re-read what you track


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job, as engines with an event stream push it.

    ``state`` is the job's state after the event, ``attempt`` its attempts so far, ``at``
    the engine's time of the change. ``subscribed`` events name only the ``queue``.
    """

    kind: EventKind
    queue: str
    job_id: str = ""
    state: State | None = None
    attempt: int = 0
    progress: float | None = None
    at: float | None = None

    @property
    def finished(self) -> bool:
        """The job completed or is dead (for now: a dead job can be redriven)."""
        return self.state in (State.COMPLETED, State.DEAD)


@dataclass
class QueueStats:
    """Counts of one queue, as ``conveyor status`` shows them."""

    queue: str
    counts: dict[State, int]
    paused: bool = False
    oldest_dead_at: float | None = None

    @property
    def dead(self) -> int:
        """How many jobs sit in this queue's dead-letter queue."""
        return self.counts.get(State.DEAD, 0)


def dump_failures(failures: list[Attempt]) -> str:
    """Encode a failure log as JSON text, the form engines store."""
    return json.dumps([a.to_dict() for a in failures])


def load_failures(text: str | bytes | None) -> list[Attempt]:
    """Decode a failure log stored by :func:`dump_failures`."""
    if not text:
        return []
    return [Attempt.from_dict(item) for item in json.loads(text)]


def dump_logs(logs: list[LogLine]) -> str:
    """Encode log lines as JSON text."""
    return json.dumps([asdict(line) for line in logs])


def load_logs(text: str | bytes | None) -> list[LogLine]:
    """Decode log lines stored by :func:`dump_logs`."""
    if not text:
        return []
    return [LogLine(item["at"], item["message"]) for item in json.loads(text)]


def load_options(text: Any) -> dict[str, Any]:
    """A stored job's options; a corrupted value becomes an :data:`UNREADABLE_OPTIONS` note
    that the worker dead-letters the job for, so one bad row cannot stop a queue."""
    if text in (b"{}", "{}"):
        return {}
    try:
        options = json.loads(text)
    except (TypeError, ValueError) as exc:
        return {UNREADABLE_OPTIONS: f"stored options are not JSON ({exc})"}
    if not isinstance(options, dict):
        return {UNREADABLE_OPTIONS: f"stored options are not a JSON object: {text!r:.100}"}
    return options


def load_failures_or_empty(text: Any) -> list[Attempt]:
    """:func:`load_failures`, reading a corrupted value as an empty log."""
    try:
        return load_failures(text)
    except (TypeError, ValueError, KeyError, AttributeError):
        return []


def load_logs_or_empty(text: Any) -> list[LogLine]:
    """:func:`load_logs`, reading a corrupted value as no lines."""
    try:
        return load_logs(text)
    except (TypeError, ValueError, KeyError, AttributeError):
        return []
