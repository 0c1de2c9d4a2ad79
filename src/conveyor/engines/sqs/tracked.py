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
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from conveyor.engines.sqs.actions import Actions
from conveyor.engines.sqs.envelope import TASK_ATTRIBUTE, Delivery, Envelope, dedup_id, new_nonce
from conveyor.engines.sqs.options import SQS_MAX_VISIBILITY
from conveyor.engines.sqs.queues import SendEntry
from conveyor.engines.sqs.state import ACTIVE, COMPLETED, DEAD, GONE, PARKED, READY, Item
from conveyor.engines.sqs.tracked_admin import TrackedAdmin
from conveyor.errors import EngineUnavailable, PayloadTooLarge
from conveyor.records import (
    Complete,
    DeadLetter,
    JobRecord,
    Lease,
    NewJob,
    Release,
    Retry,
    Settlement,
)

log = logging.getLogger("conveyor.engines.sqs")

#: DynamoDB items hold at most 400 KiB; this much is left for the payload, the rest for
#: failures, logs and bookkeeping. Larger payloads need claim-check (S3).
PAYLOAD_LIMIT = 384 * 1024
#: Results above this size are stored in S3 with claim-check, or not stored (with a log line).
RESULT_LIMIT = 256 * 1024
#: A message that arrives before its state-table write is put back at least this long.
POSTPONE_SECONDS = 2.0
#: SQS may show a message up to a second late (whole-second timers); below this gap between
#: a message's expected and actual visibility the sweep does not re-send it.
VISIBILITY_TOLERANCE = 1.5
#: Margin kept under SQS's 12-hour visibility limit when hiding a message for a backoff.
VISIBILITY_MARGIN = 60.0
#: Items one sweep examines per bucket and queue.
SWEEP_BATCH = 25


class TrackedMode(TrackedAdmin):
    """Engine operations backed by the DynamoDB state table."""

    sweeps = True

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
                # The table refuses a repeated id for good; SQS's 5-minute dedup on the job id
                # would also drop the message of a job re-enqueued after its record was
                # deleted, leaving a record with no message. So each message is unique.
                dedup=dedup_id(f"{job.id}/{nonce}"),
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
        age = real - d.sent_at
        young = age < host.options.commit_grace
        if item is None or item.get("msg") != env.nonce:
            # No item yet, or it names another message: a write may be pending (this message
            # is new, or replaces the item's current one) or the message is a stale copy.
            pending = (item is None and env.kind == "new") or (
                item is not None and env.kind == "re" and env.prev == item.get("msg")
            )
            if pending and young:
                # Look again soon, then less and less often: a write that is late by now
                # has likely failed, and each look is a receive.
                wait = min(max(POSTPONE_SECONDS, age), host.options.commit_grace - age)
                actions.hold(d.queue, d.receipt, max(wait, POSTPONE_SECONDS))
            else:
                actions.ack(d.queue, d.receipt)
            return None
        state = item.get("state")
        if state in (COMPLETED, DEAD, GONE):
            actions.ack(d.queue, d.receipt)  # a redelivery of a job that finished or was deleted
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
            # When to look again: at the earliest entry not yet due, or at once if ``limit``
            # left due ones over. Due entries this sweep cannot act on (another worker took
            # them, or their message is receivable or gone) wait for the regular interval:
            # a receive or the DLQ check deals with them.
            left: list[float] = []
            for entry, expired in [(e, True) for e in active] + [(e, False) for e in parked]:
                due = float(entry["gt"])
                if due > now or len(leased) >= limit:
                    left.append(due)
                elif expired or entry.get("rt") is not None:
                    item = await self._take(entry, lease_seconds, worker, now, real, expired)
                    if isinstance(item, dict):
                        leased.append(item)
                elif float(entry.get("vis", 0.0)) > real + VISIBILITY_TOLERANCE:
                    resent |= await self._republish(queue, entry)
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
            ok, old = await self.table.bury(key, guard, base, now)
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
