"""Hostile input on the decode path: fuzzed payloads never crash a worker or run code.

The bait is real: the pickles the chaos scenario writes into the engines do create their
marker file when unpickled (checked here, in a child process); the worker never does.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor
from chaos import inputs, tasks
from conveyor.records import NewJob, Outcome, State

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


def test_the_pickle_bait_would_execute_if_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    for bait in inputs.pickle_bait(marker):
        marker.unlink(missing_ok=True)
        code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
        subprocess.run([sys.executable, "-c", code], input=bait, check=True)
        assert marker.exists()


def _decodes_or_refuses(data: bytes) -> None:
    try:
        value = tasks.typed.codec.decode_payload(data)
    except conveyor.PayloadInvalid as exc:
        assert str(exc)  # a reason, never an empty message
    else:
        assert isinstance(value, tasks.Typed)


@FUZZ
@given(st.binary(max_size=512))
def test_decoding_random_bytes_returns_a_payload_or_refuses_it(data: bytes) -> None:
    _decodes_or_refuses(data)


@FUZZ
@given(json_values)
def test_decoding_any_json_returns_a_payload_or_refuses_it(value: Any) -> None:
    _decodes_or_refuses(json.dumps(value).encode())


@FUZZ
@given(st.dictionaries(st.sampled_from(["n", "name", "x"]), json_values))
def test_decoding_near_miss_objects_returns_a_payload_or_refuses_it(value: Any) -> None:
    _decodes_or_refuses(json.dumps(value).encode())


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.binary(max_size=256) | json_values.map(lambda v: json.dumps(v).encode()))
def test_a_worker_dead_letters_an_undecodable_stored_payload_once(payload: bytes) -> None:
    async def run(path: str) -> None:
        app = conveyor.App(f"sqlite:///{path}")
        app.tasks[tasks.typed.name] = tasks.typed
        try:
            engine = await app.engine()
            now = app.clock.now()
            await engine.enqueue([NewJob("hostile", "j", tasks.typed.name, payload, 0, now, now)])
            worker = conveyor.Worker(app, queues=["hostile"], burst=True, idle_wait=0.01)
            counts = await worker.run()
            record = await engine.get("hostile", "j")
            assert record is not None
            if record.state is State.DEAD:
                assert counts.dead == 1 and record.attempts == 1
                [failure] = record.failures
                assert failure.outcome is Outcome.INVALID
                assert failure.error_type == "PayloadInvalid" and failure.message
            else:
                assert record.state is State.COMPLETED and counts.completed == 1
        finally:
            await app.close()

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run(f"{d}/q.db"))


def test_a_signature_with_non_ascii_characters_is_dead_lettered_not_a_crash(
    tmp_path: Path,
) -> None:
    """Found by atheris (chaos/fuzz_decode.py): hmac.compare_digest raises TypeError on
    non-ASCII str, which escaped as an "unexpected error", so the job was never settled and
    came back after every lease expiry, for ever."""
    signing = conveyor.Signing({"k1": "0123456789abcdef0123456789abcdef"}, current="k1")

    async def run() -> None:
        app = conveyor.App(f"sqlite:///{tmp_path / 'q.db'}", signing=signing)
        app.tasks[tasks.typed.name] = tasks.typed
        try:
            engine = await app.engine()
            job = tasks.typed.build(tasks.Typed(n=1, name="x"), job_id="forged")
            job.options["sig"] = {"kid": "k1", "mac": "\u00e9" * 64}
            await engine.enqueue([job])
            worker = conveyor.Worker(app, queues=["hostile"], burst=True, idle_wait=0.01)
            counts = await worker.run()
            record = await engine.get("hostile", "forged")
            assert record is not None and record.state is State.DEAD and counts.dead == 1
            [failure] = record.failures
            assert failure.error_type == "SignatureInvalid" and "altered" in failure.message
        finally:
            await app.close()

    asyncio.run(run())


def test_a_corrupted_options_column_dead_letters_one_job_and_the_queue_goes_on(
    tmp_path: Path,
) -> None:
    """Found by the chaos hostile scenario: one row whose options column was not JSON made
    every reserve that returned it raise, so the whole queue stopped, for ever."""

    async def run() -> None:
        app = conveyor.App(f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=1)
        app.tasks[tasks.typed.name] = tasks.typed
        try:
            engine = await app.engine()
            payloads = [tasks.Typed(n=i, name="x") for i in range(5)]
            await engine.enqueue([tasks.typed.build(p, job_id=f"ok-{p.n}") for p in payloads])
            db = sqlite3.connect(tmp_path / "q.db")
            db.execute(
                "INSERT INTO jobs (queue, id, task, payload, state, run_at, created_at, options)"
                " VALUES ('hostile', 'bad', 'chaos.typed', x'7b7d', 'queued', 0, 0, '{corrupt')"
            )
            db.commit()
            db.close()
            worker = conveyor.Worker(app, queues=["hostile"], burst=True, idle_wait=0.01)
            counts = await asyncio.wait_for(worker.run(), 30)
            assert (counts.completed, counts.dead) == (5, 1)
            record = await engine.get("hostile", "bad")
            assert record is not None and record.state is State.DEAD
            assert record.failures[0].error_type == "OptionsInvalid"
            assert "not JSON" in record.failures[0].message
        finally:
            await app.close()

    asyncio.run(run())


def test_unusable_stored_options_dead_letter_the_job_with_the_reason(tmp_path: Path) -> None:
    """Found by the chaos hostile scenario: stored overrides the worker could not use
    (``{"retries": "x"}``, a negative timeout, an unknown backoff kind) raised outside every
    handler, so the job was never settled and came back after each lease expiry, for ever."""
    bad = [{"retries": "x"}, {"timeout": -1}, {"timeout": "1"}, {"backoff": {"kind": 5}}]

    async def run() -> None:
        app = conveyor.App(f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=1)
        app.tasks[tasks.typed.name] = tasks.typed
        try:
            engine = await app.engine()
            jobs = []
            for i, options in enumerate(bad):
                job = tasks.typed.build(tasks.Typed(n=i, name="x"), job_id=f"opt-{i}")
                job.options.update(options)
                jobs.append(job)
            await engine.enqueue(jobs)
            worker = conveyor.Worker(app, queues=["hostile"], burst=True, idle_wait=0.01)
            counts = await asyncio.wait_for(worker.run(), 30)
            assert counts.dead == len(bad)
            for job in jobs:
                record = await engine.get("hostile", job.id)
                assert record is not None and record.state is State.DEAD and record.attempts == 1
                assert [f.error_type for f in record.failures] == ["OptionsInvalid"]
        finally:
            await app.close()

    asyncio.run(run())
