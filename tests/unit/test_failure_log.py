"""The failure log derives 'lost' attempts from gaps, and keeps earlier redrive rounds."""

from __future__ import annotations

from conveyor.job import failure_log
from conveyor.records import Attempt, JobRecord, Outcome, State


def _record(state: State, attempts: int, failures: list[Attempt], rounds: int = 0) -> JobRecord:
    return JobRecord(
        queue="q",
        id="j",
        task="t",
        payload=b"null",
        state=state,
        attempts=attempts,
        failures=failures,
        options={"redriven": rounds} if rounds else {},
    )


def _err(n: int, round_: int = 0) -> Attempt:
    return Attempt(n, Outcome.ERROR, "E", "m", round=round_)


def test_gaps_are_lost_attempts() -> None:
    log = failure_log(_record(State.DEAD, 3, [_err(1), _err(3)]))
    assert [(a.number, a.outcome) for a in log] == [
        (1, Outcome.ERROR),
        (2, Outcome.LOST),
        (3, Outcome.ERROR),
    ]


def test_running_or_succeeded_attempt_is_not_lost() -> None:
    assert failure_log(_record(State.ACTIVE, 2, [_err(1)])) == [_err(1)]
    assert failure_log(_record(State.COMPLETED, 2, [_err(1)])) == [_err(1)]


def test_queued_after_an_expired_lease_shows_the_lost_attempt() -> None:
    log = failure_log(_record(State.QUEUED, 1, []))
    assert [(a.number, a.outcome) for a in log] == [(1, Outcome.LOST)]


def test_earlier_rounds_come_first() -> None:
    log = failure_log(_record(State.ACTIVE, 1, [_err(1), _err(2)], rounds=1))
    assert [(a.round, a.number) for a in log] == [(0, 1), (0, 2)]


def test_an_unusable_stored_redrive_count_reads_as_round_zero() -> None:
    record = _record(State.DEAD, 1, [_err(1)])
    record.options["redriven"] = "x"  # a corrupted or hand-written row
    assert record.redrive_round == 0
    assert [(a.round, a.number) for a in failure_log(record)] == [(0, 1)]
