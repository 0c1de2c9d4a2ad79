"""Middleware: code that runs around every enqueue and every attempt (metrics, tracing...).

Subclass :class:`Middleware` and override what you need; pass instances to
``App(middleware=[...])`` or ``app.add_middleware(...)``. Outcomes (completed, failed,
dead-lettered) are observed with the app's hooks instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.records import NewJob

if TYPE_CHECKING:
    from conveyor.job import Job

#: Runs the attempt (or the next middleware) and returns the encoded result.
CallNext = Callable[[], Awaitable[bytes]]


class Middleware:
    """Base class: every method is a no-op."""

    def on_enqueue(self, jobs: Sequence[NewJob]) -> None:
        """Called with jobs about to be stored; may add JSON-able entries to
        ``job.options["meta"]`` (e.g. a trace context), which workers can read."""

    async def around_run(self, job: Job[Any], call_next: CallNext) -> bytes:
        """Wrap one attempt of ``job``; must return ``await call_next()`` (or raise)."""
        return await call_next()


def chain(middleware: Sequence[Middleware], job: Job[Any], run: CallNext) -> CallNext:
    """``run`` wrapped by each middleware, the first one outermost."""
    for mw in reversed(middleware):
        run = _bind(mw, job, run)
    return run


def _bind(mw: Middleware, job: Job[Any], call_next: CallNext) -> CallNext:
    async def call() -> bytes:
        return await mw.around_run(job, call_next)

    return call
