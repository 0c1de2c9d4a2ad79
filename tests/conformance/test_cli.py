"""The command line against the engine under test: status, jobs, job, enqueue, dlq."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

import conveyor
from conveyor.cli import cli
from conveyor.testing import drain


@pytest.fixture
def runner(engine_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CONVEYOR_URL", engine_url)
    monkeypatch.setenv("CONVEYOR_TEST_LEASE", "30")
    return CliRunner()


def _ok(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def _dead_job(engine_url: str) -> str:
    app = conveyor.App(engine_url)

    @app.task(name="reports.build", queue="reports", retries=1, backoff=conveyor.Backoff.fixed(0))
    async def build(n: int) -> None:
        raise LookupError(f"report {n} has no data")

    try:
        job = await build.enqueue(3)
        await drain(app)
        return job.id
    finally:
        await app.close()


def test_status_jobs_and_dlq_show(runner: CliRunner, engine_url: str) -> None:
    job_id = asyncio.run(_dead_job(engine_url))
    status = _ok(runner, "status")
    assert "reports" in status
    listing = _ok(runner, "dlq", "list", "reports")
    assert job_id[:8] in listing
    shown = _ok(runner, "dlq", "show", "reports", job_id)
    assert "attempt 1" in shown and "attempt 2" in shown
    assert "LookupError: report 3 has no data" in shown
    assert "Traceback" in shown
    doc = json.loads(_ok(runner, "job", job_id, "--json"))
    assert doc["state"] == "dead" and len(doc["failures"]) == 2
    assert job_id in _ok(runner, "jobs", "reports", "--state", "dead")


def test_dlq_redrive_and_purge(runner: CliRunner, engine_url: str) -> None:
    job_id = asyncio.run(_dead_job(engine_url))
    assert "redrove 1 job(s)" in _ok(runner, "dlq", "redrive", "reports", job_id)
    doc = json.loads(_ok(runner, "job", job_id, "--json"))
    assert doc["state"] == "queued"
    other = asyncio.run(_dead_job(engine_url))
    refused = runner.invoke(cli, ["dlq", "purge", "reports"])
    assert refused.exit_code != 0 and "--all" in refused.output
    # the redriven job ran again in _dead_job's drain and failed again: two dead jobs now
    assert "purged 2 job(s)" in _ok(runner, "dlq", "purge", "reports", "--all", "--yes")
    missing = runner.invoke(cli, ["dlq", "show", "reports", other])
    assert missing.exit_code == 1 and "no dead job" in missing.output


def test_enqueue_validates_against_the_task(runner: CliRunner) -> None:
    app_path = "tests.conformance.worker_app:app"
    out = _ok(runner, "enqueue", "sleep_for", "--app", app_path, "--json", '{"marker": "/tmp/x"}')
    assert out.startswith("enqueued conformance/")
    bad = runner.invoke(cli, ["enqueue", "sleep_for", "--app", app_path, "--json", '{"x": 1}'])
    assert bad.exit_code == 1
    assert "PayloadInvalid" in bad.output and "marker" in bad.output
    assert "Traceback" not in bad.output
    unknown = runner.invoke(cli, ["enqueue", "nope", "--app", app_path])
    assert unknown.exit_code == 1 and "no task named 'nope'" in unknown.output


def test_bad_engine_url_is_one_clear_line(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["status", "--url", "mongodb://x"])
    assert result.exit_code == 1
    assert "unknown engine URL scheme 'mongodb'" in result.output
    assert "Traceback" not in result.output
