"""The checker can fail: synthetic histories with each kind of violation are caught."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaos import checker
from conveyor.records import JobRecord, State

WALL0 = 1_000_000.0


def _log(directory: Path, kind: str, pid: int, events: list[dict[str, Any]]) -> None:
    with (directory / f"{kind}-{pid}.jsonl").open("a") as f:
        for ev in events:
            f.write(json.dumps({"pid": pid, "wall": WALL0 + ev["mono"], **ev}) + "\n")


def _record(job: str, state: State, finished: float | None = None) -> JobRecord:
    return JobRecord("q", job, "t", b"{}", state, finished_at=finished)


def _check(directory: Path, records: dict[str, JobRecord], **kw: Any) -> dict[str, Any]:
    return checker.check(directory, records, scenario="unit", seed=0, engine="none", **kw)


def _enqueued(directory: Path, ok: list[str]) -> None:
    events = [{"ev": "try", "ids": ok, "mono": 0.0}, {"ev": "ok", "ids": ok, "mono": 0.1}]
    _log(directory, "producer", 1, events)


def test_a_clean_history_passes(tmp_path: Path) -> None:
    _enqueued(tmp_path, ["a"])
    _log(tmp_path, "truth", 10, [
        {"ev": "start", "job": "a", "att": 1, "mono": 1.0},
        {"ev": "end", "job": "a", "att": 1, "mono": 1.1},
    ])  # fmt: skip
    r = _check(tmp_path, {"a": _record("a", State.COMPLETED, WALL0 + 1.2)})
    assert (r["enqueued"], r["completed"], r["lost"], r["duplicate_runs"]) == (1, 1, 0, 0)
    assert r["runs_after_ack"] == r["lease_overlaps"] == r["unexpected"] == 0


def test_lost_unexpected_and_phantom_jobs_are_counted(tmp_path: Path) -> None:
    _enqueued(tmp_path, ["a", "b"])
    _log(tmp_path, "truth", 10, [
        {"ev": "start", "job": "x", "att": 1, "mono": 1.0},
        {"ev": "end", "job": "x", "att": 1, "mono": 1.1},
    ])  # fmt: skip
    records = {"b": _record("b", State.COMPLETED, WALL0 + 2), "x": _record("x", State.COMPLETED)}
    r = _check(tmp_path, records)
    assert r["lost"] == 2  # a vanished, b "completed" but its side effect never finished
    assert r["phantom_completions"] == 1 and r["records_missing"] == 1
    assert r["unexpected"] == 1  # x was never enqueued


def test_duplicates_overlaps_double_claims_and_runs_after_ack(tmp_path: Path) -> None:
    _enqueued(tmp_path, ["a"])
    _log(tmp_path, "truth", 10, [
        {"ev": "start", "job": "a", "att": 1, "mono": 1.0},
        {"ev": "end", "job": "a", "att": 1, "mono": 3.0},
    ])  # fmt: skip
    _log(tmp_path, "truth", 11, [
        {"ev": "start", "job": "a", "att": 1, "mono": 2.0},
        {"ev": "end", "job": "a", "att": 1, "mono": 2.5},
        {"ev": "start", "job": "a", "att": 2, "mono": 9.0},
    ])  # fmt: skip
    r = _check(tmp_path, {"a": _record("a", State.COMPLETED, WALL0 + 3.1)})
    assert r["duplicate_runs"] == 1
    assert r["lease_overlaps"] >= 1 and r["double_claims"] == 1
    assert r["runs_after_ack"] == 1


def test_kills_in_flight_and_recovery(tmp_path: Path) -> None:
    _enqueued(tmp_path, ["a", "b"])
    _log(tmp_path, "harness", 1, [{"ev": "kill", "target": 10, "sig": "SIGKILL", "mono": 2.0}])
    _log(tmp_path, "truth", 10, [
        {"ev": "start", "job": "a", "att": 1, "mono": 1.0},
        {"ev": "start", "job": "b", "att": 1, "mono": 1.5},
    ])  # fmt: skip
    _log(tmp_path, "truth", 11, [
        {"ev": "start", "job": "a", "att": 2, "mono": 4.5},
        {"ev": "end", "job": "a", "att": 2, "mono": 4.6},
    ])  # fmt: skip
    records = {"a": _record("a", State.COMPLETED, WALL0 + 5), "b": _record("b", State.QUEUED)}
    r = _check(tmp_path, records)
    assert r["in_flight_at_kills"] == 2
    assert r["recovery_max"] == 2.5 and r["unrecovered"] == 1 and r["lost"] == 1


def test_dlq_precision_and_recall(tmp_path: Path) -> None:
    _enqueued(tmp_path, ["a", "b", "c"])
    records = {
        "a": _record("a", State.DEAD, WALL0),
        "b": _record("b", State.DEAD, WALL0),
        "c": _record("c", State.QUEUED),
    }
    r = _check(tmp_path, records, expected_dead={"a", "c"})
    assert r["dlq_precision"] == 0.5 and r["dlq_recall"] == 0.5
