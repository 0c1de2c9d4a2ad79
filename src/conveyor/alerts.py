"""Alerts: dead letters and unhealthy dead-letter queues, sent to sinks, de-duplicated.

One bad deploy can dead-letter thousands of jobs with the same error. ``Alerts`` sends the
first alert of each (kind, queue, error type) at once and folds the rest of its window into
one summary alert with a count, sent when the window closes.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import httpx

from conveyor.records import Attempt, QueueStats

log = logging.getLogger("conveyor.alerts")

DEFAULT_DEDUP_WINDOW = 300.0
DEFAULT_WEBHOOK_TIMEOUT = 10.0


@dataclass
class Alert:
    """One alert as sinks receive it."""

    kind: str  # "dead_letter", "dlq_depth" or "dlq_age"
    queue: str
    title: str
    message: str
    count: int = 1
    error_type: str = ""
    job_id: str = ""
    task: str = ""
    at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what the webhook sink posts)."""
        return asdict(self)


class AlertSink(Protocol):
    """Where alerts go."""

    async def send(self, alert: Alert) -> None:
        """Deliver one alert; raising is logged and does not affect jobs."""
        ...


class LogSink:
    """Alerts as log records on ``conveyor.alerts`` (level WARNING by default)."""

    def __init__(self, level: int = logging.WARNING) -> None:
        self.level = level

    async def send(self, alert: Alert) -> None:
        """Log the alert."""
        log.log(self.level, "ALERT %s: %s", alert.title, alert.message, extra={"alert": alert})


class WebhookSink:
    """POST each alert as JSON to ``url`` (Slack-compatible ``text`` field included)."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
    ) -> None:
        self.url = url
        self.headers = headers or {}
        self.timeout = timeout

    async def send(self, alert: Alert) -> None:
        """Post the alert; a non-2xx answer raises."""
        body = {**alert.to_dict(), "text": f"{alert.title}: {alert.message}"}
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(self.url, json=body, headers=self.headers)
            response.raise_for_status()


class CallableSink:
    """Call ``fn(alert)`` (sync or async) for each alert."""

    def __init__(self, fn: Callable[[Alert], Any]) -> None:
        self.fn = fn

    async def send(self, alert: Alert) -> None:
        """Call the function."""
        out = self.fn(alert)
        if inspect.isawaitable(out):
            await out


@dataclass
class _Window:
    opened_at: float
    suppressed: int = 0
    sample: Alert | None = None


class Alerts:
    """Alert policy: the sinks, the de-duplication window and the DLQ health thresholds.

    ``dlq_max_depth`` alerts when a queue holds more dead jobs than that; ``dlq_max_age``
    (seconds) when its oldest dead job is older. Both are checked by workers every
    ``check_interval`` seconds. Sinks may be :class:`AlertSink` objects or plain callables.
    """

    def __init__(
        self,
        sinks: Sequence[AlertSink | Callable[[Alert], Any]] | None = None,
        *,
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        dlq_max_depth: int | None = None,
        dlq_max_age: float | None = None,
        check_interval: float = 30.0,
    ) -> None:
        self.sinks: list[AlertSink] = [
            s
            if isinstance(s, (LogSink, WebhookSink, CallableSink)) or hasattr(s, "send")
            else CallableSink(s)
            for s in (sinks if sinks is not None else [LogSink()])
        ]
        self.dedup_window = dedup_window
        self.dlq_max_depth = dlq_max_depth
        self.dlq_max_age = dlq_max_age
        self.check_interval = check_interval
        self._windows: dict[tuple[str, str, str], _Window] = {}
        #: Alerts actually sent, by kind (for metrics and tests).
        self.sent: dict[str, int] = {}

    async def dead_letter(
        self, queue: str, task: str, job_id: str, attempt: Attempt, now: float
    ) -> None:
        """A job was dead-lettered after its last attempt."""
        await self._raise(
            Alert(
                kind="dead_letter",
                queue=queue,
                title=f"job dead-lettered in {queue}",
                message=(
                    f"{task} job {job_id} failed for good after attempt {attempt.number}: "
                    f"{attempt.error_type}: {attempt.message}"
                ),
                error_type=attempt.error_type,
                job_id=job_id,
                task=task,
                at=now,
            ),
            now,
        )

    async def check_dlq(self, stats: Sequence[QueueStats], now: float) -> None:
        """Alert on queues whose DLQ is too deep or too old."""
        for s in stats:
            if self.dlq_max_depth is not None and s.dead > self.dlq_max_depth:
                await self._raise(
                    Alert(
                        kind="dlq_depth",
                        queue=s.queue,
                        title=f"dead-letter queue of {s.queue} is growing",
                        message=f"{s.dead} dead jobs (threshold {self.dlq_max_depth})",
                        count=1,
                        at=now,
                        details={"depth": s.dead},
                    ),
                    now,
                )
            age = None if s.oldest_dead_at is None else now - s.oldest_dead_at
            if self.dlq_max_age is not None and age is not None and age > self.dlq_max_age:
                await self._raise(
                    Alert(
                        kind="dlq_age",
                        queue=s.queue,
                        title=f"dead-letter queue of {s.queue} is ageing",
                        message=f"oldest dead job is {age:.0f}s old (threshold "
                        f"{self.dlq_max_age:.0f}s)",
                        at=now,
                        details={"age_seconds": age},
                    ),
                    now,
                )

    async def flush(self, now: float, *, everything: bool = False) -> None:
        """Send summaries for windows that have closed; call periodically.

        ``everything=True`` closes every window now, as a process must before it exits:
        the counts of suppressed alerts live only in its memory.
        """
        for key, window in list(self._windows.items()):
            if not everything and now - window.opened_at < self.dedup_window:
                continue
            del self._windows[key]
            if window.suppressed and window.sample is not None:
                sample = window.sample
                await self._send(
                    Alert(
                        kind=sample.kind,
                        queue=sample.queue,
                        title=f"{sample.title} (x{window.suppressed} more)",
                        message=f"{window.suppressed} more like this in the last "
                        f"{self.dedup_window:.0f}s; latest: {sample.message}",
                        count=window.suppressed,
                        error_type=sample.error_type,
                        task=sample.task,
                        at=now,
                    )
                )

    async def _raise(self, alert: Alert, now: float) -> None:
        key = (alert.kind, alert.queue, alert.error_type)
        window = self._windows.get(key)
        if window is not None and now - window.opened_at < self.dedup_window:
            window.suppressed += 1
            window.sample = alert
            return
        if window is not None:
            await self.flush(now)
        self._windows[key] = _Window(opened_at=now)
        await self._send(alert)

    async def _send(self, alert: Alert) -> None:
        self.sent[alert.kind] = self.sent.get(alert.kind, 0) + alert.count
        for sink in self.sinks:
            try:
                await sink.send(alert)
            except Exception:
                log.exception("alert sink %r failed for alert %r", sink, alert.title)
