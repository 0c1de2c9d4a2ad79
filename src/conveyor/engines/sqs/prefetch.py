"""Messages a worker received but has not started yet.

SQS has no priorities and bills per request, not per message, so the engine always asks for
up to 10 messages and keeps what it cannot start at once. Starting the highest priority
first among those is how ``priority`` works on SQS: it orders what one worker has in hand,
not the whole queue (SQS cannot). Kept messages stay hidden from other workers, so they are
given back after ``prefetch_hold`` seconds.

FIFO queues keep their order: per message group only the oldest message is handed out, and
the next one only after it settled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from conveyor.engines.sqs.envelope import Delivery


class Prefetch:
    """The engine's buffer of received, not yet leased messages."""

    def __init__(self, is_fifo: Callable[[str], bool]) -> None:
        self.is_fifo = is_fifo
        self._items: dict[str, Delivery] = {}  # by receipt handle

    def __len__(self) -> int:
        return len(self._items)

    def add(self, deliveries: Collection[Delivery]) -> None:
        """Keep newly received messages."""
        for d in deliveries:
            self._items[d.receipt] = d

    def count(self, queues: Collection[str]) -> int:
        """How many kept messages belong to ``queues``."""
        return sum(1 for d in self._items.values() if d.queue in queues)

    def take(
        self, queues: Collection[str], limit: int, busy: Collection[tuple[str, str]]
    ) -> list[Delivery]:
        """Remove and return up to ``limit`` messages to start: highest priority first, then
        earliest due; for FIFO queues only the head of each message group not ``busy``."""
        heads: dict[tuple[str, str], Delivery] = {}
        candidates: list[Delivery] = []
        for d in sorted(self._items.values(), key=lambda d: d.seq):
            if d.queue not in queues:
                continue
            if self.is_fifo(d.queue):
                group = (d.queue, d.group or "")
                if group in busy or group in heads:
                    continue
                heads[group] = d
            candidates.append(d)
        candidates.sort(key=lambda d: (-d.priority, d.run_at, d.seq))
        picked = candidates[:limit]
        for d in picked:
            del self._items[d.receipt]
        return picked

    def stale(self, older_than: float) -> list[Delivery]:
        """Remove and return messages kept longer than ``older_than`` seconds."""
        cutoff = time.monotonic() - older_than
        old = [d for d in self._items.values() if d.received_at <= cutoff]
        for d in old:
            del self._items[d.receipt]
        return old

    def group(self, queue: str, group: str | None) -> list[Delivery]:
        """Remove and return the kept messages of one FIFO message group."""
        found = [d for d in self._items.values() if d.queue == queue and d.group == group]
        for d in found:
            del self._items[d.receipt]
        return found

    def clear(self) -> list[Delivery]:
        """Remove and return every kept message."""
        everything = list(self._items.values())
        self._items.clear()
        return everything
