"""``App``: the registry of tasks and the handle on one engine. The only global state."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from conveyor.alerts import Alerts
from conveyor.backoff import Backoff
from conveyor.clock import Clock, SystemClock
from conveyor.codec import DEFAULT_MAX_PAYLOAD_BYTES
from conveyor.engines import open_engine, redact, resolve_url
from conveyor.engines.base import Engine, EventSource
from conveyor.errors import ConfigurationError, UnknownTask
from conveyor.job import Job
from conveyor.middleware import Middleware
from conveyor.records import JobEvent, QueueStats
from conveyor.signing import Signing
from conveyor.task import DEFAULT_QUEUE, Executor, Hook, Keep, Task, TaskOptions

if TYPE_CHECKING:
    from conveyor.dlq import DeadLetters

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_LEASE_SECONDS = 30.0


class App:
    """A Conveyor application: its tasks, its engine URL and its alerting.

    ``App()`` stores jobs in ``./conveyor.db`` (SQLite); ``App("redis://localhost:6379/0")``
    or ``App("sqs://?region=eu-west-1")`` pick another engine; ``CONVEYOR_URL`` overrides the
    default. One engine connection is opened per event loop, lazily.
    """

    #: The engine's blocking twin for ``enqueue_sync`` (or None); set on first use.
    _blocking_enqueuer: Any

    def __init__(
        self,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        alerts: Alerts | None = None,
        middleware: Sequence[Middleware] = (),
        signing: Signing | None = None,
    ) -> None:
        self.url = resolve_url(url)
        self.clock: Clock = clock or SystemClock()
        self.max_payload_bytes = max_payload_bytes
        self.lease_seconds = lease_seconds
        self.alerts = alerts or Alerts()
        self.middleware: list[Middleware] = list(middleware)
        #: HMAC signing of jobs (see conveyor.signing); ``None``: jobs are not signed.
        self.signing = signing
        self.tasks: dict[str, Task[Any]] = {}
        self.completed_hooks: list[Hook] = []
        self.failed_hooks: list[Hook] = []
        self.dead_letter_hooks: list[Hook] = []
        self._engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Engine] = (
            weakref.WeakKeyDictionary()
        )
        self._engine_lock = threading.Lock()
        self._portal: _Portal | None = None
        self._payload_limit: int | None = None
        open_engine(self.url, self.clock)  # fail fast on a bad URL

    def __repr__(self) -> str:
        return f"<conveyor.App {redact(self.url)} tasks={sorted(self.tasks)}>"

    # -- tasks ------------------------------------------------------------------------------

    @overload
    def task(self, fn: F) -> Task[Any]: ...

    @overload
    def task(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        retries: int = ...,
        backoff: Backoff | None = None,
        timeout: float = ...,
        priority: int = 0,
        keep_completed: Keep | None = None,
        executor: Executor | None = None,
        max_payload_bytes: int | None = None,
    ) -> Callable[[F], Task[Any]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        retries: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        priority: int = 0,
        keep_completed: Keep | None = None,
        executor: Executor | None = None,
        max_payload_bytes: int | None = None,
    ) -> Task[Any] | Callable[[F], Task[Any]]:
        """Register a function as a task. Use bare (``@app.task``) or with options.

        ``retries`` counts re-runs after the first try (``retries=3``: up to 4 tries, then the
        dead-letter queue). ``timeout`` (seconds) bounds every attempt. ``executor`` is
        ``"async"`` for coroutines, ``"thread"`` (default for sync functions) or
        ``"process"`` for CPU-bound sync functions whose timeout must kill them.
        """
        defaults = TaskOptions()
        options = TaskOptions(
            queue=queue,
            retries=defaults.retries if retries is None else retries,
            backoff=backoff or defaults.backoff,
            timeout=defaults.timeout if timeout is None else timeout,
            priority=priority,
            keep_completed=keep_completed or defaults.keep_completed,
            executor=executor or defaults.executor,
            max_payload_bytes=max_payload_bytes,
        )

        def register(f: Callable[..., Any]) -> Task[Any]:
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            if task_name in self.tasks:
                raise ConfigurationError(f"a task named {task_name!r} is already registered")
            task: Task[Any] = Task(self, f, task_name, options)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def get_task(self, name: str) -> Task[Any]:
        """The task registered as ``name``; raises :class:`UnknownTask`."""
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(
                f"no task named {name!r} in this app (known: {', '.join(sorted(self.tasks))})"
            ) from None

    @property
    def queues(self) -> list[str]:
        """The queues the registered tasks use."""
        return sorted({t.options.queue for t in self.tasks.values()})

    def add_middleware(self, mw: Middleware) -> None:
        """Add middleware that wraps every enqueue and attempt (see conveyor.middleware)."""
        self.middleware.append(mw)

    # -- app-wide hooks ---------------------------------------------------------------------

    def on_completed(self, fn: Hook) -> Hook:
        """Register ``fn(job, result)`` for every task."""
        self.completed_hooks.append(fn)
        return fn

    def on_failed(self, fn: Hook) -> Hook:
        """Register ``fn(job, attempt, will_retry)`` for every task."""
        self.failed_hooks.append(fn)
        return fn

    def on_dead_letter(self, fn: Hook) -> Hook:
        """Register ``fn(job, attempt)`` for every task, once per dead-lettered job."""
        self.dead_letter_hooks.append(fn)
        return fn

    # -- engine -----------------------------------------------------------------------------

    async def engine(self) -> Engine:
        """The connected engine for the running event loop (opened on first use)."""
        loop = asyncio.get_running_loop()
        engine = self._engines.get(loop)
        if engine is None:
            engine = open_engine(self.url, self.clock)
            await engine.connect()
            with self._engine_lock:
                existing = self._engines.get(loop)
                if existing is None:
                    self._engines[loop] = engine
                else:  # another coroutine won the race
                    await engine.close()
                    engine = existing
            self._payload_limit = engine.max_payload_bytes
        return engine

    def open_engines(self) -> list[Engine]:
        """The engines this app has connected, one per event loop (for metrics)."""
        with self._engine_lock:
            return list(self._engines.values())

    def engine_payload_limit(self) -> int | None:
        """The connected engine's own payload limit, if it has one."""
        return self._payload_limit

    async def close(self) -> None:
        """Close the engine of the running loop (and the sync portal's, if any)."""
        await self._close_loop_engine()
        self.close_sync()

    async def _close_loop_engine(self) -> None:
        engine = self._engines.pop(asyncio.get_running_loop(), None)
        if engine is not None:
            await engine.close()

    def close_sync(self) -> None:
        """Close the sync portal's engine; for programs that only used the ``*_sync`` API."""
        if self._portal is not None:
            portal, self._portal = self._portal, None
            portal.close(self)

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the app's private event loop thread and wait for its result.

        This is how the ``*_sync`` methods work from synchronous code; calling it from a
        running event loop's thread would deadlock, so that raises instead.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("a *_sync method was called inside an event loop; use await")
        with self._engine_lock:
            if self._portal is None:
                self._portal = _Portal()
        return self._portal.run(coro)

    # -- queries ----------------------------------------------------------------------------

    async def stats(self) -> list[QueueStats]:
        """Counts of every queue, with DLQ depth and oldest dead job's time."""
        return await (await self.engine()).stats()

    async def events(self, queues: Sequence[str] | None = None) -> AsyncIterator[JobEvent]:
        """Job events of ``queues`` (default: every queue of the app's tasks) as they happen::

            async for event in app.events(["images"]):
                print(event.kind, event.job_id, event.state)

        Each queue's stream starts with a ``subscribed`` event, and repeats it after a gap
        (a reconnect, or a consumer too slow to keep up): events may be missing before it,
        so re-read what you show. Needs an engine that pushes events (Redis); on others
        this raises :class:`conveyor.ConfigurationError` on the first iteration, since
        computing events by polling would mean re-reading every job again and again.
        """
        names = list(queues) if queues is not None else self.queues
        if not names:
            raise ValueError("events() needs queues: register tasks or pass queues=[...]")
        engine = await self.engine()
        if not isinstance(engine, EventSource):
            raise ConfigurationError(
                f"the engine at {redact(self.url)!r} has no event stream, so App.events() "
                "cannot follow jobs there; use a Redis URL, or poll app.stats() and "
                "app.get_job() instead (job.result() works everywhere: it polls)"
            )
        async with contextlib.aclosing(engine.subscribe(names)) as stream:
            async for event in stream:
                yield event

    async def get_job(self, queue: str, job_id: str) -> Job[Any]:
        """Load one job; raises :class:`conveyor.JobNotFound`."""
        return await Job(self, queue, job_id, task="").refresh()

    @property
    def dlq(self) -> DeadLetters:
        """Dead-letter queue operations: list, show, redrive, purge."""
        from conveyor.dlq import DeadLetters

        return DeadLetters(self)


class _Portal:
    """A daemon thread running an event loop, for the synchronous API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="conveyor-sync", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self, app: App) -> None:
        self.run(app._close_loop_engine())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
