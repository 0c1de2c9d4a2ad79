"""Key names. Every key of one queue carries the queue's ``{hash tag}``, so on Redis Cluster
all of them live in one slot and each Lua script runs on one node."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one queue, in the orders the Lua scripts take them (see ``_lib.lua``)."""

    queue: str
    jobs: str
    fail: str
    logs: str
    ready: str
    sched: str
    active: str
    done: str
    donet: str
    dead: str
    paused: str
    wake: str
    seq: str
    #: Both a key (present while someone listens) and the pub/sub channel of job events.
    events: str

    @classmethod
    def build(cls, prefix: str, queue: str) -> QueueKeys:
        """The keys of ``queue`` under ``prefix``: ``prefix:{queue}:name``.

        Whatever the queue name contains, every key of the queue starts with the same
        ``prefix:{`` and queue text, so Redis finds the same hash tag in all of them.
        """
        base = f"{prefix}:{{{queue}}}:"
        names = ("jobs", "fail", "logs", "ready", "sched", "active", "done", "donet", "dead")
        more = ("paused", "wake", "seq", "events")
        return cls(queue, *(base + n for n in names + more))

    @cached_property
    def reserve(self) -> tuple[str, ...]:
        """KEYS of reserve.lua for this queue."""
        return (
            self.jobs,
            self.fail,
            self.logs,
            self.ready,
            self.sched,
            self.active,
            self.paused,
            self.wake,
            self.events,
        )

    @cached_property
    def settle(self) -> tuple[str, ...]:
        """KEYS of settle.lua."""
        return (
            self.jobs,
            self.fail,
            self.logs,
            self.ready,
            self.sched,
            self.active,
            self.done,
            self.donet,
            self.dead,
            self.wake,
            self.events,
        )

    @cached_property
    def listing(self) -> tuple[str, ...]:
        """KEYS of list.lua."""
        return (
            self.jobs,
            self.fail,
            self.logs,
            self.ready,
            self.sched,
            self.active,
            self.done,
            self.dead,
        )

    @property
    def all(self) -> tuple[str, ...]:
        """Every key of the queue (for tests and cleanup)."""
        return (
            self.jobs,
            self.fail,
            self.logs,
            self.ready,
            self.sched,
            self.active,
            self.done,
            self.donet,
            self.dead,
            self.paused,
            self.wake,
            self.seq,
            self.events,
        )


def queues_key(prefix: str) -> str:
    """The set of every queue name seen under ``prefix`` (for ``stats``)."""
    return f"{prefix}:queues"
