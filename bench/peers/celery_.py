"""Celery with its Redis broker (kombu): solo pool, results ignored, gossip/mingle/heartbeat
off, prefetch multiplier raised. Celery has no bulk enqueue (a ``group`` publishes one message
per task)."""

from __future__ import annotations

from typing import ClassVar

from bench.common import hit
from bench.peers.base import Adapter, flush_redis

PREFETCH = 100


class CeleryAdapter(Adapter):
    """Celery 5."""

    name = "celery"
    dist = "celery"
    concurrency = 1
    config: ClassVar[str] = (
        f"Redis broker, -P solo, prefetch multiplier {PREFETCH}, task_ignore_result, "
        "--without-gossip/mingle/heartbeat, acks early (default)"
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        from celery import Celery

        self.app = Celery("bench", broker=url)
        self.app.conf.update(
            task_ignore_result=True,
            worker_prefetch_multiplier=PREFETCH,
            broker_connection_retry_on_startup=True,
            worker_hijack_root_logger=False,
            task_default_queue="bench",
        )

        @self.app.task(name="bench.noop")
        def noop() -> None:
            hit()

        self.task = noop

    def enqueue_one(self) -> None:  # type: ignore[override]
        self.task.delay()

    def fill(self, n: int) -> None:
        for _ in range(n):
            self.task.delay()

    def reset(self) -> None:
        flush_redis(self.url)

    def run_worker(self) -> None:
        self.app.worker_main(
            [
                "worker",
                "-P",
                "solo",
                "-Q",
                "bench",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ]
        )
