"""Retry delay strategies. Pure functions of the attempt number, serialisable to JSON."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

BackoffKind = Literal["exponential", "fixed", "schedule"]


@dataclass(frozen=True)
class Backoff:
    """How long to wait before retry number ``n`` (1-based).

    Build one with :meth:`exponential`, :meth:`fixed` or :meth:`schedule`::

        Backoff.schedule(60, 300, 1800)         # the seed's 1 min -> 5 min -> 30 min
        Backoff.exponential(1, factor=2, max=600, jitter=0.1)
        Backoff.fixed(30)
    """

    kind: BackoffKind
    delays: tuple[float, ...] = ()
    base: float = 1.0
    factor: float = 2.0
    max: float = 3600.0
    jitter: float = 0.0
    _rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def exponential(
        cls, base: float = 1.0, *, factor: float = 2.0, max: float = 3600.0, jitter: float = 0.1
    ) -> Backoff:
        """``base * factor**(n-1)`` seconds, capped at ``max``, spread by ``±jitter`` (fraction)."""
        _check_non_negative(base=base, max=max, jitter=jitter)
        if factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {factor}")
        return cls("exponential", base=base, factor=factor, max=max, jitter=jitter)

    @classmethod
    def fixed(cls, delay: float, *, jitter: float = 0.0) -> Backoff:
        """The same ``delay`` before every retry."""
        _check_non_negative(delay=delay, jitter=jitter)
        return cls("fixed", delays=(delay,), jitter=jitter)

    @classmethod
    def schedule(cls, *delays: float, jitter: float = 0.0) -> Backoff:
        """Explicit delays: retry 1 waits ``delays[0]``, retry 2 ``delays[1]``...

        Retries past the end of the schedule reuse its last delay.
        """
        if not delays:
            raise ValueError("Backoff.schedule needs at least one delay, e.g. schedule(60, 300)")
        _check_non_negative(jitter=jitter, **{f"delay {i}": d for i, d in enumerate(delays)})
        return cls("schedule", delays=tuple(float(d) for d in delays), jitter=jitter)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 is the first retry)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        if self.kind == "exponential":
            raw = min(self.base * self.factor ** (retry - 1), self.max)
        elif self.kind == "fixed":
            raw = self.delays[0]
        else:
            raw = self.delays[min(retry, len(self.delays)) - 1]
        if self.jitter:
            raw *= 1 + self._rng.uniform(-self.jitter, self.jitter)
        return max(raw, 0.0)

    def bounds(self, retry: int) -> tuple[float, float]:
        """The smallest and largest delay :meth:`delay` can return for ``retry``."""
        nominal = Backoff(self.kind, self.delays, self.base, self.factor, self.max, 0.0)
        raw = nominal.delay(retry)
        return raw * (1 - self.jitter), raw * (1 + self.jitter)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description, stored with jobs that override their task's backoff."""
        return {
            "kind": self.kind,
            "delays": list(self.delays),
            "base": self.base,
            "factor": self.factor,
            "max": self.max,
            "jitter": self.jitter,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Backoff:
        """Rebuild a backoff from :meth:`to_json` output."""
        return cls(
            data["kind"],
            tuple(data.get("delays", ())),
            data.get("base", 1.0),
            data.get("factor", 2.0),
            data.get("max", 3600.0),
            data.get("jitter", 0.0),
        )


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"backoff {name} must be >= 0, got {value}")
