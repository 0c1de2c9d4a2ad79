"""``Worker``: leases jobs, runs them within their timeout, and settles each exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.errors import JobTimeout, PayloadInvalid, Unrecoverable
from conveyor.job import Job
from conveyor.middleware import chain
from conveyor.records import (
    UNREADABLE_OPTIONS,
    Attempt,
    Complete,
    DeadLetter,
    JobRecord,
    Outcome,
    Release,
    Retry,
    Settlement,
    State,
)
from conveyor.signing import SignatureInvalid
from conveyor.worker.errors import attempt_from
from conveyor.worker.executors import Executors
from conveyor.worker.process_pool import ChildFailed
from conveyor.worker.settler import Settler

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.engines.base import Engine
    from conveyor.task import Task, TaskOptions

log = logging.getLogger("conveyor.worker")

DEFAULT_CONCURRENCY = 10
DEFAULT_GRACE_PERIOD = 30.0
DEFAULT_IDLE_WAIT = 1.0
DEFAULT_MAINTENANCE_INTERVAL = 5.0
#: When fewer than half the slots are free, wait this long for more to free up, so that
#: reserves come in batches instead of one job per round trip.
BATCH_GATHER_SECONDS = 0.002
ENGINE_ERROR_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass
class WorkerCounts:
    """What a worker did since it started."""

    completed: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0
    lost_leases: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)


@dataclass
class _Running:
    record: JobRecord
    task: asyncio.Task[None]
    lease_lost: bool = False
    #: A settlement was sent: the token may be gone because it was applied, not stolen.
    settling: bool = False


class Worker:
    """Runs jobs of ``app`` from ``queues`` (default: every queue the app's tasks use).

    ``concurrency`` jobs run at once on one event loop: async tasks as coroutines, sync tasks
    in threads, ``executor="process"`` tasks in child processes. ``burst=True`` returns when
    nothing is due and nothing runs (used by tests and ``conveyor.testing``).
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_seconds: float | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        burst: bool = False,
        idle_wait: float = DEFAULT_IDLE_WAIT,
        maintenance_interval: float = DEFAULT_MAINTENANCE_INTERVAL,
        name: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.app = app
        self.queues = list(queues) if queues else app.queues
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds or app.lease_seconds
        self.grace_period = grace_period
        self.burst = burst
        self.idle_wait = idle_wait
        self.maintenance_interval = maintenance_interval
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"
        self.counts = WorkerCounts()
        self._running: dict[tuple[str, str], _Running] = {}
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._executors = Executors(concurrency)
        self._engine: Engine | None = None
        self._settler: Settler | None = None

    # -- life cycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop fetching; running jobs get ``grace_period`` seconds to finish."""
        self._stopping.set()

    async def run(self) -> WorkerCounts:
        """Work until :meth:`stop` (or, in burst mode, until idle); then drain and return."""
        if not self.queues:
            raise ValueError("the worker has no queues: register tasks or pass queues=[...]")
        self._engine = engine = await self.app.engine()
        self._settler = Settler(engine)
        background = [
            asyncio.create_task(self._heartbeat(), name="conveyor-heartbeat"),
            asyncio.create_task(self._maintenance(), name="conveyor-maintenance"),
        ]
        log.info(
            "worker %s started on %s (concurrency %d, lease %gs)",
            self.id,
            ", ".join(self.queues),
            self.concurrency,
            self.lease_seconds,
        )
        try:
            await self._fetch_loop(engine)
        finally:
            await self._drain()
            for bg in background:
                bg.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._executors.close()
            log.info("worker %s stopped: %s", self.id, self.counts)
        return self.counts

    async def run_until_signal(self) -> WorkerCounts:
        """:meth:`run` with SIGTERM/SIGINT handlers: the first drains, a second hurries."""
        loop = asyncio.get_running_loop()
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits == 1:
                log.info("worker %s: stopping, waiting up to %gs", self.id, self.grace_period)
                self.stop()
            else:
                log.warning("worker %s: second signal, releasing running jobs now", self.id)
                self.grace_period = 0
                # The drain may already be waiting with the old grace period: cut it short.
                for entry in list(self._running.values()):
                    if not entry.settling:  # a finished job is only waiting for its answer
                        entry.task.cancel()  # each releases its job in its own handler

        # asyncio's remove_signal_handler resets to the default action, which would let a
        # late signal kill the exiting process (exit -15): put back what was there before.
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            loop.add_signal_handler(sig, on_signal)
        try:
            return await self.run()
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)
            # The process is about to exit: alerts suppressed by de-duplication are counted
            # only in memory, so send their summaries now rather than never.
            try:
                await self.app.alerts.flush(self.app.clock.now(), everything=True)
            except Exception:
                log.exception("sending the last alert summaries failed")

    async def _drain(self) -> None:
        running = [r.task for r in self._running.values()]
        if running:
            _, pending = await asyncio.wait(running, timeout=self.grace_period)
            for task in pending:
                task.cancel()  # each releases its job in its own handler
            if pending:
                await asyncio.wait(pending)
        if self._settler is not None:
            await self._settler.drain()

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_loop(self, engine: Engine) -> None:
        errors = 0
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                await self._until(self._slot_free.wait())
                continue
            if free < self.concurrency // 2 and self._running:
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_free.wait(), BATCH_GATHER_SECONDS)
                free = self.concurrency - len(self._running)
            try:
                records = await engine.reserve(self.queues, free, self.lease_seconds, self.id)
                errors = 0
            except Exception as exc:
                delay = ENGINE_ERROR_BACKOFF[min(errors, len(ENGINE_ERROR_BACKOFF) - 1)]
                errors += 1
                log.error("reserve failed (retrying in %gs): %s", delay, exc)
                await self._until(asyncio.sleep(delay))
                continue
            if records:
                for record in records:
                    self._start(record)
                continue
            if self.burst and not self._running:
                return
            await self._until(engine.wait(self.queues, self.idle_wait))

    async def _until(self, aw: Awaitable[Any]) -> None:
        """Await ``aw`` unless the worker is asked to stop first."""
        waiter = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for f in (waiter, stopper):
            if not f.done():
                f.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await f

    def _start(self, record: JobRecord) -> None:
        key = (record.queue, record.id)
        task = asyncio.create_task(self._process(record))
        entry = self._running[key] = _Running(record, task)

        def done(_: asyncio.Task[None]) -> None:
            # A retry can be reserved (same key) before the failed attempt's task has run its
            # hooks and finished; that task must not remove the retry's entry.
            if self._running.get(key) is entry:
                del self._running[key]
            self._slot_free.set()

        task.add_done_callback(done)

    # -- one job ----------------------------------------------------------------------------

    async def _process(self, record: JobRecord) -> None:
        started = self.app.clock.now()
        round_ = record.redrive_round
        try:
            task = self.app.tasks.get(record.task)
            if task is None:
                await self._fail_now(
                    record,
                    started,
                    Outcome.UNKNOWN_TASK,
                    "UnknownTask",
                    f"no task named {record.task!r} in this worker's app "
                    f"(known: {', '.join(sorted(self.app.tasks)) or 'none'})",
                )
                return
            if self.app.signing is not None:
                try:
                    self.app.signing.verify(record)
                except SignatureInvalid as exc:
                    await self._fail_now(
                        record, started, Outcome.INVALID, "SignatureInvalid", str(exc), task=task
                    )
                    return
            try:
                options = _options_of(task, record)
            except Exception as exc:
                # Deterministic: running it again would fail the same way, for ever.
                await self._fail_now(
                    record,
                    started,
                    Outcome.INVALID,
                    "OptionsInvalid",
                    f"the job's stored options cannot be used: {exc}",
                    task=task,
                )
                return
            if record.attempts > options.max_attempts:
                await self._fail_now(
                    record,
                    started,
                    Outcome.LOST,
                    "WorkerLost",
                    f"not run: the previous {record.attempts - 1} attempt(s) used every try "
                    f"allowed ({options.max_attempts}) and the last one's worker died or stalled "
                    "(lease expired)",
                    task=task,
                )
                return
            try:
                payload = task.codec.decode_payload(record.payload)
            except PayloadInvalid as exc:
                await self._fail_now(
                    record, started, Outcome.INVALID, "PayloadInvalid", str(exc), task=task
                )
                return
            job = self._job(record, task, payload)
            try:
                result = await self._execute(task, options, job, payload)
            except asyncio.CancelledError:
                await self._cancelled(record)
                raise
            except Exception as exc:
                await self._failed(record, task, options, job, exc, started, round_)
                return
            await self._completed(record, task, options, job, result)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug or an engine outage while settling: the lease will expire and the job
            # will be delivered again; never let one job take the worker down.
            log.exception("job %s/%s: unexpected error in the worker", record.queue, record.id)

    def _job(self, record: JobRecord, task: Task[Any], payload: Any) -> Job[Any]:
        engine = self._engine
        assert engine is not None
        lease = record.lease

        async def report(progress: float | None, message: str | None) -> None:
            await engine.report(lease, progress, message)

        return Job(
            self.app,
            record.queue,
            record.id,
            task=task.name,
            record=record,
            payload=payload,
            reporter=report,
            loop=asyncio.get_running_loop(),
        )

    async def _execute(
        self, task: Task[Any], options: TaskOptions, job: Job[Any], payload: Any
    ) -> bytes:
        run = functools.partial(self._executors.run, task, options, job, payload)
        if self.app.middleware:
            return await chain(self.app.middleware, job, run)()
        return await run()

    async def _completed(
        self, record: JobRecord, task: Task[Any], options: TaskOptions, job: Job[Any], result: bytes
    ) -> None:
        keep = options.keep_completed.keeps_any
        if not await self._settle(Complete(record.lease, result, keep), record):
            return
        self.counts.completed += 1
        record.state, record.result, record.progress = State.COMPLETED, result, 100.0
        if log.isEnabledFor(logging.INFO):  # the hot path: skip building the record's extras
            log.info(
                "completed %s in %.1f ms",
                task.name,
                (self.app.clock.now() - (record.started_at or 0.0)) * 1000,
                extra=_extra(record),
            )
        if task.completed_hooks or self.app.completed_hooks:
            value = task.codec.decode_result(result)
            await self._hooks([*task.completed_hooks, *self.app.completed_hooks], job, value)

    async def _failed(
        self,
        record: JobRecord,
        task: Task[Any],
        options: TaskOptions,
        job: Job[Any],
        exc: Exception,
        started: float,
        round_: int,
    ) -> None:
        now = self.app.clock.now()
        outcome = Outcome.ERROR
        if isinstance(exc, JobTimeout):
            outcome = Outcome.TIMEOUT
        elif isinstance(exc, Unrecoverable):
            outcome = Outcome.UNRECOVERABLE
        attempt = attempt_from(
            exc,
            number=record.attempts,
            outcome=outcome,
            started_at=started,
            ended_at=now,
            worker=self.id,
            round_=round_,
        )
        if isinstance(exc, ChildFailed):
            attempt.error_type, attempt.traceback = exc.error_type, exc.child_traceback
        will_retry = outcome is not Outcome.UNRECOVERABLE and record.attempts <= options.retries
        settlement: Settlement
        if will_retry:
            attempt.retry_at = now + options.backoff.delay(record.attempts)
            settlement = Retry(record.lease, attempt.retry_at, attempt)
        else:
            settlement = DeadLetter(record.lease, attempt)
        await self._after_failure(record, task, job, attempt, settlement, will_retry)

    async def _fail_now(
        self,
        record: JobRecord,
        started: float,
        outcome: Outcome,
        error_type: str,
        message: str,
        task: Task[Any] | None = None,
    ) -> None:
        """Dead-letter without running: unknown task, invalid payload, crash loop."""
        attempt = Attempt(
            number=record.attempts,
            outcome=outcome,
            error_type=error_type,
            message=message,
            started_at=started,
            ended_at=self.app.clock.now(),
            worker=self.id,
            round=record.redrive_round,
        )
        job: Job[Any] = Job(self.app, record.queue, record.id, task=record.task, record=record)
        await self._after_failure(
            record, task, job, attempt, DeadLetter(record.lease, attempt), False
        )

    async def _after_failure(
        self,
        record: JobRecord,
        task: Task[Any] | None,
        job: Job[Any],
        attempt: Attempt,
        settlement: Settlement,
        will_retry: bool,
    ) -> None:
        if not await self._settle(settlement, record):
            return
        record.failures.append(attempt)
        self.counts.by_outcome[attempt.outcome.value] = (
            self.counts.by_outcome.get(attempt.outcome.value, 0) + 1
        )
        task_failed = task.failed_hooks if task else []
        await self._hooks([*task_failed, *self.app.failed_hooks], job, attempt, will_retry)
        if will_retry:
            self.counts.retried += 1
            delay = (attempt.retry_at or 0.0) - (attempt.ended_at or 0.0)
            log.warning(
                "attempt %d of %s failed, retrying in %.1fs: %s: %s",
                attempt.number,
                record.task,
                delay,
                attempt.error_type,
                attempt.message,
                extra=_extra(record),
            )
            return
        self.counts.dead += 1
        record.state, record.finished_at = State.DEAD, attempt.ended_at
        log.error(
            "dead-lettered %s after attempt %d: %s: %s",
            record.task,
            attempt.number,
            attempt.error_type,
            attempt.message,
            extra=_extra(record),
        )
        task_dead = task.dead_letter_hooks if task else []
        await self._hooks([*task_dead, *self.app.dead_letter_hooks], job, attempt)
        try:
            await self.app.alerts.dead_letter(
                record.queue, record.task, record.id, attempt, self.app.clock.now()
            )
        except Exception:
            log.exception("alerting failed for dead job %s", record.id, extra=_extra(record))

    async def _cancelled(self, record: JobRecord) -> None:
        running = self._running.get((record.queue, record.id))
        if running is not None and running.lease_lost:
            return  # someone else holds the job now; settling would be refused anyway
        if await self._settle(Release(record.lease), record):
            self.counts.released += 1
            log.info("released %s unfinished at shutdown", record.task, extra=_extra(record))

    async def _settle(self, settlement: Settlement, record: JobRecord) -> bool:
        assert self._settler is not None
        running = self._running.get((record.queue, record.id))
        if running is not None:
            running.settling = True
        ok = await self._settler.settle(settlement)
        if not ok:
            self.counts.lost_leases += 1
            log.warning(
                "settlement %s refused: the lease was lost (the job ran too long without a "
                "heartbeat and was delivered again)",
                type(settlement).__name__,
                extra=_extra(record),
            )
        return ok

    async def _hooks(self, hooks: list[Any], *args: Any) -> None:
        for hook in hooks:
            try:
                out = hook(*args)
                if inspect.isawaitable(out):
                    await out
            except Exception:
                log.exception(
                    "hook %s raised; the job is not affected", getattr(hook, "__name__", hook)
                )

    # -- background -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        engine = self._engine
        assert engine is not None
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            running = list(self._running.values())
            if not running:
                continue
            try:
                alive = await engine.extend([r.record.lease for r in running], self.lease_seconds)
            except Exception as exc:
                log.error("extending %d lease(s) failed: %s", len(running), exc)
                continue
            for entry, ok in zip(running, alive, strict=True):
                # A lease that ended because its own settlement was applied is not lost:
                # cancelling then would skip the job's hooks and alerts.
                if not ok and not entry.task.done() and not entry.settling:
                    entry.lease_lost = True
                    self.counts.lost_leases += 1
                    log.warning(
                        "lease lost; stopping the job so it never runs twice at once",
                        extra=_extra(entry.record),
                    )
                    entry.task.cancel()

    async def _maintenance(self) -> None:
        engine = self._engine
        assert engine is not None
        last_check = 0.0
        alerts = self.app.alerts
        while True:
            await asyncio.sleep(self.maintenance_interval)
            now = self.app.clock.now()
            try:
                for task in self.app.tasks.values():
                    keep = task.options.keep_completed
                    if task.options.queue in self.queues and (keep.count or keep.age):
                        older = None if keep.age is None else now - keep.age
                        await engine.trim(task.options.queue, task.name, keep.count, older)
                await alerts.flush(now)
                wants_check = alerts.dlq_max_depth is not None or alerts.dlq_max_age is not None
                if wants_check and time.monotonic() - last_check >= alerts.check_interval:
                    last_check = time.monotonic()
                    await alerts.check_dlq(await engine.stats(), now)
            except Exception:
                log.exception("worker maintenance failed; will try again")


def _options_of(task: Task[Any], record: JobRecord) -> TaskOptions:
    """The job's effective options; raises if its stored overrides are unusable."""
    if UNREADABLE_OPTIONS in record.options:
        raise ValueError(str(record.options[UNREADABLE_OPTIONS]))
    options = task.effective(record.options)
    if options is not task.options:  # the task's own were checked when it was registered
        options.backoff.bounds(1)  # a stored backoff must be able to compute a delay
    return options


def _extra(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.id,
        "task": record.task,
        "queue": record.queue,
        "attempt": record.attempts,
    }
