"""Dead-letter queue operations, the same on every engine: list, show, redrive, purge."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.errors import JobNotFound
from conveyor.job import Job
from conveyor.records import JobRecord, State

if TYPE_CHECKING:
    from conveyor.app import App

PAGE_SIZE = 500


@dataclass(frozen=True)
class DeadFilter:
    """Which dead jobs an operation applies to; unset fields match everything.

    ``error`` matches the error type of the attempt that dead-lettered the job (``ValueError``,
    ``WorkerLost``, ``PayloadInvalid``...); ``since``/``until`` bound the time it died.
    """

    task: str | None = None
    error: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, record: JobRecord) -> bool:
        """Whether ``record`` passes this filter."""
        if self.task is not None and record.task != self.task:
            return False
        if self.error is not None:
            last = record.failures[-1].error_type if record.failures else ""
            if last != self.error and last.rsplit(".", 1)[-1] != self.error:
                return False
        died = record.finished_at or 0.0
        if self.since is not None and died < self.since:
            return False
        return self.until is None or died <= self.until


class DeadLetters:
    """The DLQ of an app's engine. Get it as ``app.dlq``."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def list(
        self, queue: str, where: DeadFilter | None = None, *, limit: int | None = 100
    ) -> builtins.list[Job[Any]]:
        """Dead jobs of ``queue`` matching ``where``, newest first."""
        jobs: list[Job[Any]] = []
        async for record in self._matching(queue, where or DeadFilter()):
            jobs.append(Job(self.app, queue, record.id, task=record.task, record=record))
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    async def show(self, queue: str, job_id: str) -> Job[Any]:
        """One dead job with its whole failure log; raises :class:`JobNotFound`."""
        record = await (await self.app.engine()).get(queue, job_id)
        if record is None or record.state is not State.DEAD:
            raise JobNotFound(f"no dead job {job_id!r} in the DLQ of queue {queue!r}")
        return Job(self.app, queue, job_id, task=record.task, record=record)

    async def redrive(
        self,
        queue: str,
        job_ids: Sequence[str] | None = None,
        where: DeadFilter | None = None,
    ) -> int:
        """Queue dead jobs again (attempts reset, failure log kept); returns how many.

        Give ``job_ids``, or a filter, or neither to redrive the whole DLQ of ``queue``.
        """
        engine = await self.app.engine()
        ids = list(job_ids) if job_ids is not None else await self._ids(queue, where)
        return await engine.redrive(queue, ids) if ids else 0

    async def purge(
        self,
        queue: str,
        job_ids: Sequence[str] | None = None,
        where: DeadFilter | None = None,
    ) -> int:
        """Delete dead jobs for good; same selection rules as :meth:`redrive`."""
        engine = await self.app.engine()
        if job_ids is not None:
            dead = [r for r in [await engine.get(queue, i) for i in job_ids] if r]
            ids = [r.id for r in dead if r.state is State.DEAD]
        else:
            ids = await self._ids(queue, where)
        return await engine.delete(queue, ids) if ids else 0

    async def count(self, queue: str, where: DeadFilter | None = None) -> int:
        """How many dead jobs match."""
        return len(await self._ids(queue, where))

    async def _ids(self, queue: str, where: DeadFilter | None) -> builtins.list[str]:
        return [r.id async for r in self._matching(queue, where or DeadFilter())]

    async def _matching(self, queue: str, where: DeadFilter) -> AsyncIterator[JobRecord]:
        engine = await self.app.engine()
        offset = 0
        while True:
            page = await engine.list_jobs(queue, State.DEAD, limit=PAGE_SIZE, offset=offset)
            for record in page:
                if where.matches(record):
                    yield record
            if len(page) < PAGE_SIZE:
                return
            offset += PAGE_SIZE
