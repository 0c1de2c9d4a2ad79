"""Fixtures of the dashboard tests: a small app with real jobs, the dashboard served by
uvicorn on a free loopback port, and headless Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from pydantic import BaseModel

import conveyor
from conveyor.dashboard import create_dashboard
from conveyor.worker.runner import WorkerCounts

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Screenshots go to docs/images only when asked (CONVEYOR_UPDATE_SCREENSHOTS=1), so a test
#: run leaves the work tree clean; otherwise to a scratch folder.
DOCS_IMAGES = (
    Path(__file__).resolve().parents[2] / "docs" / "images"
    if os.environ.get("CONVEYOR_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "conveyor-screenshots"
)
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


class Image(BaseModel):
    """Payload of the test pipeline."""

    image_id: str
    note: str = ""


def decode_image(image_id: str) -> bytes:
    """Fails for ids starting with "bad", so dead jobs carry a real traceback."""
    if image_id.startswith("bad"):
        raise ValueError(f"cannot decode image {image_id}: not a PNG")
    return image_id.encode()


@dataclass
class Shop:
    """An app with an image queue (one task that can be told to fail) and an email queue."""

    app: conveyor.App
    resize: conveyor.Task[Any]
    send_email: conveyor.Task[Any]
    build_report: conveyor.Task[Any]
    failing: dict[str, bool] = field(default_factory=lambda: {"on": True})

    def run_worker(self, queues: list[str] | None = None) -> WorkerCounts:
        """:func:`work` from synchronous code (on the app's portal loop)."""
        return in_thread(self.app.run_sync, work(self.app, queues))

    def stats(self) -> dict[str, conveyor.records.QueueStats]:
        """The engine's counts by queue, from synchronous code."""
        return {s.queue: s for s in in_thread(self.app.run_sync, self.app.stats())}


async def work(app: conveyor.App, queues: list[str] | None = None) -> WorkerCounts:
    """One burst worker: runs every due job, retries with no backoff included, then returns."""
    return await conveyor.Worker(app, queues=queues, burst=True, concurrency=4).run()


def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` in a fresh thread and return its result.

    Playwright's sync API keeps an event loop set in the test's thread, where the app's
    ``*_sync`` methods (rightly) refuse to run; another thread has no loop.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def make_shop(url: str, clock: conveyor.ManualClock | None = None) -> Shop:
    """A fresh app on ``url`` with the test tasks registered."""
    app = conveyor.App(url, clock=clock)
    failing = {"on": True}

    @app.task(
        name="images.resize",
        queue="images",
        retries=1,
        backoff=conveyor.Backoff.fixed(0),
    )
    async def resize(job: conveyor.Job[Image]) -> dict[str, str]:
        await job.progress(40)
        await job.log(f"resizing {job.payload.image_id}")
        if failing["on"]:
            decode_image(job.payload.image_id)
        await job.progress(100)
        return {"key": f"thumbs/{job.payload.image_id}.png"}

    @app.task(name="emails.send", queue="emails", retries=0)
    async def send_email(to: str) -> None:
        if "@" not in to:
            raise ValueError(f"{to!r} is not an email address")
        if to.startswith("bounce"):
            raise ConnectionError(f"mail server refused {to}")

    @app.task(name="reports.build", queue="reports")
    async def build_report(month: str) -> str:
        return f"report {month}"

    return Shop(app, resize, send_email, build_report, failing)


@pytest.fixture
def shop(sqlite_url: str) -> Iterator[Shop]:
    """The test app on a fresh SQLite file; its sync portal is closed afterwards."""
    s = make_shop(sqlite_url)
    yield s
    s.app.close_sync()


@contextmanager
def served(app: conveyor.App, **options: Any) -> Iterator[str]:
    """Serve ``create_dashboard(app, **options)`` with uvicorn in a thread; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    dashboard = create_dashboard(app, **options)
    config = uvicorn.Config(dashboard, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            try:
                await server.serve(sockets=[sock])
            finally:
                await app.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the test, not lost in the thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="dashboard", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the dashboard did not start: {failure}")
        threading.Event().wait(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not failure, failure


@pytest.fixture
def serve_dashboard() -> Callable[..., Any]:
    """``with serve_dashboard(app, token=...) as url:``"""
    return served


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (never downloaded by Playwright).

    Module-scoped: Playwright's sync API keeps an event loop set in the main thread while it
    runs, which async tests in other modules must not inherit."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def csrf_token(html: str) -> str:
    """The CSRF token embedded in a page's forms."""
    match = CSRF_INPUT.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)
