"""The public ``Job`` handle: a view of one stored job, and the running task's reporter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conveyor.engines.base import Engine, EventSource, EventsUnavailable
from conveyor.errors import EngineUnavailable, JobFailed, JobNotFound
from conveyor.records import Attempt, EventKind, JobEvent, JobRecord, LogLine, Outcome, State

if TYPE_CHECKING:
    from conveyor.app import App

T = TypeVar("T")

#: Sends progress and/or a log line for a running job; set by the worker.
Reporter = Callable[[float | None, str | None], Awaitable[None]]
#: The same, for a job running in a child process with no event loop.
SyncReporter = Callable[[float | None, str | None], None]

#: ``Job.result()`` on an engine without an event stream polls, backing off between reads
#: from the first delay to the second.
RESULT_POLL_START = 0.005
RESULT_POLL_MAX = 0.25
#: With an event stream, ``Job.result()`` still re-reads the job this often, in case an event
#: was lost without a reconnect to tell (say, the workers' ACL user may not publish).
RESULT_RECHECK = 10.0


class Job(Generic[T]):
    """One job. Producers get it from ``enqueue``; tasks receive it as their argument.

    Stored fields are read from :attr:`record` and the properties below; refresh them with
    :meth:`refresh`. Inside a task, :meth:`progress` and :meth:`log` report to the engine.
    """

    def __init__(
        self,
        app: App,
        queue: str,
        job_id: str,
        *,
        task: str,
        record: JobRecord | None = None,
        payload: Any = None,
        created: bool = True,
        reporter: Reporter | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        sync_reporter: SyncReporter | None = None,
    ) -> None:
        self.app = app
        self.queue = queue
        self.id = job_id
        self.task = task
        self.record = record
        #: ``False`` when enqueue found an existing job with this id (nothing new was stored).
        self.created = created
        self._payload = payload
        self._reporter = reporter
        self._loop = loop
        self._sync_reporter = sync_reporter

    def __repr__(self) -> str:
        state = self.record.state.value if self.record else "?"
        return f"<Job {self.queue}/{self.id} task={self.task} state={state}>"

    # -- stored fields ----------------------------------------------------------------------

    @property
    def payload(self) -> T:
        """The validated payload."""
        if self._payload is None and self.record is not None:
            self._payload = self.app.get_task(self.task).codec.decode_payload(self.record.payload)
        return self._payload  # type: ignore[no-any-return]

    def _rec(self) -> JobRecord:
        if self.record is None:
            raise JobNotFound(f"job {self.id} has not been loaded; call refresh() first")
        return self.record

    @property
    def state(self) -> State:
        """The state when last read."""
        return self._rec().state

    @property
    def attempts(self) -> int:
        """Attempts started so far (1 while the first try runs)."""
        return self._rec().attempts

    @property
    def created_at(self) -> float:
        """When the job was enqueued (epoch seconds)."""
        return self._rec().created_at

    @property
    def run_at(self) -> float:
        """When the job is (or was) due to run."""
        return self._rec().run_at

    @property
    def started_at(self) -> float | None:
        """When the latest attempt started."""
        return self._rec().started_at

    @property
    def finished_at(self) -> float | None:
        """When the job completed or was dead-lettered."""
        return self._rec().finished_at

    @property
    def result_bytes(self) -> bytes | None:
        """The stored result as JSON bytes (use :meth:`result` for the decoded value)."""
        return self._rec().result

    @property
    def percent(self) -> float:
        """Progress, 0-100, as last reported with :meth:`progress`."""
        return self._rec().progress

    @property
    def logs(self) -> list[LogLine]:
        """Lines written with :meth:`log`."""
        return self._rec().logs

    @property
    def failures(self) -> list[Attempt]:
        """Every failed attempt of the current round, oldest first, including attempts whose
        worker died (shown as ``lost``: their lease expired without a settlement), followed by
        earlier rounds' attempts if the job was redriven."""
        return failure_log(self._rec())

    # -- producers --------------------------------------------------------------------------

    async def refresh(self) -> Job[T]:
        """Re-read the job from the engine."""
        engine = await self.app.engine()
        record = await engine.get(self.queue, self.id)
        if record is None:
            raise JobNotFound(f"job {self.id} not found in queue {self.queue!r}")
        self._loaded(record)
        return self

    def refresh_sync(self) -> Job[T]:
        """:meth:`refresh` for synchronous code."""
        return self.app.run_sync(self.refresh())

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Raises :class:`conveyor.JobFailed` if it ended in the dead-letter queue,
        :class:`conveyor.JobNotFound` if it does not exist (or completed without keeping its
        result) and ``TimeoutError`` if ``timeout`` seconds pass first.

        On an engine with an event stream (Redis) this waits for the job's own event and
        reads the job twice: once when listening starts, once when it finishes (and again
        after a reconnect, and every ``RESULT_RECHECK`` seconds as a safety net). Elsewhere,
        or if the server refuses to deliver events, it polls, backing off to
        ``RESULT_POLL_MAX`` seconds between reads.
        """
        engine = await self.app.engine()
        async with asyncio.timeout(timeout):
            record: JobRecord | None = None
            if isinstance(engine, EventSource):
                with contextlib.suppress(EventsUnavailable):  # logged by the engine
                    record = await self._finished_by_events(engine, events=engine)
            if record is None:
                record = await self._finished_by_polling(engine)
        if record.state is State.DEAD:
            last = record.failures[-1] if record.failures else None
            reason = f"{last.error_type}: {last.message}" if last else "unknown reason"
            raise JobFailed(
                f"job {self.id} in queue {self.queue!r} is dead after "
                f"{record.attempts} attempt(s): {reason}"
            )
        return self.app.get_task(self.task).codec.decode_result(record.result)

    async def _finished_by_events(self, engine: Engine, *, events: EventSource) -> JobRecord:
        """Subscribe first, then read: a finish before the read shows in the record, one
        after it arrives as an event. ``subscribed`` (start, or after a reconnect), this
        job's finishing events and the rare safety re-check are the only reasons to read."""
        stream = events.subscribe([self.queue], self.id)
        # Kept across re-checks: cancelling a pending anext() would end the generator.
        upcoming: asyncio.Future[JobEvent] | None = None
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait({upcoming}, timeout=RESULT_RECHECK)
                event = None
                if done:
                    try:
                        event = upcoming.result()
                    except StopAsyncIteration:
                        raise EngineUnavailable(
                            f"the engine's event stream ended while job {self.id} was awaited"
                        ) from None
                    upcoming = None
                    if event.kind is not EventKind.SUBSCRIBED and not event.finished:
                        continue
                record = await engine.get(self.queue, self.id)
                if record is None:
                    if event is not None and event.kind is EventKind.COMPLETED:
                        raise JobNotFound(
                            f"job {self.id} in queue {self.queue!r} completed, but its result "
                            "was not kept (keep_completed=Keep(count=0), or trimmed since)"
                        )
                    raise JobNotFound(f"job {self.id} not found in queue {self.queue!r}")
                self._loaded(record)
                if record.state in (State.COMPLETED, State.DEAD):
                    return record
        finally:
            if upcoming is not None:
                upcoming.cancel()
                await asyncio.wait({upcoming})
                if not upcoming.cancelled():
                    upcoming.exception()  # retrieved, so it is not logged as unhandled
            await stream.aclose()

    async def _finished_by_polling(self, engine: Engine) -> JobRecord:
        delay = RESULT_POLL_START
        while True:
            record = await engine.get(self.queue, self.id)
            if record is None:
                raise JobNotFound(f"job {self.id} not found in queue {self.queue!r}")
            self._loaded(record)
            if record.state in (State.COMPLETED, State.DEAD):
                return record
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESULT_POLL_MAX)

    def _loaded(self, record: JobRecord) -> None:
        self.record = record
        self.task = record.task

    def result_sync(self, timeout: float | None = None) -> Any:
        """:meth:`result` for synchronous code."""
        return self.app.run_sync(self.result(timeout))

    # -- inside a task ----------------------------------------------------------------------

    async def progress(self, percent: float) -> None:
        """Report progress (0-100) of the running job."""
        if not 0 <= percent <= 100:
            raise ValueError(f"progress is a percentage from 0 to 100, got {percent}")
        await self._report(percent, None)
        if self.record is not None:
            self.record.progress = percent

    async def log(self, message: str) -> None:
        """Append a line to the running job's log."""
        await self._report(None, str(message))

    def progress_sync(self, percent: float) -> None:
        """:meth:`progress` for synchronous tasks (thread or process executor)."""
        if self._sync_reporter is not None:
            self._sync_reporter(percent, None)
        else:
            self._from_thread(self.progress(percent))

    def log_sync(self, message: str) -> None:
        """:meth:`log` for synchronous tasks (thread or process executor)."""
        if self._sync_reporter is not None:
            self._sync_reporter(None, str(message))
        else:
            self._from_thread(self.log(message))

    async def _report(self, percent: float | None, message: str | None) -> None:
        if self._reporter is None:
            raise RuntimeError("progress() and log() work only inside a running task")
        await self._reporter(percent, message)

    def _from_thread(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("progress_sync() and log_sync() work only inside a running task")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result()


def failure_log(record: JobRecord) -> list[Attempt]:
    """The job's failed attempts, with ``lost`` records for attempts that left no record.

    An attempt leaves no record when its worker died: its lease expired and the job was
    reserved again. Those gaps are derived here rather than stored, so no engine needs a
    special path for them.
    """
    rounds = record.redrive_round
    earlier = [a for a in record.failures if a.round < rounds]
    current = {a.number: a for a in record.failures if a.round == rounds}
    # The newest attempt has no record when it is running now or succeeded.
    unrecorded_ok = record.attempts if record.state in (State.ACTIVE, State.COMPLETED) else None
    log = [
        current[n] if n in current else lost_attempt(n, rounds)
        for n in range(1, max(record.attempts, max(current, default=0)) + 1)
        if n in current or n != unrecorded_ok
    ]
    return earlier + log


def lost_attempt(number: int, round_: int = 0) -> Attempt:
    """The record shown for an attempt whose worker died before settling it."""
    return Attempt(
        number=number,
        outcome=Outcome.LOST,
        error_type="WorkerLost",
        message="the worker died or stalled; its lease expired and the job was delivered again",
        round=round_,
    )
