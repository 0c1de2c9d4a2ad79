"""Turning exceptions into attempt records."""

from __future__ import annotations

import traceback as tb

from conveyor.records import Attempt, Outcome


def error_type(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Error`` for everything else."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def attempt_from(
    exc: BaseException,
    *,
    number: int,
    outcome: Outcome,
    started_at: float | None,
    ended_at: float,
    worker: str,
    round_: int,
) -> Attempt:
    """The failure record of an attempt that ended with ``exc``."""
    return Attempt(
        number=number,
        outcome=outcome,
        error_type=error_type(exc),
        message=str(exc) or repr(exc),
        traceback="".join(tb.format_exception(exc)),
        started_at=started_at,
        ended_at=ended_at,
        worker=worker,
        round=round_,
    )
