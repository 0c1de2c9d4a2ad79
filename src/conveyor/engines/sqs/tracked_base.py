"""Shared pieces of the SQS engine's state-table mode: item keys, index partitions, and the
conversion of an item to a :class:`JobRecord` (fetching claim-checked blobs from S3)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.engines.sqs.state import Item, StateTable
from conveyor.records import Attempt, JobRecord, LogLine, State, load_options

if TYPE_CHECKING:
    from conveyor.engines.sqs.engine import SQSEngine

T = TypeVar("T")

#: Concurrent DynamoDB requests per batch of settlements, leases or enqueues.
CONCURRENCY = 32


class TrackedBase:
    """The state table as the engine's modes see it."""

    def __init__(self, host: SQSEngine) -> None:
        self.host = host
        self.table = StateTable(host.options, host.clients)
        self._registered: set[str] = set()
        self._adopted_at: dict[str, float] = {}
        self._trimmed_at: dict[tuple[str, str], float] = {}
        self._sem = asyncio.Semaphore(CONCURRENCY)

    async def connect(self) -> None:
        """Check (or create) the state table."""
        await self.table.ensure()

    def key(self, queue: str, job_id: str) -> str:
        """The item key of a job."""
        return f"{self.host.queues.base(queue)}/{job_id}"

    def gs(self, queue: str, bucket: str) -> str:
        """The index partition of one queue's bucket."""
        return f"{self.host.queues.base(queue)}|{bucket}"

    def record(self, item: Item, now: float) -> JobRecord:
        """The job record an item stands for (payload already resolved)."""
        state = State(item["state"])
        run_at = float(item.get("run_at", 0.0))
        if state is State.QUEUED and run_at > now:
            state = State.SCHEDULED
        # A corrupted value must not stop the queue: the worker dead-letters the job instead.
        options = load_options(item.get("opts") or "{}")
        if item.get("redriven"):
            options["redriven"] = int(item["redriven"])
        return JobRecord(
            queue=str(item["q"]),
            id=str(item["id"]),
            task=str(item["task"]),
            payload=bytes(item.get("payload", b"")),
            state=state,
            priority=int(item.get("pri", 0)),
            run_at=run_at,
            created_at=float(item.get("created", 0.0)),
            attempts=int(item.get("attempts", 0)),
            options=options,
            started_at=_float(item.get("started")),
            finished_at=_float(item.get("finished")),
            progress=float(item.get("progress", 0.0)),
            result=item.get("result"),
            failures=_each(item.get("failures"), lambda s: Attempt.from_dict(json.loads(s))),
            logs=_each(item.get("logs"), lambda s: LogLine(**json.loads(s))),
            lease_token=item.get("tok"),
            lease_expires_at=_float(item.get("lexp")),
            worker=str(item.get("wk", "")),
        )

    async def _resolve(self, item: Item) -> Item:
        """Fetch claim-checked payload and result from S3 into the item."""
        claim = self.host.claim
        if claim is not None:
            if item.get("pref") and "payload" not in item:
                item["payload"] = await claim.get(str(item["pref"]))
            if item.get("rref") and "result" not in item:
                item["result"] = await claim.get(str(item["rref"]))
        return item

    async def _records(self, items: Sequence[Item], now: float) -> list[JobRecord]:
        resolved = await asyncio.gather(*(self._resolve(i) for i in items))
        return [self.record(i, now) for i in resolved]

    async def _limited(self, coro: Any) -> Any:
        async with self._sem:
            return await coro

    async def _register(self, queues: set[str], now: float) -> None:
        new = queues - self._registered
        if new:
            await asyncio.gather(
                *(self.table.register(q, self.host.queues.base(q), now) for q in new)
            )
            self._registered |= new

    async def _drop_blobs(self, items: Sequence[Item]) -> None:
        claim = self.host.claim
        if claim is not None:
            refs = [str(i.get(k)) for i in items for k in ("pref", "rref") if i.get(k)]
            if refs:
                await claim.delete(refs)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _each(values: Any, parse: Callable[[str], T]) -> list[T]:
    """Parse each stored JSON entry of a list, leaving out any that is corrupted."""
    out: list[T] = []
    for value in values or []:
        try:
            out.append(parse(value))
        except (TypeError, ValueError, KeyError, AttributeError):
            continue
    return out
