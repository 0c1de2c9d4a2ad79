"""The SQS engine with a state table: SQS delivers, DynamoDB decides.

Each job is one item in the state table and (while queued or running) one SQS message that
points at it. A message is a *delivery*; whether it becomes a lease is decided by one
conditional write on the item (the message's nonce must be the job's current one, the job
must be due, or its lease expired). The visibility timeout is the lease's SQS side: it is set
to the lease length on receive and on every heartbeat, so a dead worker's message shows again
when its lease runs out, and the item's lease expiry says whether the next receiver may take it.

Ordering rules that keep SQS and the table consistent without transactions:

* New messages are sent *before* the item that makes them valid is written; a message whose
  item (or nonce) is missing is put back for ``commit_grace`` seconds before being dropped.
* State changes are written *before* a message is deleted or hidden; a crash in between
  leaves a message that the next receiver recognises as stale (wrong state or nonce).

The app clock decides what is due. Where it disagrees with SQS's timers (a backoff shorter
than SQS's one-second granularity, a manual clock in tests, a lease reclaimed early), a
*sweep* of the table's ``parked`` and ``active`` buckets leases due jobs through the receipt
handle the item keeps, or re-sends a message SQS still delays.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.engines.sqs.actions import Actions
from conveyor.engines.sqs.envelope import TASK_ATTRIBUTE, Delivery, Envelope, new_nonce
from conveyor.engines.sqs.options import SQS_MAX_VISIBILITY
from conveyor.engines.sqs.queues import SendEntry
from conveyor.engines.sqs.state import (
    ACTIVE,
    COMPLETED,
    DEAD,
    PARKED,
    READY,
    Item,
    StateTable,
    keys_of,
)
from conveyor.errors import EngineUnavailable, PayloadTooLarge
from conveyor.records import (
    Attempt,
    Complete,
    DeadLetter,
    JobRecord,
    Lease,
    LogLine,
    NewJob,
    Outcome,
    QueueStats,
    Release,
    Retry,
    Settlement,
    State,
)

if TYPE_CHECKING:
    from conveyor.engines.sqs.engine import SQSEngine

log = logging.getLogger("conveyor.engines.sqs")

#: DynamoDB items hold at most 400 KiB; this much is left for the payload, the rest for
#: failures, logs and bookkeeping. Larger payloads need claim-check (S3).
PAYLOAD_LIMIT = 384 * 1024
#: Results above this size are stored in S3 with claim-check, or not stored (with a log line).
RESULT_LIMIT = 256 * 1024
#: A message that arrives before its state-table write is put back for this long, then re-read.
POSTPONE_SECONDS = 2.0
#: SQS may show a message up to a second late (whole-second timers); below this gap between
#: a message's expected and actual visibility the sweep does not re-send it.
VISIBILITY_TOLERANCE = 1.5
#: Margin kept under SQS's 12-hour visibility limit when hiding a message for a backoff.
VISIBILITY_MARGIN = 60.0
#: Items one sweep examines per bucket and queue.
SWEEP_BATCH = 25
#: Index entries read at most for one listing of queued, scheduled or active jobs.
LIST_SCAN_LIMIT = 10_000
#: DLQ receives per check for messages SQS moved there on its own (maxReceiveCount).
ADOPT_ROUNDS = 10
#: Concurrent DynamoDB requests per batch of settlements, leases or enqueues.
CONCURRENCY = 32


class TrackedMode:
    """Engine operations backed by the DynamoDB state table."""

    sweeps = True

    def __init__(self, host: SQSEngine) -> None:
        self.host = host
        self.table = StateTable(host.options, host.clients)
        self._registered: set[str] = set()
        self._adopted_at: dict[str, float] = {}
        self._sem = asyncio.Semaphore(CONCURRENCY)

    async def connect(self) -> None:
        """Check (or create) the state table."""
        await self.table.ensure()

    # -- keys and conversions ---------------------------------------------------------------

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
        options = json.loads(item.get("opts") or "{}")
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
            failures=[Attempt.from_dict(json.loads(s)) for s in item.get("failures", [])],
            logs=[LogLine(**json.loads(s)) for s in item.get("logs", [])],
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

    # -- enqueue ----------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[bool]:
        """Send one message per job, then write the items (refused if the id exists)."""
        host = self.host
        now, real = host.clock.now(), time.time()
        items: list[Item] = []
        by_queue: dict[str, list[tuple[int, SendEntry]]] = {}
        uploaded: list[str | None] = []
        for i, job in enumerate(jobs):
            delay = max(0.0, job.run_at - now)
            host.check_delay(delay)
            sent_delay = 0 if host.options.is_fifo(job.queue) else min(math.ceil(delay), 900)
            payload, pref = await self._store_payload(job)
            uploaded.append(pref)
            nonce = new_nonce()
            parked = delay > 0
            items.append(
                {
                    "k": self.key(job.queue, job.id),
                    "q": job.queue,
                    "id": job.id,
                    "task": job.task,
                    "payload": payload,
                    "pref": pref,
                    "pri": job.priority,
                    "run_at": job.run_at,
                    "created": job.created_at,
                    "opts": json.dumps(job.options),
                    "attempts": 0,
                    "state": "queued",
                    "progress": 0.0,
                    "failures": [],
                    "logs": [],
                    "wk": "",
                    "msg": nonce,
                    "vis": real + sent_delay,
                    "gs": self.gs(job.queue, PARKED if parked else READY),
                    "gt": job.run_at,
                }
            )
            envelope = Envelope(job.queue, job.id, nonce, job.priority, job.run_at)
            entry = SendEntry(
                body=envelope.encode(),
                delay=sent_delay,
                group=host.group_id(job.queue, job.task, job.id),
                dedup=dedup_id(job.id),
                attributes={TASK_ATTRIBUTE: job.task},
            )
            by_queue.setdefault(job.queue, []).append((i, entry))
            if parked:
                host.note_due(job.queue, job.run_at)
        await self._register({job.queue for job in jobs}, now)
        failed: list[str] = []

        async def send(queue: str, entries: list[tuple[int, SendEntry]]) -> None:
            codes = await host.queues.send(queue, [e for _, e in entries])
            for (i, _), code in zip(entries, codes, strict=True):
                if code:
                    failed.append(f"{jobs[i].id}: {code}")

        await asyncio.gather(*(send(q, e) for q, e in by_queue.items()))
        if failed:
            # Nothing was written yet: messages that did go out have no item and are dropped.
            raise EngineUnavailable(f"SQS refused {len(failed)} message(s): {failed[:5]}")
        results = await asyncio.gather(*(self._limited(self.table.put_new(i)) for i in items))
        created = [ok for ok, _ in results]
        unused = [ref for ref, ok in zip(uploaded, created, strict=True) if ref and not ok]
        if unused and host.claim is not None:
            await host.claim.delete(unused)
        return created

    async def _store_payload(self, job: NewJob) -> tuple[bytes | None, str | None]:
        claim = self.host.claim
        if claim is not None and len(job.payload) > self.host.options.claim_check_threshold:
            return None, await claim.put(claim.key(job.queue, job.id, "payload"), job.payload)
        if len(job.payload) > PAYLOAD_LIMIT:
            raise PayloadTooLarge(len(job.payload), PAYLOAD_LIMIT, job.task)
        return job.payload, None

    async def _register(self, queues: set[str], now: float) -> None:
        new = queues - self._registered
        if new:
            await asyncio.gather(
                *(self.table.register(q, self.host.queues.base(q), now) for q in new)
            )
            self._registered |= new

    # -- leasing ----------------------------------------------------------------------------

    async def lease(
        self, deliveries: Sequence[Delivery], lease_seconds: float, worker: str
    ) -> list[tuple[JobRecord, Delivery | None]]:
        """Turn received messages into leases where the table agrees; deal with the rest
        (park early ones, drop stale ones, put back ones whose write is pending)."""
        actions = self.host.new_actions()
        results = await asyncio.gather(
            *(self._limited(self._lease_one(d, lease_seconds, worker, actions)) for d in deliveries)
        )
        await actions.flush()
        leased = [(r, d) for r, d in zip(results, deliveries, strict=True) if r is not None]
        records = await self._records([r for r, _ in leased], self.host.clock.now())
        return [(rec, d) for rec, (_, d) in zip(records, leased, strict=True)]

    async def _lease_one(
        self, d: Delivery, lease_seconds: float, worker: str, actions: Actions
    ) -> Item | None:
        host = self.host
        env = d.envelope
        if env is None:
            await host.poison(d, actions)
            return None
        now, real = host.clock.now(), time.time()
        expires = now + lease_seconds
        ok, item = await self.table.update(
            self.key(env.queue, env.id),
            "SET #state = :active, #tok = :tok, #lexp = :exp, #attempts = #attempts + :one, "
            "#started = :now, #wk = :wk, #rh = :rh, #rc = :rc, #rt = :rt, #vis = :vis, "
            "#gs = :gs, #gt = :exp",
            "#msg = :n AND ((#state = :queued AND #run_at <= :now) "
            "OR (#state = :active AND #lexp <= :now))",
            {
                ":active": "active",
                ":queued": "queued",
                ":tok": os.urandom(12).hex(),
                ":exp": expires,
                ":one": 1,
                ":now": now,
                ":wk": worker,
                ":rh": d.receipt,
                ":rc": d.receive_count,
                ":rt": real,
                ":vis": real + lease_seconds,
                ":gs": self.gs(env.queue, ACTIVE),
                ":n": env.nonce,
            },
        )
        if ok:
            return item
        young = real - d.sent_at < host.options.commit_grace
        if item is None or item.get("msg") != env.nonce:
            # No item yet, or it names another message: a write may be pending (this message
            # is new, or replaces the item's current one) or the message is a stale copy.
            pending = (item is None and env.kind == "new") or (
                item is not None and env.kind == "re" and env.prev == item.get("msg")
            )
            if pending and young:
                actions.hold(d.queue, d.receipt, POSTPONE_SECONDS)
            else:
                actions.ack(d.queue, d.receipt)
            return None
        state = item.get("state")
        if state in (COMPLETED, DEAD):
            actions.ack(d.queue, d.receipt)  # a redelivery of a job that already finished
        elif state == "queued":
            await self._park(d, env, item, now, real, actions)
        elif state == "active":
            await self._adopt_receipt(d, env, item, now, real, actions)
        return None

    async def _park(
        self, d: Delivery, env: Envelope, item: Item, now: float, real: float, actions: Actions
    ) -> None:
        """An early delivery of a scheduled job: hide it until due, remember its receipt."""
        seconds = min(float(item["run_at"]) - now, SQS_MAX_VISIBILITY)
        ok, _ = await self.table.update(
            self.key(env.queue, env.id),
            "SET #rh = :rh, #rc = :rc, #rt = :rt, #vis = :vis, #gs = :gs",
            "#msg = :n AND #state = :queued",
            {
                ":rh": d.receipt,
                ":rc": d.receive_count,
                ":rt": real,
                ":vis": real + seconds,
                ":gs": self.gs(env.queue, PARKED),
                ":n": env.nonce,
                ":queued": "queued",
            },
        )
        if ok:
            actions.hold(d.queue, d.receipt, seconds)
            self.host.note_due(env.queue, float(item["run_at"]))

    async def _adopt_receipt(
        self, d: Delivery, env: Envelope, item: Item, now: float, real: float, actions: Actions
    ) -> None:
        """A delivery of a job that is leased and not expired: SQS showed the message again
        (or a duplicate copy). Its newest receipt is the one SQS honours, so the item keeps
        it and the message stays hidden until the lease ends."""
        remaining = max(1.0, float(item.get("lexp", now)) - now)
        ok, _ = await self.table.update(
            self.key(env.queue, env.id),
            "SET #rh = :rh, #rc = :rc, #rt = :rt",
            "#msg = :n AND #state = :active AND #tok = :tok",
            {
                ":rh": d.receipt,
                ":rc": d.receive_count,
                ":rt": real,
                ":n": env.nonce,
                ":active": "active",
                ":tok": item.get("tok"),
            },
        )
        if ok:
            actions.hold(d.queue, d.receipt, remaining)

    async def sweep(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> tuple[list[JobRecord], bool]:
        """Lease jobs the app clock says are due but SQS still hides; returns the leases and
        whether a message was re-sent (so a receive should follow)."""
        host = self.host
        now, real = host.clock.now(), time.time()
        leased: list[Item] = []
        resent = False
        for queue in queues:
            active = await self.table.query(self.gs(queue, ACTIVE), limit=SWEEP_BATCH)
            parked = await self.table.query(self.gs(queue, PARKED), limit=SWEEP_BATCH)
            # When to look again: the earliest entry this sweep leaves behind (due ones left
            # over because ``limit`` was reached make that "now").
            left: list[float] = []
            for entry, expired in [(e, True) for e in active] + [(e, False) for e in parked]:
                due = float(entry["gt"])
                if due > now or len(leased) >= limit:
                    left.append(due)
                elif expired or entry.get("rt") is not None:
                    item = await self._take(entry, lease_seconds, worker, now, real, expired)
                    if isinstance(item, dict):
                        leased.append(item)
                    elif item == "raced":
                        left.append(due)
                    # "gone": its message is not in flight any more; a receive or the DLQ
                    # check deals with it, and only the next regular sweep looks again.
                elif float(entry.get("vis", 0.0)) > real + VISIBILITY_TOLERANCE:
                    resent |= await self._republish(queue, entry)
                else:
                    left.append(due)  # its message is receivable: a receive will get it
            full = len(active) == SWEEP_BATCH or len(parked) == SWEEP_BATCH
            host.swept(queue, now if full else min(left, default=math.inf))
        return await self._records(leased, now), resent

    async def _take(
        self,
        entry: Item,
        lease_seconds: float,
        worker: str,
        now: float,
        real: float,
        expired: bool,
    ) -> Item | str:
        """Lease a job through the receipt its item keeps (no receive needed): hide the
        message for the lease first, so only a message still in flight with that receipt is
        taken; one SQS showed again is left to a receive, which counts toward
        maxReceiveCount (the crash-loop safety net) as it should.

        Returns the leased item, ``"gone"`` (the message is not in flight with the receipt
        any more) or ``"raced"`` (the item changed meanwhile)."""
        item = await self.table.get(str(entry["k"]))
        if item is None or not item.get("rh") or item.get("msg") != entry.get("msg"):
            return "raced"
        queue = str(item["q"])
        (code,) = await self.host.queues.change_visibility(
            queue, [(str(item["rh"]), lease_seconds)]
        )
        if code is not None:
            await self.adopt_dead(queue)  # SQS may have moved it to the DLQ (crash loop)
            return "gone"
        condition = (
            "#state = :active AND #lexp <= :now"
            if expired
            else "#state = :queued AND #run_at <= :now AND #msg = :msg"
        )
        ok, taken = await self.table.update(
            str(entry["k"]),
            "SET #state = :active, #tok = :tok, #lexp = :exp, #attempts = #attempts + :one, "
            "#started = :now, #wk = :wk, #vis = :vis, #gs = :gs, #gt = :exp",
            condition + " AND #rh = :rh",
            {
                ":active": "active",
                ":queued": "queued",
                ":tok": os.urandom(12).hex(),
                ":exp": now + lease_seconds,
                ":one": 1,
                ":now": now,
                ":wk": worker,
                ":vis": real + lease_seconds,
                ":gs": self.gs(queue, ACTIVE),
                ":msg": entry.get("msg"),
                ":rh": item["rh"],
            },
        )
        return taken if ok and taken is not None else "raced"

    async def _republish(self, queue: str, entry: Item) -> bool:
        """The job is due but its message sits in SQS's delay: send a replacement now."""
        item = await self.table.get(str(entry["k"]))
        if item is None or item.get("state") != "queued" or item.get("msg") != entry.get("msg"):
            return False
        return await self.resend(item, delay=0.0)

    async def resend(self, item: Item, delay: float, old_receipt: str | None = None) -> bool:
        """Replace a queued job's message: send a new one (delayed up to SQS's 15 minutes),
        point the item at it, then delete the old one. Resets SQS's receive count."""
        host = self.host
        queue, job_id, old = str(item["q"]), str(item["id"]), str(item.get("msg"))
        nonce = new_nonce()
        envelope = Envelope(
            queue, job_id, nonce, int(item.get("pri", 0)), float(item["run_at"]), "re", old
        )
        sent_delay = 0 if host.options.is_fifo(queue) else min(math.ceil(delay), 900)
        entry = SendEntry(
            body=envelope.encode(),
            delay=sent_delay,
            group=host.group_id(queue, str(item["task"]), job_id),
            dedup=dedup_id(f"{job_id}/{nonce}"),
            attributes={TASK_ATTRIBUTE: str(item["task"])},
        )
        (code,) = await host.queues.send(queue, [entry])
        if code is not None:
            log.error("re-sending the message of job %s/%s failed: %s", queue, job_id, code)
            return False
        ok, _ = await self.table.update(
            self.key(queue, job_id),
            "SET #msg = :n, #vis = :vis REMOVE #rh, #rt",
            "#msg = :old AND #state = :queued",
            {":n": nonce, ":vis": time.time() + sent_delay, ":old": old, ":queued": "queued"},
        )
        if ok and old_receipt:
            actions = host.new_actions()
            actions.ack(queue, old_receipt)
            await actions.flush()
        return ok

    async def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Return kept, unstarted messages to the queue (near SQS's receive limit: re-send)."""
        actions = self.host.new_actions()
        for d in deliveries:
            limit = (await self.host.queues.get(d.queue)).max_receive_count
            if limit is not None and d.receive_count + 1 >= limit and d.envelope is not None:
                item = await self.table.get(self.key(d.queue, d.envelope.id))
                current = item is not None and item.get("msg") == d.envelope.nonce
                if item is not None and current and item.get("state") == "queued":
                    await self.resend(item, 0.0, d.receipt)
                    continue
            actions.hold(d.queue, d.receipt, 0)
        await actions.flush()

    # -- running jobs -----------------------------------------------------------------------

    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[bool]:
        """Push lease expiries in the table, then the messages' visibility in SQS."""
        now, real = self.host.clock.now(), time.time()

        async def one(lease: Lease) -> Item | None:
            ok, item = await self.table.update(
                self.key(lease.queue, lease.job_id),
                "SET #lexp = :exp, #gt = :exp, #vis = :vis",
                "#tok = :tok AND #state = :active",
                {
                    ":exp": now + lease_seconds,
                    ":vis": real + lease_seconds,
                    ":tok": lease.token,
                    ":active": "active",
                },
            )
            return item if ok else None

        items = await asyncio.gather(*(self._limited(one(lease)) for lease in leases))
        actions = self.host.new_actions()
        for lease, item in zip(leases, items, strict=True):
            if item is not None:
                actions.hold(lease.queue, item.get("rh"), lease_seconds)
                self.host.note_due(lease.queue, now + lease_seconds)
        await actions.flush()
        return [item is not None for item in items]

    async def report(self, lease: Lease, progress: float | None, line: str | None) -> bool:
        """Store progress and/or append a log line, if the lease is still held."""
        sets: list[str] = []
        values: dict[str, Any] = {":tok": lease.token, ":active": "active"}
        if progress is not None:
            sets.append("#progress = :p")
            values[":p"] = progress
        if line is not None:
            sets.append("#logs = list_append(#logs, :l)")
            values[":l"] = [json.dumps({"at": self.host.clock.now(), "message": line})]
        if not sets:
            sets.append("#tok = :tok")
        ok, _ = await self.table.update(
            self.key(lease.queue, lease.job_id),
            "SET " + ", ".join(sets),
            "#tok = :tok AND #state = :active",
            values,
        )
        return ok

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply each settlement with one conditional write, then delete or hide messages."""
        actions = self.host.new_actions()
        results = await asyncio.gather(
            *(self._limited(self._settle_one(s, actions)) for s in settlements)
        )
        await actions.flush()
        return list(results)

    async def _settle_one(self, s: Settlement, actions: Actions) -> bool:
        host = self.host
        now, real = host.clock.now(), time.time()
        lease = s.lease
        key = self.key(lease.queue, lease.job_id)
        guard = "#tok = :tok AND #state = :active"
        base: dict[str, Any] = {":tok": lease.token, ":active": "active"}
        if isinstance(s, Complete) and not s.keep:
            ok, old = await self.table.delete(key, guard, base)
            if ok and old is not None:
                actions.ack(lease.queue, old.get("rh"))
                await self._drop_blobs([old])
                host.requests.jobs_finished += 1
            return ok
        if isinstance(s, Complete):
            result, rref = await self._store_result(lease, s.result)
            ok, old = await self.table.update(
                key,
                "SET #state = :completed, #result = :r, #rref = :rref, #finished = :now, "
                "#progress = :hundred, #gs = :gs, #gt = :now REMOVE #tok, #lexp, #rt",
                guard,
                {
                    **base,
                    ":completed": "completed",
                    ":r": result,
                    ":rref": rref,
                    ":now": now,
                    ":hundred": 100.0,
                    ":gs": self.gs(lease.queue, COMPLETED),
                },
                returns="ALL_OLD",
            )
            if ok and old is not None:
                actions.ack(lease.queue, old.get("rh"))
                host.requests.jobs_finished += 1
            elif rref and host.claim is not None:
                await host.claim.delete([rref])
            return ok
        if isinstance(s, Retry):
            delay = max(0.0, s.run_at - now)
            run_at = s.run_at
            if delay > host.options.max_delay:
                log.error(
                    "job %s/%s: backoff of %.0fs is beyond SQS's limit of %.0fs; retrying after "
                    "%.0fs instead (shorten the task's backoff)",
                    lease.queue,
                    lease.job_id,
                    delay,
                    host.options.max_delay,
                    host.options.max_delay,
                )
                delay = host.options.max_delay
                run_at = now + delay
            ok, old = await self.table.update(
                key,
                "SET #state = :queued, #run_at = :r, #failures = list_append(#failures, :a), "
                "#gs = :gs, #gt = :r, #vis = :vis REMOVE #tok, #lexp",
                guard,
                {
                    **base,
                    ":queued": "queued",
                    ":r": run_at,
                    ":a": [json.dumps(s.attempt.to_dict())],
                    ":gs": self.gs(lease.queue, PARKED),
                    ":vis": real + delay,
                },
                returns="ALL_OLD",
            )
            if ok and old is not None:
                await self._hide_for_retry(old, delay, real, actions)
                host.note_due(lease.queue, run_at)
            return ok
        if isinstance(s, DeadLetter):
            ok, old = await self.table.update(
                key,
                "SET #state = :dead, #finished = :now, #failures = list_append(#failures, :a), "
                "#gs = :gs, #gt = :now REMOVE #tok, #lexp, #rh, #rt",
                guard,
                {
                    **base,
                    ":dead": "dead",
                    ":now": now,
                    ":a": [json.dumps(s.attempt.to_dict())],
                    ":gs": self.gs(lease.queue, DEAD),
                },
                returns="ALL_OLD",
            )
            if ok and old is not None:
                actions.ack(lease.queue, old.get("rh"))
                host.requests.jobs_finished += 1
            return ok
        if isinstance(s, Release):
            ok, old = await self.table.update(
                key,
                "SET #state = :queued, #run_at = :now, #attempts = #attempts - :one, "
                "#gs = :gs, #gt = :now, #vis = :real REMOVE #tok, #lexp",
                guard,
                {
                    **base,
                    ":queued": "queued",
                    ":now": now,
                    ":one": 1,
                    ":gs": self.gs(lease.queue, READY),
                    ":real": real,
                },
                returns="ALL_OLD",
            )
            if ok and old is not None:
                actions.hold(lease.queue, old.get("rh"), 0)
            return ok
        raise TypeError(f"not a settlement: {s!r}")

    async def _hide_for_retry(self, old: Item, delay: float, real: float, actions: Actions) -> None:
        """Backoff through ChangeMessageVisibility on the failed message: cheap (batched) and
        keeps a FIFO message's place. A re-send (new message) takes over when SQS would
        refuse: beyond 12 hours since the receive, or one receive short of maxReceiveCount."""
        queue = str(old["q"])
        info = await self.host.queues.get(queue)
        age = real - float(old.get("rt", real))
        near_limit = (
            info.max_receive_count is not None
            and int(old.get("rc", 0)) + 1 >= info.max_receive_count
        )
        current = {**old, "state": "queued"}

        async def fallback() -> None:
            await self.resend(current, delay, str(old.get("rh") or "") or None)

        if near_limit or delay + age > SQS_MAX_VISIBILITY - VISIBILITY_MARGIN or not old.get("rh"):
            await fallback()
        else:
            actions.hold(queue, str(old["rh"]), delay, on_fail=fallback)

    async def _store_result(
        self, lease: Lease, result: bytes | None
    ) -> tuple[bytes | None, str | None]:
        if result is None or len(result) <= RESULT_LIMIT:
            return result, None
        claim = self.host.claim
        if claim is not None:
            return None, await claim.put(claim.key(lease.queue, lease.job_id, "result"), result)
        log.warning(
            "job %s/%s: result of %d bytes not stored (over %d bytes; turn on claim_check)",
            lease.queue,
            lease.job_id,
            len(result),
            RESULT_LIMIT,
        )
        return None, None

    # -- reading ----------------------------------------------------------------------------

    async def get(self, queue: str, job_id: str) -> JobRecord | None:
        """One job's record (strongly consistent)."""
        host = self.host
        item = await self.table.get(self.key(queue, job_id))
        if item is None:
            return None
        # A running job whose lease ran out and whose message SQS should show again by now
        # may sit in the DLQ, moved there by the redrive policy (a crash loop): check.
        overdue = float(item.get("vis", 0.0)) < time.time()
        expired = float(item.get("lexp", 0.0)) <= host.clock.now()
        stuck = overdue and item.get("state") == "active" and expired
        if stuck and await self.adopt_dead(queue):
            # Its message may have gone to the DLQ on its own (maxReceiveCount): look again.
            item = await self.table.get(self.key(queue, job_id)) or item
        (record,) = await self._records([item], host.clock.now())
        return record

    async def list_jobs(self, queue: str, state: State, limit: int, offset: int) -> list[JobRecord]:
        """Jobs of one queue in one state, in the SQLite engine's order."""
        now = self.host.clock.now()
        entries: list[Item]
        if state is State.QUEUED:
            entries = [
                *await self.table.query(self.gs(queue, READY), high=now, limit=LIST_SCAN_LIMIT),
                *await self.table.query(self.gs(queue, PARKED), high=now, limit=LIST_SCAN_LIMIT),
            ]
            entries.sort(key=lambda e: (-int(e.get("pri", 0)), e["gt"], e.get("created", 0)))
        elif state is State.SCHEDULED:
            want = offset + limit
            entries = [
                e
                for bucket in (READY, PARKED)
                for e in await self.table.query(self.gs(queue, bucket), low=now, limit=want + 50)
                if float(e["gt"]) > now
            ]
            entries.sort(key=lambda e: (e["gt"], e.get("created", 0)))
        elif state is State.ACTIVE:
            entries = await self.table.query(self.gs(queue, ACTIVE), limit=LIST_SCAN_LIMIT)
            entries.sort(key=lambda e: (e.get("started", 0), e.get("created", 0)))
        else:
            if state is State.DEAD:
                await self.adopt_dead(queue)
            bucket = DEAD if state is State.DEAD else COMPLETED
            entries = await self.table.query(
                self.gs(queue, bucket), forward=False, limit=offset + limit
            )
        page = keys_of(entries[offset : offset + limit])
        found = await self.table.get_many(page)
        # The index is eventually consistent: skip items that moved on since it was read.
        stored = {State.SCHEDULED: "queued", State.QUEUED: "queued"}.get(state, state.value)
        items = [found[k] for k in page if k in found and found[k].get("state") == stored]
        return await self._records(items, now)

    async def stats(self) -> list[QueueStats]:
        """Counts per queue and state from the index, paused flags from SQS tags."""
        now = self.host.clock.now()
        queues = await self.table.queues()

        async def one(queue: str) -> QueueStats | None:
            await self.adopt_dead(queue)
            table = self.table
            ready, ready_due, parked, parked_due, active, completed, dead = await asyncio.gather(
                table.count(self.gs(queue, READY)),
                table.count(self.gs(queue, READY), high=now),
                table.count(self.gs(queue, PARKED)),
                table.count(self.gs(queue, PARKED), high=now),
                table.count(self.gs(queue, ACTIVE)),
                table.count(self.gs(queue, COMPLETED)),
                table.count(self.gs(queue, DEAD)),
            )
            oldest = await table.query(self.gs(queue, DEAD), limit=1)
            counts = {
                State.QUEUED: ready_due + parked_due,
                State.SCHEDULED: (ready - ready_due) + (parked - parked_due),
                State.ACTIVE: active,
                State.COMPLETED: completed,
                State.DEAD: dead,
            }
            paused = await self.host.queues.is_paused(queue, fresh=True)
            if not any(counts.values()) and not paused:
                return None
            oldest_dead = float(oldest[0]["gt"]) if oldest else None
            return QueueStats(queue, counts, paused, oldest_dead)

        found = await asyncio.gather(*(one(q) for q in queues))
        return [s for s in found if s is not None]

    # -- dead jobs and housekeeping ---------------------------------------------------------

    async def redrive(self, queue: str, job_ids: Sequence[str]) -> int:
        """Dead jobs back to queued: a new message each, then the item (attempts reset,
        failure log kept, redrive round counted)."""
        host = self.host
        now, real = host.clock.now(), time.time()
        found = await self.table.get_many([self.key(queue, i) for i in job_ids])
        dead = [item for item in found.values() if item.get("state") == "dead"]
        if not dead:
            return 0
        nonces = [new_nonce() for _ in dead]
        entries = [
            SendEntry(
                body=Envelope(
                    queue, str(i["id"]), n, int(i.get("pri", 0)), now, "re", str(i.get("msg"))
                ).encode(),
                group=host.group_id(queue, str(i["task"]), str(i["id"])),
                dedup=dedup_id(f"{i['id']}/{n}"),
                attributes={TASK_ATTRIBUTE: str(i["task"])},
            )
            for i, n in zip(dead, nonces, strict=True)
        ]
        codes = await host.queues.send(queue, entries)

        async def one(item: Item, nonce: str) -> bool:
            ok, _ = await self.table.update(
                str(item["k"]),
                "SET #state = :queued, #run_at = :now, #attempts = :zero, #progress = :zero, "
                "#redriven = if_not_exists(#redriven, :zero) + :one, #msg = :n, #gs = :gs, "
                "#gt = :now, #vis = :real REMOVE #finished, #rh, #rt",
                "#state = :dead AND #msg = :old",
                {
                    ":queued": "queued",
                    ":dead": "dead",
                    ":now": now,
                    ":zero": 0,
                    ":one": 1,
                    ":n": nonce,
                    ":gs": self.gs(queue, READY),
                    ":real": real,
                    ":old": item.get("msg"),
                },
            )
            return ok

        results = await asyncio.gather(
            *(
                self._limited(one(i, n))
                for i, n, c in zip(dead, nonces, codes, strict=True)
                if c is None
            )
        )
        host.wake()
        return sum(results)

    async def delete(self, queue: str, job_ids: Sequence[str]) -> int:
        """Delete jobs that are not running (their messages, if any, go stale)."""

        async def one(job_id: str) -> Item | None:
            ok, old = await self.table.delete(
                self.key(queue, job_id), "#state <> :active", {":active": "active"}
            )
            return old if ok else None

        olds = await asyncio.gather(*(self._limited(one(i)) for i in job_ids))
        gone = [o for o in olds if o is not None]
        await self._drop_blobs(gone)
        return len(gone)

    async def trim(self, queue: str, task: str, keep: int | None, older_than: float | None) -> int:
        """Delete completed jobs of ``task`` beyond the newest ``keep`` or older than
        ``older_than``."""
        entries = await self.table.query(
            self.gs(queue, COMPLETED), forward=False, limit=LIST_SCAN_LIMIT
        )
        mine = [e for e in entries if e.get("task") == task]
        victims: dict[str, Item] = {}
        if older_than is not None:
            victims.update({e["k"]: e for e in mine if float(e["gt"]) < older_than})
        if keep is not None:
            victims.update({e["k"]: e for e in mine[keep:]})
        if victims:
            await self.table.delete_many(list(victims))
            await self._drop_blobs(list(victims.values()))
        return len(victims)

    async def _drop_blobs(self, items: Sequence[Item]) -> None:
        claim = self.host.claim
        if claim is not None:
            refs = [str(i.get(k)) for i in items for k in ("pref", "rref") if i.get(k)]
            if refs:
                await claim.delete(refs)

    async def set_paused(self, queue: str) -> None:
        """Register ``queue`` so ``stats`` lists it even before it has jobs."""
        await self._register({queue}, self.host.clock.now())

    async def adopt_dead(self, queue: str, force: bool = False) -> int:
        """Record jobs whose messages SQS moved to the DLQ by itself (maxReceiveCount): they
        become dead with an attempt that says so, and the DLQ message is deleted.

        Conveyor never puts messages in the DLQ itself when it has a state table (dead jobs
        live in the table), so everything found there came from the redrive policy.
        Checked at most every ``dlq_check_interval`` seconds per queue.
        """
        host = self.host
        last = self._adopted_at.get(queue)
        recent = last is not None and time.monotonic() - last < host.options.dlq_check_interval
        if recent and not force:
            return 0
        self._adopted_at[queue] = time.monotonic()
        info = await host.queues.get(queue)
        if info.dlq_url is None:
            return 0
        adopted = 0
        for _ in range(ADOPT_ROUNDS):
            found = await host.queues.receive(queue, 10, 30, dlq=True)
            if not found:
                break
            actions = host.new_actions()
            for d in found:
                if d.envelope is None:
                    continue  # not ours; leave it for whoever put it there
                if await self._adopt_one(d, d.envelope, info.max_receive_count):
                    adopted += 1
                actions.ack(queue, d.receipt, dlq=True)
            await actions.flush()
        return adopted

    async def _adopt_one(self, d: Delivery, env: Envelope, max_receives: int | None) -> bool:
        item = await self.table.get(self.key(env.queue, env.id))
        if (
            item is None
            or item.get("msg") != env.nonce
            or item.get("state")
            not in (
                "queued",
                "active",
            )
        ):
            return False  # the job moved on (finished, redriven, deleted): the message is stale
        attempts = int(item.get("attempts", 0))
        number = attempts if item.get("state") == "active" else attempts + 1
        limit = max_receives or d.receive_count
        attempt = Attempt(
            number=number,
            outcome=Outcome.LOST,
            error_type="MaxReceiveCountExceeded",
            message=(
                f"SQS moved the message to the dead-letter queue after {limit} receives (the "
                "queue's redrive policy, Conveyor's crash-loop safety net): the workers that "
                "received it kept dying or stalling before they could settle it"
            ),
            ended_at=self.host.clock.now(),
            round=int(item.get("redriven", 0)),
        )
        ok, _ = await self.table.update(
            str(item["k"]),
            "SET #state = :dead, #finished = :now, #attempts = :num, "
            "#failures = list_append(#failures, :a), #gs = :gs, #gt = :now "
            "REMOVE #tok, #lexp, #rh, #rt",
            "#msg = :n AND #state = :state AND #attempts = :att",
            {
                ":dead": "dead",
                ":now": self.host.clock.now(),
                ":num": number,
                ":a": [json.dumps(attempt.to_dict())],
                ":gs": self.gs(env.queue, DEAD),
                ":n": env.nonce,
                ":state": item.get("state"),
                ":att": attempts,
            },
        )
        if ok:
            log.error("job %s/%s dead-lettered by SQS's redrive policy", env.queue, env.id)
        return ok


def dedup_id(text: str) -> str:
    """A FIFO deduplication id for ``text``: itself when SQS accepts it, else its hash."""
    if len(text) <= 128 and all(33 <= ord(c) <= 126 for c in text):
        return text
    return hashlib.sha256(text.encode()).hexdigest()


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
