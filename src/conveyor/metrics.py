"""Prometheus metrics: what this process did (counters, durations) and what the engine holds.

``instrument(app)`` adds a :class:`ConveyorMetrics` middleware and hooks to ``app`` and
returns it; the same object comes back on every call, so the dashboard, the worker command
and your code share one registry per app (there is no global registry).

Counters and the duration histogram count what happens *in this process*: enqueues made
here, attempts run by workers here. Queue depths, DLQ depth and the oldest dead job's age are
read from the engine at scrape time, so every process reports the same, whole-system values.

Serve them with the dashboard's ``/metrics`` route, with :func:`start_metrics_server` (what
``conveyor worker --metrics-port`` uses), or render them yourself with
:meth:`ConveyorMetrics.render`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
        start_http_server,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "conveyor.metrics needs prometheus-client: pip install 'conveyor[dashboard]'"
    ) from exc

from conveyor.errors import ConfigurationError
from conveyor.middleware import CallNext, Middleware
from conveyor.records import Attempt, NewJob, QueueStats, State

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from conveyor.app import App
    from conveyor.job import Job

log = logging.getLogger("conveyor.metrics")

#: Histogram buckets of job durations, in seconds: from 5 ms to 30 minutes.
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)
#: Address :func:`start_metrics_server` binds to unless told otherwise (loopback only).
DEFAULT_METRICS_ADDR = "127.0.0.1"
#: At most this many active jobs are read per queue to count busy workers at scrape time.
ACTIVE_SCAN_LIMIT = 1000
#: Content type of :meth:`ConveyorMetrics.render`'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ConveyorMetrics(Middleware):
    """Prometheus metrics of one app, in a registry of its own (:attr:`registry`).

    Get it with :func:`instrument` rather than constructing it: that also registers the
    app hooks that count completions, failures and dead letters.
    """

    def __init__(
        self, app: App, *, duration_buckets: Sequence[float] = DEFAULT_DURATION_BUCKETS
    ) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        by_task = ["queue", "task"]
        self.enqueued = Counter(
            "conveyor_jobs_enqueued",
            "Jobs submitted to enqueue from this process (a repeated job_id counts again).",
            by_task,
            registry=r,
        )
        self.completed = Counter(
            "conveyor_jobs_completed",
            "Jobs completed by workers in this process.",
            by_task,
            registry=r,
        )
        self.failed = Counter(
            "conveyor_jobs_failed",
            "Failed attempts in this process (retried or not), by outcome.",
            [*by_task, "outcome"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "conveyor_jobs_dead_lettered",
            "Jobs moved to the dead-letter queue by workers in this process.",
            by_task,
            registry=r,
        )
        self.duration = Histogram(
            "conveyor_job_duration_seconds",
            "Run time of attempts in this process, by status (completed or failed).",
            [*by_task, "status"],
            buckets=list(duration_buckets),
            registry=r,
        )
        self.in_progress = Gauge(
            "conveyor_jobs_in_progress",
            "Attempts running in this process now.",
            by_task,
            registry=r,
        )
        self.workers = Gauge(
            "conveyor_workers",
            "Workers running in this process (those wrapped in ConveyorMetrics.track_worker).",
            registry=r,
        )
        self.engine = EngineCollector(app)
        r.register(self.engine)

    # -- middleware -------------------------------------------------------------------------

    def on_enqueue(self, jobs: Sequence[NewJob]) -> None:
        """Count jobs about to be stored."""
        for job in jobs:
            self.enqueued.labels(job.queue, job.task).inc()

    async def around_run(self, job: Job[Any], call_next: CallNext) -> bytes:
        """Time one attempt and count it as in progress while it runs."""
        running = self.in_progress.labels(job.queue, job.task)
        running.inc()
        started = time.perf_counter()
        status = "failed"
        try:
            result = await call_next()
            status = "completed"
            return result
        except asyncio.CancelledError:
            status = ""  # released at shutdown: neither a completion nor a failure
            raise
        finally:
            running.dec()
            if status:
                elapsed = time.perf_counter() - started
                self.duration.labels(job.queue, job.task, status).observe(elapsed)

    # -- hooks ------------------------------------------------------------------------------

    def on_completed(self, job: Job[Any], result: Any) -> None:
        """App hook: a job completed."""
        self.completed.labels(job.queue, job.task).inc()

    def on_failed(self, job: Job[Any], attempt: Attempt, will_retry: bool) -> None:
        """App hook: an attempt failed."""
        self.failed.labels(job.queue, job.task, attempt.outcome.value).inc()

    def on_dead_letter(self, job: Job[Any], attempt: Attempt) -> None:
        """App hook: a job went to the dead-letter queue."""
        self.dead_lettered.labels(job.queue, job.task).inc()

    # -- workers and output -----------------------------------------------------------------

    @contextlib.contextmanager
    def track_worker(self) -> Iterator[None]:
        """Count one more worker in ``conveyor_workers`` while the block runs::

        with metrics.track_worker():
            await worker.run()
        """
        self.workers.inc()
        try:
            yield
        finally:
            self.workers.dec()

    async def render(self) -> bytes:
        """Read the engine's counts now and return the text exposition format."""
        await self.engine.refresh()
        return generate_latest(self.registry)


def instrument(app: App) -> ConveyorMetrics:
    """Add metrics to ``app`` (middleware and hooks) once; return its :class:`ConveyorMetrics`."""
    for mw in app.middleware:
        if isinstance(mw, ConveyorMetrics):
            return mw
    metrics = ConveyorMetrics(app)
    app.add_middleware(metrics)
    app.on_completed(metrics.on_completed)
    app.on_failed(metrics.on_failed)
    app.on_dead_letter(metrics.on_dead_letter)
    return metrics


@dataclass
class _Snapshot:
    stats: list[QueueStats] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    busy_workers: int | None = None
    taken_at: float = 0.0
    ok: bool = False


class EngineCollector(Collector):
    """Gauges read from the engine: jobs by queue and state, DLQ depth and age, pauses.

    :meth:`refresh` reads the engine (async). A scrape from a thread without an event loop
    (:func:`start_metrics_server`) refreshes by itself; inside an event loop, call
    :meth:`refresh` first, as :meth:`ConveyorMetrics.render` does.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self._snapshot = _Snapshot()

    async def refresh(self) -> None:
        """Read counts from the engine; on failure ``conveyor_engine_up`` becomes 0."""
        try:
            stats = await self.app.stats()
            queues = sorted({s.queue for s in stats} | set(self.app.queues))
            busy = await self._busy_workers(stats)
        except Exception as exc:
            log.warning("metrics: reading queue counts failed: %s", exc)
            self._snapshot = _Snapshot(taken_at=self.app.clock.now(), ok=False)
            return
        self._snapshot = _Snapshot(stats, queues, busy, self.app.clock.now(), True)

    async def _busy_workers(self, stats: list[QueueStats]) -> int | None:
        engine = await self.app.engine()
        workers: set[str] = set()
        try:
            for stat in stats:
                if stat.counts.get(State.ACTIVE, 0):
                    active = await engine.list_jobs(stat.queue, State.ACTIVE, ACTIVE_SCAN_LIMIT)
                    workers.update(r.worker for r in active if r.worker)
        except ConfigurationError:  # an engine that cannot list active jobs (SQS, untracked)
            return None
        return len(workers)

    def describe(self) -> Iterable[Metric]:
        """No fixed description: the queues are only known at scrape time."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The gauges of the latest snapshot (refreshed first when called off-loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.app.run_sync(self.refresh())
        snap = self._snapshot
        up = GaugeMetricFamily(
            "conveyor_engine_up", "1 if the last read of queue counts from the engine worked."
        )
        up.add_metric([], 1.0 if snap.ok else 0.0)
        yield up
        if not snap.ok:
            return
        jobs = GaugeMetricFamily(
            "conveyor_queue_jobs", "Jobs stored per queue and state.", labels=["queue", "state"]
        )
        dlq = GaugeMetricFamily(
            "conveyor_dlq_depth", "Jobs in the queue's dead-letter queue.", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "conveyor_dlq_oldest_age_seconds",
            "Age of the oldest dead job, since it died (0 when the DLQ is empty).",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "conveyor_queue_paused", "1 if the queue is paused.", labels=["queue"]
        )
        by_queue = {s.queue: s for s in snap.stats}
        for queue in snap.queues:
            stat = by_queue.get(queue) or QueueStats(queue, {})
            for state in State:
                jobs.add_metric([queue, state.value], float(stat.counts.get(state, 0)))
            dlq.add_metric([queue], float(stat.dead))
            oldest = stat.oldest_dead_at
            age.add_metric([queue], max(0.0, snap.taken_at - oldest) if oldest else 0.0)
            paused.add_metric([queue], 1.0 if stat.paused else 0.0)
        yield from (jobs, dlq, age, paused)
        if snap.busy_workers is not None:
            busy = GaugeMetricFamily(
                "conveyor_workers_busy",
                "Distinct workers holding a job lease now, from the engine (idle ones are not "
                "seen).",
            )
            busy.add_metric([], float(snap.busy_workers))
            yield busy
        yield from self._requests()

    def _requests(self) -> Iterable[Metric]:
        """API requests of engines that bill per request (SQS): divide the two counters'
        rates for requests per job."""
        by_operation: dict[str, int] = {}
        finished = 0
        for engine in self.app.open_engines():
            request_stats = getattr(engine, "request_stats", None)
            if request_stats is None:
                continue
            snapshot = request_stats()
            finished += snapshot.jobs_finished
            for operation, count in snapshot.by_operation.items():
                by_operation[operation] = by_operation.get(operation, 0) + count
        if not by_operation and not finished:
            return
        requests = CounterMetricFamily(
            "conveyor_engine_requests",
            "API requests this process's engines made, by service.Operation (SQS bills each).",
            labels=["operation"],
        )
        for operation, count in sorted(by_operation.items()):
            requests.add_metric([operation], float(count))
        jobs = CounterMetricFamily(
            "conveyor_engine_jobs_finished",
            "Jobs this process's engines finished (completed or dead), for requests per job.",
        )
        jobs.add_metric([], float(finished))
        yield from (requests, jobs)


@dataclass
class MetricsServer:
    """A running metrics HTTP server (a daemon thread); :meth:`close` stops it."""

    metrics: ConveyorMetrics
    port: int
    _server: WSGIServer
    _thread: Any

    def close(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def start_metrics_server(app: App, port: int, addr: str = DEFAULT_METRICS_ADDR) -> MetricsServer:
    """Serve ``app``'s metrics at ``http://addr:port/metrics`` from a daemon thread.

    Call it in a worker process before the worker starts (``conveyor worker --metrics-port``
    does). It binds to loopback unless ``addr`` says otherwise (``"0.0.0.0"`` for a
    Prometheus on another host). ``port=0`` picks a free port (see the returned ``port``).
    """
    metrics = instrument(app)
    server, thread = start_http_server(port, addr, registry=metrics.registry)
    return MetricsServer(metrics, server.server_port, server, thread)
