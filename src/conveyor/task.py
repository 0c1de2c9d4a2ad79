"""``@app.task``: a function plus its delivery options, and the producer API to enqueue it."""

from __future__ import annotations

import asyncio
import inspect
import os
import typing
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    get_args,
    get_origin,
    runtime_checkable,
)

from conveyor.backoff import Backoff
from conveyor.codec import Codec
from conveyor.engines import open_engine
from conveyor.errors import ConfigurationError
from conveyor.job import Job
from conveyor.records import NewJob

if TYPE_CHECKING:
    from conveyor.app import App

R = TypeVar("R")
Executor = Literal["async", "thread", "process"]
Hook = Callable[..., Any]

DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 300.0
DEFAULT_QUEUE = "default"
#: Most jobs that concurrent ``enqueue`` calls share in one engine round trip.
MAX_ENQUEUE_BATCH = 1000
#: 1 s, 2 s, 4 s ... capped at an hour, +-10 % jitter.
DEFAULT_BACKOFF = Backoff.exponential(1.0, factor=2.0, max=3600.0, jitter=0.1)


@dataclass(frozen=True)
class Keep:
    """Retention of completed jobs (like BullMQ's ``removeOnComplete``).

    Keep at most ``count`` completed jobs of the task and none older than ``age`` seconds;
    either may be ``None`` (no limit). ``Keep(count=0)`` deletes jobs when they complete.
    """

    count: int | None = 10_000
    age: float | None = 24 * 3600.0

    @property
    def keeps_any(self) -> bool:
        """``False`` when completed jobs are deleted at once."""
        return self.count != 0 and self.age != 0


@dataclass(frozen=True)
class TaskOptions:
    """Delivery options of a task; any of them can be overridden per enqueue call."""

    queue: str = DEFAULT_QUEUE
    retries: int = DEFAULT_RETRIES
    backoff: Backoff = field(default_factory=lambda: DEFAULT_BACKOFF)
    timeout: float = DEFAULT_TIMEOUT
    priority: int = 0
    keep_completed: Keep = Keep()
    executor: Executor = "async"
    max_payload_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {self.retries}")
        if self.timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.executor not in ("async", "thread", "process"):
            raise ConfigurationError(
                f"executor must be 'async', 'thread' or 'process', got {self.executor!r}"
            )

    @property
    def max_attempts(self) -> int:
        """Tries in all: the first one plus the retries."""
        return self.retries + 1


@dataclass(frozen=True)
class Enqueue:
    """One job for :meth:`Task.enqueue_many`: a payload plus optional per-job settings."""

    payload: Any = None
    job_id: str | None = None
    delay: float | None = None
    priority: int | None = None


class Task(Generic[R]):
    """A registered task. Call :meth:`enqueue` (or :meth:`enqueue_sync`) to run it in a worker.

    Calling the task object directly runs the function in-process, which is handy in tests.
    """

    def __init__(self, app: App, fn: Callable[..., Any], name: str, options: TaskOptions):
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        if options.executor == "async" and not self.is_async:
            self.options = options = replace(options, executor="thread")
        if options.executor != "async" and self.is_async:
            raise ConfigurationError(
                f"task {name!r} is async; executor={options.executor!r} is for sync functions"
            )
        self.takes_job, payload_type = _payload_type(fn)
        self.takes_payload = payload_type is not _NO_PAYLOAD
        result_type = _hints(fn).get("return", Any)
        self.codec = Codec(name, Any if not self.takes_payload else payload_type, result_type)
        self.completed_hooks: list[Hook] = []
        self.failed_hooks: list[Hook] = []
        self.dead_letter_hooks: list[Hook] = []
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _EnqueueBatcher] = (
            weakref.WeakKeyDictionary()
        )
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = fn.__module__

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function directly, in this process, with no queue involved."""
        return self.fn(*args, **kwargs)

    # -- hooks ------------------------------------------------------------------------------

    def on_completed(self, fn: Hook) -> Hook:
        """Register ``fn(job, result)``, called after the job completed."""
        self.completed_hooks.append(fn)
        return fn

    def on_failed(self, fn: Hook) -> Hook:
        """Register ``fn(job, attempt, will_retry)``, called after every failed attempt."""
        self.failed_hooks.append(fn)
        return fn

    def on_dead_letter(self, fn: Hook) -> Hook:
        """Register ``fn(job, attempt)``, called once when the job is dead-lettered after its
        last attempt (``job.failures`` holds every attempt)."""
        self.dead_letter_hooks.append(fn)
        return fn

    # -- producers --------------------------------------------------------------------------

    async def enqueue(
        self,
        payload: Any = None,
        *,
        job_id: str | None = None,
        delay: float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
    ) -> Job[Any]:
        """Validate ``payload`` and store a job; returns its handle.

        ``job_id`` makes the call idempotent: if a job with that id exists in the queue, it is
        returned (``job.created`` is ``False``) and nothing new is stored. ``delay`` (seconds)
        schedules it for later; the other arguments override the task's options for this job.
        """
        new = self.build(payload, job_id, delay, priority, queue, retries, timeout, backoff)
        for mw in self.app.middleware:
            mw.on_enqueue([new])
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _EnqueueBatcher(self.app)
        created = await batcher.add(new, loop)
        return self._handle(new, created, payload)

    def enqueue_sync(
        self,
        payload: Any = None,
        *,
        job_id: str | None = None,
        delay: float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
    ) -> Job[Any]:
        """:meth:`enqueue` for synchronous code (Django views, Flask handlers, scripts).

        Engines that can store a job from the calling thread (SQLite) do so directly; the
        others run :meth:`enqueue` on the app's private event loop thread.
        """
        blocking = _blocking_engine(self.app)
        if blocking is not None:
            new = self.build(payload, job_id, delay, priority, queue, retries, timeout, backoff)
            for mw in self.app.middleware:
                mw.on_enqueue([new])
            (created,) = blocking.enqueue_blocking([new])
            return self._handle(new, created, payload)
        return self.app.run_sync(
            self.enqueue(
                payload,
                job_id=job_id,
                delay=delay,
                priority=priority,
                queue=queue,
                retries=retries,
                timeout=timeout,
                backoff=backoff,
            )
        )

    async def enqueue_many(self, items: Iterable[Any]) -> list[Job[Any]]:
        """Enqueue many jobs in one round trip. Items are payloads or :class:`Enqueue` values.

        Every payload is validated first; if one is bad, nothing is stored.
        """
        new, payloads = self._build_many(items)
        if not new:
            return []
        for mw in self.app.middleware:
            mw.on_enqueue(new)
        engine = await self.app.engine()
        created = await engine.enqueue(new)
        return [self._handle(n, c, p) for n, c, p in zip(new, created, payloads, strict=True)]

    def enqueue_many_sync(self, items: Iterable[Any]) -> list[Job[Any]]:
        """:meth:`enqueue_many` for synchronous code (stored from the calling thread where
        the engine can, as :meth:`enqueue_sync` does)."""
        blocking = _blocking_engine(self.app)
        if blocking is None:
            return self.app.run_sync(self.enqueue_many(list(items)))
        new, payloads = self._build_many(items)
        if not new:
            return []
        for mw in self.app.middleware:
            mw.on_enqueue(new)
        created = blocking.enqueue_blocking(new)
        return [self._handle(n, c, p) for n, c, p in zip(new, created, payloads, strict=True)]

    def _build_many(self, items: Iterable[Any]) -> tuple[list[NewJob], list[Any]]:
        """Validate and encode every item (a payload or an :class:`Enqueue`); raises on the
        first bad one, before anything is stored."""
        new: list[NewJob] = []
        payloads: list[Any] = []
        for item in items:
            if isinstance(item, Enqueue):
                new.append(self.build(item.payload, item.job_id, item.delay, item.priority))
                payloads.append(item.payload)
            else:
                new.append(self.build(item))
                payloads.append(item)
        return new, payloads

    def build(
        self,
        payload: Any,
        job_id: str | None = None,
        delay: float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
    ) -> NewJob:
        """Validate and encode one job without storing it (raises on a bad payload)."""
        if not self.takes_payload and payload is not None:
            raise ConfigurationError(f"task {self.name!r} takes no payload, got {payload!r}")
        if delay is not None and delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay}")
        if job_id is not None and not (0 < len(job_id) <= 256):
            raise ValueError("job_id must be a non-empty string of at most 256 characters")
        limit = self.payload_limit()
        data = self.codec.encode_payload(payload, limit) if self.takes_payload else b"null"
        overrides: dict[str, Any] = {}
        if retries is not None:
            TaskOptions(retries=retries)  # validates
            overrides["retries"] = retries
        if timeout is not None:
            TaskOptions(timeout=timeout)
            overrides["timeout"] = timeout
        if backoff is not None:
            overrides["backoff"] = backoff.to_json()
        now = self.app.clock.now()
        new = NewJob(
            queue=queue or self.options.queue,
            id=job_id or os.urandom(12).hex(),
            task=self.name,
            payload=data,
            priority=self.options.priority if priority is None else priority,
            run_at=now + (delay or 0.0),
            created_at=now,
            options=overrides,
        )
        if self.app.signing is not None:
            self.app.signing.sign(new)
        return new

    def payload_limit(self) -> int | None:
        """The payload size limit in force: the task's, else the app's, capped by the engine."""
        limit = self.options.max_payload_bytes or self.app.max_payload_bytes
        engine_limit = self.app.engine_payload_limit()
        return limit if engine_limit is None else min(limit, engine_limit)

    def _handle(self, new: NewJob, created: bool, payload: Any) -> Job[Any]:
        return Job(self.app, new.queue, new.id, task=self.name, payload=payload, created=created)

    # -- options of one job -----------------------------------------------------------------

    def effective(self, overrides: dict[str, Any]) -> TaskOptions:
        """The task's options with a stored job's per-call overrides applied."""
        if not overrides.keys() & {"retries", "timeout", "backoff"}:
            return self.options
        backoff = overrides.get("backoff")
        return replace(
            self.options,
            retries=overrides.get("retries", self.options.retries),
            timeout=overrides.get("timeout", self.options.timeout),
            backoff=Backoff.from_json(backoff) if backoff else self.options.backoff,
        )


@runtime_checkable
class BlockingEnqueue(Protocol):
    """An engine that can store jobs from a synchronous caller's own thread, with no event
    loop and no thread hop (what :meth:`Task.enqueue_sync` uses when it can)."""

    blocking_enqueue: bool

    def enqueue_blocking(self, jobs: Sequence[NewJob]) -> list[bool]:
        """:meth:`conveyor.engines.base.Engine.enqueue`, blocking the calling thread."""
        ...


def _blocking_engine(app: App) -> BlockingEnqueue | None:
    """The app's blocking enqueuer; refuses (like ``run_sync``) inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("a *_sync method was called inside an event loop; use await")
    # Kept on the app itself (its engine's blocking twin, an engine of its own, or None).
    if hasattr(app, "_blocking_enqueuer"):
        cached: BlockingEnqueue | None = app._blocking_enqueuer
        return cached
    engine = open_engine(app.url, app.clock)
    found = engine if isinstance(engine, BlockingEnqueue) and engine.blocking_enqueue else None
    app._blocking_enqueuer = found
    if found is not None:
        weakref.finalize(app, getattr(found, "close_blocking", lambda: None))
    return found


class _EnqueueBatcher:
    """Coalesces concurrent :meth:`Task.enqueue` calls on one event loop into engine batches.

    A lone caller's job is sent at once (on the next loop iteration); calls made while a batch
    is in flight go together in the next one. So many coroutines enqueueing at the same time
    share round trips, as :meth:`Task.enqueue_many` does, without the caller asking for it.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self._pending: list[tuple[NewJob, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def add(self, job: NewJob, loop: asyncio.AbstractEventLoop) -> bool:
        """Queue ``job`` for the next batch; returns whether it was stored (not a duplicate)."""
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((job, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        batch: list[tuple[NewJob, asyncio.Future[bool]]] = []
        try:
            while self._pending:
                batch = self._pending[:MAX_ENQUEUE_BATCH]
                del self._pending[:MAX_ENQUEUE_BATCH]
                try:
                    engine = await self.app.engine()
                    created = await engine.enqueue([job for job, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), stored in zip(batch, created, strict=True):
                    if not future.done():
                        future.set_result(stored)
        except BaseException:  # cancelled with the loop: no caller may wait forever
            for _, future in batch + self._pending:
                future.cancel()
            self._pending.clear()
            raise


class _NoPayload:
    pass


_NO_PAYLOAD = _NoPayload()


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception as exc:  # unresolved forward references
        raise ConfigurationError(
            f"cannot resolve the type annotations of {fn.__qualname__}: {exc}. "
            "Define payload types at module level before the task."
        ) from exc


def _payload_type(fn: Callable[..., Any]) -> tuple[bool, Any]:
    """(takes_job, payload type) from the first parameter's annotation.

    ``def f(job: Job[Model])`` receives the Job; ``def f(data: Model)`` the payload itself;
    ``def f()`` takes none. An unannotated parameter accepts any JSON value.
    """
    params = list(inspect.signature(fn).parameters.values())
    if len(params) > 1 and any(p.default is inspect.Parameter.empty for p in params[1:]):
        raise ConfigurationError(
            f"task {fn.__qualname__} must take one argument (Job[Payload] or the payload); "
            "put several values in one payload model"
        )
    if not params:
        return False, _NO_PAYLOAD
    annotation = _hints(fn).get(params[0].name, Any)
    if annotation is Job or get_origin(annotation) is Job:
        args = get_args(annotation)
        return True, args[0] if args else Any
    return False, annotation
