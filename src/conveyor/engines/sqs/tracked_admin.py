"""Reading and housekeeping on the state table: lookups, listings, counts, redrive, purge,
retention, and recording jobs that SQS dead-lettered on its own (maxReceiveCount)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence

from conveyor.engines.sqs.envelope import TASK_ATTRIBUTE, Delivery, Envelope, dedup_id, new_nonce
from conveyor.engines.sqs.queues import SendEntry
from conveyor.engines.sqs.state import (
    ACTIVE,
    COMPLETED,
    DEAD,
    GONE,
    PARKED,
    READY,
    Item,
    keys_of,
)
from conveyor.engines.sqs.tracked_base import TrackedBase
from conveyor.records import Attempt, JobRecord, Outcome, QueueStats, State

log = logging.getLogger("conveyor.engines.sqs")

#: Index entries read at most for one listing of queued, scheduled or active jobs.
LIST_SCAN_LIMIT = 10_000
#: DLQ receives per check for messages SQS moved there on its own (maxReceiveCount).
ADOPT_ROUNDS = 10
#: Retention by count reads the newest ``keep`` index entries: at most this often per task.
TRIM_BY_COUNT_INTERVAL = 60.0


class TrackedAdmin(TrackedBase):
    """The state-table operations outside a job's run."""

    # -- reading ----------------------------------------------------------------------------

    async def get(self, queue: str, job_id: str) -> JobRecord | None:
        """One job's record (strongly consistent)."""
        host = self.host
        item = await self.table.get(self.key(queue, job_id))
        if item is None or item.get("state") == GONE:
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

        now = self.host.clock.now()

        async def one(job_id: str) -> Item | None:
            ok, old = await self.table.bury(
                self.key(queue, job_id),
                "attribute_exists(#k) AND #state <> :active AND #state <> :gone",
                {":active": "active", ":gone": GONE},
                now,
            )
            return old if ok else None

        olds = await asyncio.gather(*(self._limited(one(i)) for i in job_ids))
        gone = [o for o in olds if o is not None]
        await self._drop_blobs(gone)
        return len(gone)

    async def trim(self, queue: str, task: str, keep: int | None, older_than: float | None) -> int:
        """Delete completed jobs of ``task`` beyond the newest ``keep`` or older than
        ``older_than``.

        By age it reads only the index entries old enough to go. By count it must read the
        newest ``keep`` entries, so that part runs at most every ``TRIM_BY_COUNT_INTERVAL``
        seconds per queue and task (workers call ``trim`` every few seconds)."""
        victims: dict[str, Item] = {}
        bucket = self.gs(queue, COMPLETED)
        if older_than is not None:
            old = await self.table.query(bucket, high=older_than, limit=LIST_SCAN_LIMIT)
            victims.update(
                {e["k"]: e for e in old if e.get("task") == task and float(e["gt"]) < older_than}
            )
        last = self._trimmed_at.get((queue, task))
        if keep is not None and (last is None or time.monotonic() - last >= TRIM_BY_COUNT_INTERVAL):
            self._trimmed_at[(queue, task)] = time.monotonic()
            newest = await self.table.query(bucket, forward=False, limit=LIST_SCAN_LIMIT)
            mine = [e for e in newest if e.get("task") == task]
            victims.update({e["k"]: e for e in mine[keep:]})
        if victims:
            await self.table.bury_many(list(victims.values()), self.host.clock.now())
            await self._drop_blobs(list(victims.values()))
        return len(victims)

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
                outcome = await self._adopt_one(d, d.envelope, info.max_receive_count)
                adopted += outcome == "adopted"
                if outcome != "later":
                    actions.ack(queue, d.receipt, dlq=True)
            await actions.flush()
        return adopted

    async def _adopt_one(self, d: Delivery, env: Envelope, max_receives: int | None) -> str:
        """``adopted``, ``stale`` (the job moved on: finished, redriven, deleted) or ``later``
        (a worker still holds a live lease on the job: look again next time)."""
        item = await self.table.get(self.key(env.queue, env.id))
        if item is None or item.get("msg") != env.nonce or item.get("state") == GONE:
            return "stale"
        if item.get("state") not in ("queued", "active"):
            return "stale"
        if item.get("state") == "active" and float(item.get("lexp", 0.0)) > self.host.clock.now():
            return "later"
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
        if not ok:
            return "later"
        log.error("job %s/%s dead-lettered by SQS's redrive policy", env.queue, env.id)
        return "adopted"
