"""SQS side effects of state changes, sent in batches, and the Lambda batch they may answer to.

A settlement first changes the job's state (the state table, or nothing without one) and
only then touches its message: deletes it (``ack``), or hides it for a while (``hold``:
ChangeMessageVisibility). :class:`Actions` collects those per queue and sends them 10 per
request. Inside a Lambda invocation the messages of the event belong to Lambda: an ``ack``
becomes "report success" (Lambda deletes the message) and a ``hold`` also reports the
message as a batch item failure so Lambda leaves it in the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from conveyor.engines.sqs.envelope import Delivery
from conveyor.engines.sqs.queues import Queues

log = logging.getLogger("conveyor.engines.sqs")

#: Called when a hold fails (the message is gone or its receipt is stale).
OnFail = Callable[[], Awaitable[None]]


@dataclass
class ExternalBatch:
    """Messages received by someone else (Lambda's poller) and handed to the engine.

    ``outcomes`` maps each message's receipt handle to ``True`` (done: the message may be
    deleted) or ``False`` (keep it: report it in ``batchItemFailures``).
    """

    queue: str
    pending: list[Delivery]
    outcomes: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._receipts = {d.receipt for d in self.pending}

    def owns(self, receipt: str) -> bool:
        """Whether ``receipt`` is one of this batch's messages."""
        return receipt in self._receipts

    def take(self, limit: int) -> list[Delivery]:
        """The next ``limit`` messages not yet handed out."""
        picked, self.pending = self.pending[:limit], self.pending[limit:]
        return picked


class Actions:
    """Deletes and visibility changes to send, grouped per queue, flushed in batches."""

    def __init__(self, queues: Queues, external: ExternalBatch | None) -> None:
        self.queues = queues
        self.external = external
        self._deletes: defaultdict[tuple[str, bool], list[str]] = defaultdict(list)
        self._holds: defaultdict[tuple[str, bool], list[tuple[str, float, OnFail | None]]] = (
            defaultdict(list)
        )

    def ack(self, queue: str, receipt: str | None, dlq: bool = False) -> None:
        """The message is done with: delete it (or, from Lambda, report success)."""
        if not receipt:
            return
        if self.external is not None and not dlq and self.external.owns(receipt):
            self.external.outcomes[receipt] = True
            return
        self._deletes[(queue, dlq)].append(receipt)

    def hold(
        self,
        queue: str,
        receipt: str | None,
        seconds: float,
        on_fail: OnFail | None = None,
        dlq: bool = False,
    ) -> None:
        """Hide the message for ``seconds`` (0: show it now); ``on_fail`` runs if SQS refuses."""
        if not receipt:
            return
        if self.external is not None and not dlq and self.external.owns(receipt):
            self.external.outcomes[receipt] = False
        self._holds[(queue, dlq)].append((receipt, seconds, on_fail))

    async def flush(self) -> None:
        """Send everything collected, 10 per request, queues in parallel."""
        deletes, self._deletes = self._deletes, defaultdict(list)
        holds, self._holds = self._holds, defaultdict(list)
        fallbacks: list[OnFail] = []

        async def delete(queue: str, dlq: bool, receipts: list[str]) -> None:
            for receipt, code in zip(
                receipts, await self.queues.delete(queue, receipts, dlq), strict=True
            ):
                if code is not None:  # already deleted, or a stale receipt: nothing to undo
                    log.debug("delete of a message in %s refused (%s): %s", queue, code, receipt)

        async def hold(
            queue: str, dlq: bool, items: list[tuple[str, float, OnFail | None]]
        ) -> None:
            changes = [(r, s) for r, s, _ in items]
            codes = await self.queues.change_visibility(queue, changes, dlq)
            for (_, _, on_fail), code in zip(items, codes, strict=True):
                if code is not None and on_fail is not None:
                    fallbacks.append(on_fail)
                elif code is not None:
                    log.debug("visibility change in %s refused: %s", queue, code)

        await asyncio.gather(
            *(delete(q, d, r) for (q, d), r in deletes.items()),
            *(hold(q, d, items) for (q, d), items in holds.items()),
        )
        if fallbacks:
            await asyncio.gather(*(f() for f in fallbacks))
