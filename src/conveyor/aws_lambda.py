"""Run Conveyor tasks in AWS Lambda, on the batches an SQS event source mapping delivers.

::

    # lambda_function.py
    from conveyor.aws_lambda import handler
    from myapp.tasks import app            # conveyor.App("sqs://?...") with the tasks

    lambda_handler = handler(app)

The same task code runs as under ``conveyor worker``: the records of the event become leases
(through the state table, if the app's URL has one), the worker runtime runs them with their
timeouts, retries and hooks, and the answer is a *partial batch response*:

* a job that completed, or was dead-lettered after its last attempt (with its failure log),
  is reported as done, and Lambda deletes its message;
* a job that failed and will be retried gets its backoff through ChangeMessageVisibility and
  is reported in ``batchItemFailures``, so Lambda leaves its message for the retry;
* on a FIFO queue the records run one by one in order; at the first one that is not done,
  it and every record after it are reported, so the group's order is kept.

The event source mapping needs ``FunctionResponseTypes: ["ReportBatchItemFailures"]`` (without
it Lambda retries the whole batch), and the queue's visibility timeout should be at least six
times the function's timeout. See docs/aws.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from conveyor.app import App
from conveyor.engines import redact
from conveyor.engines.sqs.engine import SQSEngine
from conveyor.engines.sqs.envelope import Delivery
from conveyor.errors import ConfigurationError
from conveyor.worker import Worker

log = logging.getLogger("conveyor.aws_lambda")

#: Seconds before the function's timeout at which running jobs are asked to stop (they are
#: given back, reported as failures, and run again later).
DEFAULT_STOP_MARGIN = 10.0


def handler(
    app: App, *, concurrency: int | None = None, stop_margin: float = DEFAULT_STOP_MARGIN
) -> SQSBatchHandler:
    """A Lambda handler ``(event, context) -> {"batchItemFailures": [...]}`` running ``app``'s
    tasks on SQS events. ``concurrency`` bounds the jobs run at once per invocation (default:
    the whole batch; FIFO queues always run one at a time)."""
    return SQSBatchHandler(app, concurrency, stop_margin)


class SQSBatchHandler:
    """The callable :func:`handler` returns. It keeps one event loop, and so one engine
    connection, across warm invocations of the function."""

    def __init__(self, app: App, concurrency: int | None, stop_margin: float) -> None:
        self.app = app
        self.concurrency = concurrency
        self.stop_margin = stop_margin
        self.loop = asyncio.new_event_loop()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """The Lambda entry point."""
        return self.loop.run_until_complete(self.run(event, context))

    async def run(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Process every record of ``event``; returns the partial batch response."""
        engine = await self.app.engine()
        if not isinstance(engine, SQSEngine):
            raise ConfigurationError(
                "conveyor.aws_lambda needs an app on the SQS engine (sqs://...), "
                f"not {redact(self.app.url)}"
            )
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in event.get("Records") or []:
            if record.get("eventSource") not in (None, "aws:sqs"):
                raise ConfigurationError(f"not an SQS event record: {record.get('eventSource')}")
            groups.setdefault(str(record.get("eventSourceARN", "")), []).append(record)
        failed: list[str] = []
        for arn, records in groups.items():
            queue = engine.queues.from_arn(arn)
            deliveries = [Delivery.from_lambda(queue, r) for r in records]
            if (await engine.queues.get(queue)).fifo:
                failed += await self._in_order(engine, queue, deliveries, context)
            else:
                size = self.concurrency or len(deliveries)
                done = await self._batch(engine, queue, deliveries, size, context)
                failed += [d.message_id for d in deliveries if not done[d.receipt]]
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}

    async def _in_order(
        self, engine: SQSEngine, queue: str, deliveries: list[Delivery], context: Any
    ) -> list[str]:
        for i, d in enumerate(deliveries):
            done = await self._batch(engine, queue, [d], 1, context)
            if not done[d.receipt]:
                # The rest did not run. Show them again now: SQS keeps the group behind the
                # failed record (hidden for its backoff), so they follow it in order, after
                # the backoff rather than after the queue's long visibility timeout.
                rest = [(x.receipt, 0.0) for x in deliveries[i + 1 :]]
                await engine.queues.change_visibility(queue, rest)
                return [x.message_id for x in deliveries[i:]]
        return []

    async def _batch(
        self,
        engine: SQSEngine,
        queue: str,
        deliveries: list[Delivery],
        concurrency: int,
        context: Any,
    ) -> dict[str, bool]:
        """Run ``deliveries`` through a burst worker; per receipt, whether it is done."""
        engine.begin_external(queue, deliveries)
        worker = Worker(
            self.app,
            queues=[queue],
            concurrency=max(1, concurrency),
            burst=True,
            grace_period=self.stop_margin / 2,
        )
        timer: asyncio.TimerHandle | None = None
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if callable(remaining):
            seconds = max(0.0, remaining() / 1000 - self.stop_margin)
            timer = asyncio.get_running_loop().call_later(seconds, worker.stop)
        try:
            await worker.run()
        finally:
            if timer is not None:
                timer.cancel()
            batch = engine.end_external()
        return {d.receipt: batch.outcomes.get(d.receipt, False) for d in deliveries}

    def close(self) -> None:
        """Close the engine and the loop (tests; Lambda just freezes the process)."""
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.app.close())
        self.loop.close()
