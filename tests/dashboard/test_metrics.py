"""Prometheus metrics after a known workload, parsed with prometheus_client's parser."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import conveyor
from conveyor.dashboard import create_dashboard
from conveyor.metrics import instrument, start_metrics_server
from tests.dashboard.conftest import Image, Shop, make_shop, work

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
async def shop(sqlite_url: str) -> AsyncIterator[Shop]:
    s = make_shop(sqlite_url, conveyor.ManualClock(1_767_225_600.0))
    yield s
    await s.app.close()


async def workload(shop: Shop) -> None:
    """3 images complete; bad-1 fails twice (1 try + 1 retry) and dies; 1 email bounces."""
    shop.failing["on"] = True
    for n in range(3):
        await shop.resize.enqueue(Image(image_id=f"img-{n}"))
    await shop.resize.enqueue(Image(image_id="bad-1"))
    await shop.send_email.enqueue("bounce@example.com")
    await shop.send_email.enqueue("later@example.com", delay=600)
    await work(shop.app)


async def test_metrics_endpoint_counts_a_known_workload_exactly(shop: Shop) -> None:
    dashboard = create_dashboard(shop.app)  # instruments the app
    await workload(shop)
    shop.app.clock.advance(42)  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=dashboard)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    m = parse(response.text)
    images, emails = "images.resize", "emails.send"

    assert value(m, "conveyor_jobs_enqueued_total", queue="images", task=images) == 4
    assert value(m, "conveyor_jobs_enqueued_total", queue="emails", task=emails) == 2
    assert value(m, "conveyor_jobs_completed_total", queue="images", task=images) == 3
    failed = "conveyor_jobs_failed_total"
    assert value(m, failed, queue="images", task=images, outcome="error") == 2
    assert value(m, failed, queue="emails", task=emails, outcome="error") == 1
    dead = "conveyor_jobs_dead_lettered_total"
    assert value(m, dead, queue="images", task=images) == 1
    assert value(m, dead, queue="emails", task=emails) == 1
    duration = "conveyor_job_duration_seconds_count"
    assert value(m, duration, queue="images", task=images, status="completed") == 3
    assert value(m, duration, queue="images", task=images, status="failed") == 2
    assert value(m, duration, queue="emails", task=emails, status="failed") == 1
    assert value(m, "conveyor_jobs_in_progress", queue="images", task=images) == 0

    jobs = "conveyor_queue_jobs"
    assert value(m, jobs, queue="images", state="completed") == 3
    assert value(m, jobs, queue="images", state="dead") == 1
    assert value(m, jobs, queue="emails", state="scheduled") == 1
    assert value(m, jobs, queue="reports", state="queued") == 0  # registered, no jobs yet
    assert value(m, "conveyor_dlq_depth", queue="images") == 1
    assert value(m, "conveyor_dlq_depth", queue="reports") == 0
    assert value(m, "conveyor_dlq_oldest_age_seconds", queue="emails") == 42
    assert value(m, "conveyor_queue_paused", queue="images") == 0
    assert value(m, "conveyor_engine_up") == 1
    assert value(m, "conveyor_workers_busy") == 0


async def test_instrument_is_idempotent_and_registries_are_per_app(
    shop: Shop, tmp_path: object
) -> None:
    first = instrument(shop.app)
    assert instrument(shop.app) is first
    assert sum(mw is first for mw in shop.app.middleware) == 1
    other = conveyor.App(shop.app.url)
    try:
        assert instrument(other).registry is not first.registry
    finally:
        await other.close()


def test_worker_process_metrics_server_serves_the_same_counts(sqlite_url: str) -> None:
    shop = make_shop(sqlite_url)
    server = start_metrics_server(shop.app, 0)
    try:
        with server.metrics.track_worker():
            shop.send_email.enqueue_sync("ada@example.com")
            shop.send_email.enqueue_sync("bounce@example.com")
            shop.run_worker(["emails"])
            text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
        m = parse(text)
        emails = {"queue": "emails", "task": "emails.send"}
        assert value(m, "conveyor_jobs_completed_total", **emails) == 1
        assert value(m, "conveyor_jobs_dead_lettered_total", **emails) == 1
        assert value(m, "conveyor_queue_jobs", queue="emails", state="completed") == 1
        assert value(m, "conveyor_workers") == 1
        after = parse(httpx.get(f"http://127.0.0.1:{server.port}/metrics").text)
        assert value(after, "conveyor_workers") == 0
    finally:
        server.close()
        shop.app.close_sync()
