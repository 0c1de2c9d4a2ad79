"""The engine contract: the few queue-level operations every storage engine implements.

An engine stores and moves jobs; it decides nothing. Retry decisions, backoff, validation,
dead-letter policy, hooks and alerts live in the core and are the same on every engine.

Delivery model (leases):

1. :meth:`Engine.enqueue` stores jobs, idempotent on ``(queue, id)``.
2. :meth:`Engine.reserve` hands out up to N due jobs, each with a fresh lease token and
   expiry, and counts the attempt. A job whose lease expired (its worker died) is due again.
3. :meth:`Engine.extend` pushes lease expiries forward while jobs run.
4. :meth:`Engine.settle` ends leases: complete, retry at a time, dead-letter, or release.
   A settlement whose token is stale is refused (returns ``False``) and changes nothing.

Every operation that changes a job is atomic in the engine. Times are seconds since the
epoch, taken from the clock the engine was built with.

One capability is optional: an engine that can push job events (Redis, over pub/sub) also
implements :class:`EventSource`. The core checks for it with ``isinstance`` and, where it is
missing (SQLite, SQS), ``Job.result()`` polls :meth:`Engine.get` instead.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol, runtime_checkable

from conveyor.errors import EngineUnavailable
from conveyor.records import JobEvent, JobRecord, Lease, NewJob, QueueStats, Settlement, State


@runtime_checkable
class Engine(Protocol):
    """What the core needs from a storage engine."""

    #: Largest payload, in bytes, the engine can store (``None``: no engine limit).
    max_payload_bytes: int | None

    async def connect(self) -> None:
        """Open connections and create storage; safe to call more than once."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[bool]:
        """Store ``jobs`` in one round trip; for each, ``True`` if stored, ``False`` if a job
        with the same ``(queue, id)`` already existed (it is left unchanged)."""
        ...

    async def reserve(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        """Lease up to ``limit`` due jobs from ``queues`` (not paused ones), highest priority
        first, then oldest due. Each returned record is active, has a new ``lease_token`` and
        its ``attempts`` counted. Expired leases are due again."""
        ...

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job may be due in ``queues``, or after ``timeout`` seconds.

        Engines block on a wake-up where they can; a spurious return is harmless."""
        ...

    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[bool]:
        """Push each lease's expiry to now + ``lease_seconds``; ``False`` where it was lost."""
        ...

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply settlements (each atomically); ``False`` where the lease was stale."""
        ...

    async def report(
        self, lease: Lease, progress: float | None = None, log: str | None = None
    ) -> bool:
        """Record a running job's progress and/or append a log line; ``False`` if lease lost."""
        ...

    async def get(self, queue: str, job_id: str) -> JobRecord | None:
        """The job's record, or ``None``."""
        ...

    async def list_jobs(
        self, queue: str, state: State, limit: int = 100, offset: int = 0
    ) -> list[JobRecord]:
        """Jobs of ``queue`` in ``state``; dead and completed newest first, others by due time."""
        ...

    async def stats(self) -> list[QueueStats]:
        """Counts by state for every known queue, its paused flag and oldest dead job's time."""
        ...

    async def redrive(self, queue: str, job_ids: Sequence[str]) -> int:
        """Move dead jobs back to queued, due now, attempts reset, failure log kept."""
        ...

    async def delete(self, queue: str, job_ids: Sequence[str]) -> int:
        """Delete jobs that are not active; returns how many were deleted."""
        ...

    async def trim(self, queue: str, task: str, keep: int | None, older_than: float | None) -> int:
        """Delete completed jobs of ``task`` beyond the newest ``keep`` or finished before
        ``older_than``; returns how many were deleted."""
        ...

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume a queue: a paused queue keeps its jobs but hands none out."""
        ...


@runtime_checkable
class EventSource(Protocol):
    """Optional engine capability: job events pushed as they happen, without polling."""

    def subscribe(
        self, queues: Sequence[str], job_id: str | None = None
    ) -> AsyncGenerator[JobEvent, None]:
        """Events of ``queues`` (only those of job ``job_id`` if given), in the order each
        job's transitions happened; no order is promised between jobs of different queues.

        Each queue's stream starts with a ``subscribed`` event, yielded once the engine is
        listening: a transition after it is pushed, one before it is visible in the job's
        record, so read the record then. The engine resubscribes by itself after a lost
        connection and yields ``subscribed`` again; events in between may be missing, so
        read again. The generator runs until closed (``contextlib.aclosing``), which ends
        the subscription. It raises :class:`EventsUnavailable` if the server refuses to
        deliver events at all.
        """
        ...


class EventsUnavailable(EngineUnavailable):
    """The engine's server refuses to deliver job events (say, an ACL without the event
    channels); ``Job.result()`` falls back to polling."""
