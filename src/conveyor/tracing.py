"""OpenTelemetry tracing: a span for every enqueue and every attempt, in the caller's trace.

``app.add_middleware(TracingMiddleware())`` is all it takes. At enqueue, a PRODUCER span
``enqueue <task>`` starts as a child of the current span (say, the web request that enqueued
the job), and its context is stored in the job as a W3C ``traceparent`` carrier at
``job.options["meta"]["trace"]``. Each attempt then runs in a CONSUMER span
``process <task>``, child of that enqueue span, so the request and its job share one trace,
retries included. Exceptions are recorded on the span and set its status to error.

Needs ``opentelemetry-api`` (``pip install 'conveyor[tracing]'``) and, to export anything,
an SDK and exporter configured by your application.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigurationError
from conveyor.middleware import CallNext, Middleware
from conveyor.records import NewJob

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from conveyor.job import Job

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

#: Key under ``job.options["meta"]`` holding the trace context carrier.
META_KEY = "trace"
#: ``messaging.system`` attribute of every span.
MESSAGING_SYSTEM = "conveyor"


class TracingMiddleware(Middleware):
    """Spans for enqueues (PRODUCER) and attempts (CONSUMER), linked through the job.

    ``tracer_provider`` defaults to the global one; ``enqueue_spans=False`` only stores the
    current context in the job without recording an enqueue span.
    """

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, enqueue_spans: bool = True
    ) -> None:
        if _MISSING is not None:
            raise ConfigurationError(
                "tracing needs the OpenTelemetry API, which is not installed: "
                f"pip install 'conveyor[tracing]' ({_MISSING})"
            )
        from conveyor import __version__

        self.tracer = trace.get_tracer("conveyor", __version__, tracer_provider=tracer_provider)
        self.enqueue_spans = enqueue_spans

    def on_enqueue(self, jobs: Sequence[NewJob]) -> None:
        """Store the trace context in each job, inside an enqueue span if enabled."""
        for job in jobs:
            meta = job.options.setdefault("meta", {})
            if not self.enqueue_spans:
                meta[META_KEY] = _inject()
                continue
            with self.tracer.start_as_current_span(
                f"enqueue {job.task}",
                kind=SpanKind.PRODUCER,
                attributes={
                    **_attributes(job.queue, job.task, job.id),
                    "messaging.operation.type": "send",
                },
            ):
                meta[META_KEY] = _inject()

    async def around_run(self, job: Job[Any], call_next: CallNext) -> bytes:
        """Run the attempt in a CONSUMER span whose parent is the job's stored context."""
        record = job.record
        options = record.options if record is not None else {}
        carrier = (options.get("meta") or {}).get(META_KEY) or {}
        # A fresh base context: a job without a stored context starts its own trace rather
        # than joining whatever span the worker happens to be in.
        parent = propagate.extract(carrier, context=otel_context.Context())
        attributes: dict[str, str | int] = {
            **_attributes(job.queue, job.task, job.id),
            "messaging.operation.type": "process",
            "conveyor.job.attempt": record.attempts if record is not None else 0,
        }
        with self.tracer.start_as_current_span(
            f"process {job.task}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await call_next()
            except asyncio.CancelledError:
                span.set_attribute("conveyor.job.released", True)  # shutdown, not a failure
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise


def trace_context(options: dict[str, Any]) -> dict[str, str]:
    """The trace carrier stored in a job's options (empty if none), e.g. for display."""
    carrier = (options.get("meta") or {}).get(META_KEY) or {}
    return {str(k): str(v) for k, v in carrier.items()}


def _inject() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _attributes(queue: str, task: str, job_id: str) -> dict[str, str]:
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "conveyor.task": task,
    }
