"""Worker runtime features that do not depend on the engine: processes, logs, webhooks,
thread timeouts. Run on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import conveyor
from conveyor import logs
from conveyor.testing import drain
from tests.conformance import worker_app


def test_processes_flag_runs_several_workers_and_drains_on_sigterm(
    sqlite_url: str, tmp_path: Path
) -> None:
    producer = conveyor.App(sqlite_url)
    task = worker_app.sleep_for
    producer.tasks[task.name] = task
    markers = [tmp_path / f"m{i}.txt" for i in range(6)]

    async def fill() -> None:
        engine = await producer.engine()
        await engine.enqueue(
            [task.build(worker_app.Marked(marker=str(m), seconds=0.5)) for m in markers]
        )

    producer.run_sync(fill())
    producer.close_sync()
    env = {**os.environ, "CONVEYOR_URL": sqlite_url, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor.cli",
            "worker",
            "tests.conformance.worker_app:app",
            "--processes",
            "2",
            "--concurrency",
            "3",
            "--log-format",
            "json",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(m.exists() and "end" in m.read_text() for m in markers):
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    completed = [r for r in records if r["message"].startswith("completed")]
    assert len(completed) == 6
    assert {r["queue"] for r in completed} == {"conformance"}
    assert all(r["job_id"] and r["task"] and r["attempt"] == 1 for r in completed)
    pids = {r["message"] for r in records if "started on" in r["message"]}
    assert len(pids) == 2  # two worker processes, each announced itself


async def test_sync_task_timeout_fails_the_attempt_and_frees_the_slot(sqlite_url: str) -> None:
    app = conveyor.App(sqlite_url)
    stop = threading.Event()

    @app.task(timeout=0.2, retries=0)
    def blocking() -> None:
        stop.wait(30)

    @app.task
    def quick() -> str:
        return "ok"

    try:
        slow = await blocking.enqueue()
        fast = await quick.enqueue()
        counts = await drain(app, concurrency=1)
        assert counts.dead == 1 and counts.completed == 1
        assert await fast.result(timeout=5) == "ok"
        await slow.refresh()
        assert slow.failures[0].outcome is conveyor.Outcome.TIMEOUT
        assert "thread may still run" in slow.failures[0].message
    finally:
        stop.set()
        await app.close()


async def test_webhook_sink_posts_json_to_a_real_http_server(sqlite_url: str) -> None:
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    app = conveyor.App(sqlite_url, alerts=conveyor.Alerts([conveyor.WebhookSink(url)]))

    @app.task(retries=0)
    async def fail() -> None:
        raise ValueError("bad deploy")

    try:
        await fail.enqueue()
        await drain(app)
        assert len(received) == 1
        assert received[0]["kind"] == "dead_letter"
        assert "bad deploy" in str(received[0]["text"])
    finally:
        server.shutdown()
        await app.close()


def test_json_log_lines_carry_job_context(capsys: object) -> None:
    logs.configure("INFO", "json")
    logger = logging.getLogger("conveyor.worker")
    logger.info("hello", extra={"job_id": "j1", "queue": "q", "task": "t", "attempt": 2})
    logger.info("plain")
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    first, second = (json.loads(line) for line in err.strip().splitlines())
    assert first["job_id"] == "j1" and first["attempt"] == 2 and first["message"] == "hello"
    assert "job_id" not in second
    logging.getLogger("conveyor").handlers.clear()
    logging.getLogger("conveyor").propagate = True


async def test_worker_survives_an_engine_call_failing(sqlite_url: str) -> None:
    app = conveyor.App(sqlite_url)

    @app.task
    async def ok() -> int:
        return 1

    handle = await ok.enqueue()
    worker = conveyor.Worker(app, burst=True)
    engine = await app.engine()
    real = engine.reserve
    calls = 0

    async def flaky_reserve(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise conveyor.EngineUnavailable("database is locked")
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    engine.reserve = flaky_reserve  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(worker.run(), 30)
        assert await handle.result(timeout=5) == 1
        assert calls >= 2
    finally:
        await app.close()


def test_metrics_port_gives_each_worker_process_its_own_port(sqlite_url: str) -> None:
    import httpx

    from tests.servers import free_port, wait_for_port

    port = free_port()
    while True:  # two consecutive free ports
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    env = {**os.environ, "CONVEYOR_URL": sqlite_url, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor.cli",
            "worker",
            "tests.conformance.worker_app:app",
            "--processes",
            "2",
            "--metrics-port",
            str(port),
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        for p in (port, port + 1):
            wait_for_port(p, timeout=30)
            body = httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text
            assert "conveyor_workers 1.0" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_sigterm_while_the_app_is_still_importing_exits_zero(sqlite_url: str) -> None:
    env = {
        **os.environ,
        "CONVEYOR_URL": sqlite_url,
        "PYTHONPATH": os.getcwd(),
        "CONVEYOR_TEST_IMPORT_DELAY": "6",  # worker_app sleeps this long while imported
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "worker", "tests.conformance.worker_app:app"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3.5)  # the CLI is up and importing the app
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
