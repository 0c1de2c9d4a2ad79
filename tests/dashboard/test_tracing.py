"""OpenTelemetry: a job enqueued inside a span is processed in the same trace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import conveyor
import conveyor.tracing
from conveyor.tracing import TracingMiddleware
from tests.dashboard.conftest import Image, Shop, make_shop, work


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    yield p
    p.shutdown()


@pytest.fixture
async def shop(sqlite_url: str, provider: TracerProvider) -> AsyncIterator[Shop]:
    s = make_shop(sqlite_url)
    s.app.add_middleware(TracingMiddleware(provider))
    yield s
    await s.app.close()


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_enqueue_inside_a_span_and_the_job_share_one_trace(
    shop: Shop, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    shop.failing["on"] = False
    tracer = provider.get_tracer("web")
    with tracer.start_as_current_span("POST /images") as request:
        job = await shop.resize.enqueue(Image(image_id="img-1"), job_id="img-1")
    await work(shop.app)

    spans = list(exporter.get_finished_spans())
    trace_id = request.get_span_context().trace_id
    enqueue = one(spans, "enqueue images.resize")
    process = one(spans, "process images.resize")
    assert enqueue.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert enqueue.context.trace_id == process.context.trace_id == trace_id
    assert enqueue.parent is not None
    assert enqueue.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == enqueue.context.span_id
    assert process.attributes is not None
    assert process.attributes["messaging.destination.name"] == "images"
    assert process.attributes["messaging.message.id"] == "img-1"
    assert process.attributes["conveyor.task"] == "images.resize"
    assert process.attributes["conveyor.job.attempt"] == 1
    assert process.status.status_code is StatusCode.UNSET

    await job.refresh()
    assert job.record is not None
    carrier = job.record.options["meta"]["trace"]
    assert carrier["traceparent"].split("-")[1] == f"{trace_id:032x}"


async def test_failed_attempts_record_the_exception_in_their_spans(
    shop: Shop, exporter: InMemorySpanExporter
) -> None:
    shop.failing["on"] = True
    await shop.resize.enqueue(Image(image_id="bad-1"))
    await work(shop.app)
    attempts = [s for s in exporter.get_finished_spans() if s.name == "process images.resize"]
    assert [s.attributes["conveyor.job.attempt"] for s in attempts if s.attributes] == [1, 2]
    enqueue = one(list(exporter.get_finished_spans()), "enqueue images.resize")
    for span in attempts:
        assert span.context.trace_id == enqueue.context.trace_id  # retries stay in the trace
        assert span.status.status_code is StatusCode.ERROR
        (event,) = [e for e in span.events if e.name == "exception"]
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "ValueError"
        assert "cannot decode image bad-1" in str(event.attributes["exception.message"])


def test_sync_enqueue_from_a_request_thread_keeps_the_trace(
    sqlite_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    shop = make_shop(sqlite_url)
    shop.app.add_middleware(TracingMiddleware(provider))
    try:
        with provider.get_tracer("django").start_as_current_span("GET /signup") as request:
            shop.send_email.enqueue_sync("ada@example.com")
        shop.run_worker(["emails"])
    finally:
        shop.app.close_sync()
    process = one(list(exporter.get_finished_spans()), "process emails.send")
    assert process.context.trace_id == request.get_span_context().trace_id


def test_missing_opentelemetry_gives_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        conveyor.tracing, "_MISSING", ImportError("No module named 'opentelemetry'")
    )
    with pytest.raises(conveyor.ConfigurationError, match=r"pip install 'conveyor\[tracing\]'"):
        TracingMiddleware()
