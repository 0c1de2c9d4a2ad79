"""Alert de-duplication windows and sinks, without an engine."""

from __future__ import annotations

import logging

import pytest

from conveyor import Alert, Alerts, LogSink
from conveyor.records import Attempt, Outcome


def _attempt(error: str) -> Attempt:
    return Attempt(3, Outcome.ERROR, error, "boom")


async def test_one_alert_per_window_per_queue_and_error_then_a_summary() -> None:
    got: list[Alert] = []
    alerts = Alerts([got.append], dedup_window=60)
    for i in range(5):
        await alerts.dead_letter("q", "t", f"j{i}", _attempt("ValueError"), now=100 + i)
    await alerts.dead_letter("q", "t", "k", _attempt("KeyError"), now=101)
    await alerts.dead_letter("other", "t", "o", _attempt("ValueError"), now=101)
    assert [(a.queue, a.error_type, a.count) for a in got] == [
        ("q", "ValueError", 1),
        ("q", "KeyError", 1),
        ("other", "ValueError", 1),
    ]
    await alerts.flush(now=159)
    assert len(got) == 3  # window still open
    await alerts.flush(now=161)
    assert len(got) == 4
    assert got[3].count == 4 and "4 more" in got[3].message and got[3].job_id == ""
    await alerts.dead_letter("q", "t", "late", _attempt("ValueError"), now=170)
    assert len(got) == 5 and got[4].job_id == "late"


async def test_a_failing_sink_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    got: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise OSError("webhook down")

    alerts = Alerts([broken, got.append])
    await alerts.dead_letter("q", "t", "j", _attempt("E"), now=1)
    assert len(got) == 1
    assert "webhook down" in caplog.text


async def test_log_sink_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    alerts = Alerts([LogSink()])
    with caplog.at_level(logging.WARNING, logger="conveyor.alerts"):
        await alerts.dead_letter("q", "t", "j", _attempt("E"), now=1)
    assert "ALERT job dead-lettered in q" in caplog.text
