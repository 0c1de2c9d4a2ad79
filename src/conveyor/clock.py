"""Time sources. Every engine takes "now" from the app's clock, so tests can move time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time in seconds since the epoch."""

    def now(self) -> float:
        """The current time, seconds since the epoch."""
        ...


class SystemClock:
    """The wall clock (``time.time``)."""

    def now(self) -> float:
        """The current wall-clock time."""
        return time.time()


class ManualClock:
    """A clock that only moves when told to; used by ``conveyor.testing``."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start

    def now(self) -> float:
        """The clock's current reading."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self._now += seconds

    def set(self, when: float) -> None:
        """Move the clock to ``when`` (never backwards)."""
        self._now = max(self._now, when)
