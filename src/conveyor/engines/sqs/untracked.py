"""The SQS engine without a state table ("delivery-only"): the message *is* the job.

Everything Conveyor knows about a job travels in its message: payload, options, attempts
made and the failure log. SQS messages cannot be changed, so a retry or a release sends a
new message carrying the updated history and then deletes the old one, and dead-lettering
sends the job with its whole failure log to the DLQ. Between the send and the delete a crash
leaves both messages: the job runs once more (at-least-once, never lost).

What this mode cannot do, and says so with :class:`StateTableRequired`: look up a job that
is queued, running or completed, keep results or progress, refuse a second job with the same
id on a standard queue, or refuse a settlement from a worker whose lease expired (SQS
accepts a delete with an old receipt handle). Dead jobs *can* be listed, shown, redriven and
purged: they are read from the DLQ (received and shown again, up to ``dlq_scan_limit``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from conveyor.engines.sqs.actions import Actions
from conveyor.engines.sqs.envelope import (
    DEAD_MARK,
    TASK_ATTRIBUTE,
    Delivery,
    Envelope,
    dedup_id,
    new_nonce,
)
from conveyor.engines.sqs.queues import SendEntry
from conveyor.errors import ConfigurationError, EngineUnavailable, PayloadTooLarge
from conveyor.records import (
    Attempt,
    Complete,
    DeadLetter,
    JobRecord,
    Lease,
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

#: Seconds a DLQ listing hides the messages it read, so it can page through the DLQ.
DLQ_SCAN_VISIBILITY = 30.0
#: A first receive this long before the job's due time was an early delivery (parked), not
#: an attempt; allows for clock differences between the host and SQS.
PARK_TOLERANCE = 1.0
#: When the DLQ refuses a dead job, its message shows again after this long (and the job is
#: dead-lettered again then: its attempts are used up).
DLQ_RETRY_SECONDS = 60.0


class StateTableRequired(ConfigurationError):
    """The operation needs the DynamoDB state table (``state_table=`` in the SQS URL)."""


@dataclass
class _Held:
    delivery: Delivery
    envelope: Envelope
    record: JobRecord


@dataclass
class _Swap:
    """A message to replace: send ``envelope`` (to the DLQ if ``dlq``), then delete the
    delivered one; if the send fails, hide the delivered one ``fallback`` seconds instead."""

    delivery: Delivery
    envelope: Envelope
    dlq: bool = False
    fallback: float = 0.0


class DeliveryOnlyMode:
    """Engine operations with SQS alone."""

    sweeps = False

    def __init__(self, host: SQSEngine) -> None:
        self.host = host
        self._held: dict[str, _Held] = {}

    async def connect(self) -> None:
        """Nothing to prepare."""

    def _refuse(self, what: str) -> StateTableRequired:
        return StateTableRequired(
            f"{what} needs the SQS engine's state table: SQS itself cannot look messages up, "
            "keep results or list jobs. Add state_table=<DynamoDB table> (and create=true) to "
            "the engine URL; see docs/aws.md"
        )

    # -- enqueue ----------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[bool]:
        """Send each job as a message carrying everything (no id check: see the module doc)."""
        host = self.host
        now = host.clock.now()
        by_queue: dict[str, list[SendEntry]] = {}
        for job in jobs:
            delay = max(0.0, job.run_at - now)
            host.check_delay(delay)
            info = await host.queues.get(job.queue)
            envelope = Envelope(
                job.queue,
                job.id,
                new_nonce(),
                job.priority,
                job.run_at,
                task=job.task,
                payload=job.payload,
                created_at=job.created_at,
                options=dict(job.options),
            )
            claim = host.claim
            if claim is not None and len(job.payload) > host.options.claim_check_threshold:
                envelope.payload_ref = await claim.put(
                    claim.key(job.queue, job.id, "payload"), job.payload
                )
                envelope.payload = None
            body = envelope.encode()
            if len(body.encode()) > info.max_message_bytes:
                overhead = len(body.encode()) - len(job.payload)
                raise PayloadTooLarge(
                    len(job.payload), max(0, info.max_message_bytes - overhead), job.task
                )
            by_queue.setdefault(job.queue, []).append(
                SendEntry(
                    body=body,
                    delay=0 if info.fifo else min(math.ceil(delay), 900),
                    group=host.group_id(job.queue, job.task, job.id),
                    dedup=dedup_id(job.id),
                    attributes={TASK_ATTRIBUTE: job.task},
                )
            )
            if delay > 0:
                host.note_due(job.queue, job.run_at)
        for queue, entries in by_queue.items():
            codes = await host.queues.send(queue, entries)
            failed = [c for c in codes if c]
            if failed:
                raise EngineUnavailable(f"SQS refused {len(failed)} message(s): {failed[:5]}")
        # SQS cannot say whether a job with this id exists: every enqueue stores a job (a FIFO
        # queue drops a repeated id within 5 minutes, silently).
        return [True] * len(jobs)

    # -- leasing ----------------------------------------------------------------------------

    async def lease(
        self, deliveries: Sequence[Delivery], lease_seconds: float, worker: str
    ) -> list[tuple[JobRecord, Delivery | None]]:
        """Leases from received messages; early ones are hidden until due."""
        host = self.host
        actions = host.new_actions()
        swaps: list[_Swap] = []
        out: list[tuple[JobRecord, Delivery | None]] = []
        now = host.clock.now()
        for d in deliveries:
            env = d.envelope
            if env is None or env.task is None:
                await host.poison(d, actions)
                continue
            if env.run_at > now:
                await self._park(d, env, now, actions, swaps)
                continue
            parked_first = (
                d.receive_count > 1
                and d.first_receive_at is not None
                and d.first_receive_at < env.run_at - PARK_TOLERANCE
            )
            token = os.urandom(12).hex()
            payload = env.payload
            if payload is None and env.payload_ref and host.claim is not None:
                payload = await host.claim.get(env.payload_ref)
            record = JobRecord(
                queue=env.queue,
                id=env.id,
                task=env.task,
                payload=payload or b"",
                state=State.ACTIVE,
                priority=env.priority,
                run_at=env.run_at,
                created_at=env.created_at,
                attempts=env.attempts + d.receive_count - (1 if parked_first else 0),
                options=dict(env.options),
                started_at=now,
                failures=list(env.failures),
                lease_token=token,
                lease_expires_at=now + lease_seconds,
                worker=worker,
            )
            self._held[token] = _Held(d, env, record)
            out.append((record, d))
        await self._swap(swaps, actions)
        await actions.flush()
        return out

    async def _park(
        self, d: Delivery, env: Envelope, now: float, actions: Actions, swaps: list[_Swap]
    ) -> None:
        """Hide an early message until due; a second early receive re-sends it instead, so
        SQS's receive count keeps counting attempts only."""
        seconds = min(env.run_at - now, self.host.options.max_delay)
        if d.receive_count <= 1 or (await self.host.queues.get(d.queue)).fifo:
            actions.hold(d.queue, d.receipt, seconds)
        else:
            fresh = replace(env, nonce=new_nonce(), kind="re", prev=env.nonce)
            swaps.append(_Swap(d, fresh, fallback=seconds))
        self.host.note_due(env.queue, env.run_at)

    async def sweep(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> tuple[list[JobRecord], bool]:
        """Nothing to sweep: SQS's timers are the only schedule."""
        return [], False

    async def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Return kept messages: re-sent (receive count reset), or shown again on FIFO."""
        actions = self.host.new_actions()
        swaps: list[_Swap] = []
        for d in deliveries:
            info = await self.host.queues.get(d.queue)
            if d.envelope is None or info.fifo:
                actions.hold(d.queue, d.receipt, 0)
            else:
                swaps.append(_Swap(d, replace(d.envelope, nonce=new_nonce())))
        await self._swap(swaps, actions)
        await actions.flush()

    async def _swap(self, swaps: Sequence[_Swap], actions: Actions) -> None:
        """Send replacement messages, 10 per request per queue; then (through ``actions``)
        delete the messages they replace. Between the two a crash leaves both: the job runs
        once more, which at-least-once delivery allows; it is never lost."""
        host = self.host
        groups: dict[tuple[str, bool], list[_Swap]] = {}
        for swap in swaps:
            groups.setdefault((swap.delivery.queue, swap.dlq), []).append(swap)
        for (queue, dlq), group in groups.items():
            info = await host.queues.get(queue)
            entries = []
            for swap in group:
                env = swap.envelope
                delay = 0.0 if dlq else max(0.0, env.run_at - host.clock.now())
                attributes = {TASK_ATTRIBUTE: env.task or ""}
                if dlq:
                    attributes[DEAD_MARK] = "1"
                entries.append(
                    SendEntry(
                        body=_fit(env, info.max_message_bytes),
                        delay=min(math.ceil(delay), 900),
                        group=host.group_id(queue, env.task or "", env.id),
                        dedup=dedup_id(f"{env.id}/{env.nonce}"),
                        attributes=attributes,
                    )
                )
            codes = await host.queues.send(queue, entries, dlq=dlq)
            for swap, code in zip(group, codes, strict=True):
                if code is None:
                    actions.ack(queue, swap.delivery.receipt)
                else:
                    log.error(
                        "sending job %s/%s %sfailed (%s); its message shows again in %.0fs",
                        queue,
                        swap.envelope.id,
                        "to the DLQ " if dlq else "",
                        code,
                        swap.fallback,
                    )
                    actions.hold(queue, swap.delivery.receipt, swap.fallback)

    # -- running jobs -----------------------------------------------------------------------

    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[bool]:
        """Push the messages' visibility; ``False`` where SQS refuses (the lease is lost)."""
        held = [self._held.get(lease.token) for lease in leases]
        ok = [h is not None for h in held]
        by_queue: dict[str, list[int]] = {}
        for i, h in enumerate(held):
            if h is not None:
                by_queue.setdefault(h.delivery.queue, []).append(i)

        async def one(queue: str, indexes: list[int]) -> None:
            changes = [(held[i].delivery.receipt, lease_seconds) for i in indexes]  # type: ignore[union-attr]
            codes = await self.host.queues.change_visibility(queue, changes)
            for i, code in zip(indexes, codes, strict=True):
                if code is not None:
                    ok[i] = False
                    self._held.pop(leases[i].token, None)

        await asyncio.gather(*(one(q, ix) for q, ix in by_queue.items()))
        return ok

    async def report(self, lease: Lease, progress: float | None, line: str | None) -> bool:
        """Progress and logs are not stored without a state table; ``True`` while leased."""
        return lease.token in self._held

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply settlements: delete, re-send with history, or send to the DLQ."""
        actions = self.host.new_actions()
        swaps: list[_Swap] = []
        results = [await self._settle_one(s, actions, swaps) for s in settlements]
        await self._swap(swaps, actions)
        await actions.flush()
        return results

    async def _settle_one(self, s: Settlement, actions: Actions, swaps: list[_Swap]) -> bool:
        host = self.host
        held = self._held.pop(s.lease.token, None)
        if held is None:
            return False
        d, env, record = held.delivery, held.envelope, held.record
        fifo = (await host.queues.get(d.queue)).fifo
        if isinstance(s, Complete):
            actions.ack(d.queue, d.receipt)
            if env.payload_ref and host.claim is not None:
                await host.claim.delete([env.payload_ref])
            host.requests.jobs_finished += 1
            return True
        if isinstance(s, Retry):
            delay = min(max(0.0, s.run_at - host.clock.now()), host.options.max_delay)
            if fifo:
                # Re-sending would move the job behind its group: keep its place instead (the
                # attempt's failure record is not carried; the last one is, to the DLQ).
                actions.hold(d.queue, d.receipt, delay)
                return True
            retried = replace(
                env,
                nonce=new_nonce(),
                kind="re",
                prev=env.nonce,
                run_at=host.clock.now() + delay,
                attempts=record.attempts,
                failures=[*env.failures, s.attempt],
            )
            # If the send fails the old message is hidden for the backoff: the job is kept,
            # this attempt's record is not.
            swaps.append(_Swap(d, retried, fallback=delay))
            return True
        if isinstance(s, DeadLetter):
            dead = replace(
                env,
                nonce=new_nonce(),
                attempts=record.attempts,
                failures=[*env.failures, s.attempt],
                finished_at=host.clock.now(),
            )
            swaps.append(_Swap(d, dead, dlq=True, fallback=DLQ_RETRY_SECONDS))
            host.requests.jobs_finished += 1
            return True
        if isinstance(s, Release):
            if fifo:
                actions.hold(d.queue, d.receipt, 0)
            else:
                back = replace(env, nonce=new_nonce(), attempts=max(record.attempts - 1, 0))
                swaps.append(_Swap(d, back))
            return True
        raise TypeError(f"not a settlement: {s!r}")

    # -- reading (dead jobs only) -----------------------------------------------------------

    async def get(self, queue: str, job_id: str) -> JobRecord | None:
        """A dead job from the DLQ; any other job cannot be looked up."""
        found = await self._dead(queue, {job_id})
        if found:
            return found[0][1]
        raise self._refuse(f"looking up job {job_id!r} (not in the DLQ of {queue!r})")

    async def list_jobs(self, queue: str, state: State, limit: int, offset: int) -> list[JobRecord]:
        """Dead jobs from the DLQ, newest first; other states cannot be listed."""
        if state is not State.DEAD:
            raise self._refuse(f"listing {state.value} jobs")
        records = [r for _, r in await self._dead(queue, None)]
        records.sort(key=lambda r: r.finished_at or 0.0, reverse=True)
        return records[offset : offset + limit]

    async def stats(self) -> list[QueueStats]:
        """Approximate counts from SQS's queue attributes (completed jobs are not kept)."""
        out = []
        for queue in await self.host.queues.known():
            n = await self.host.queues.counts(queue)
            counts = {
                State.QUEUED: n["ApproximateNumberOfMessages"],
                State.SCHEDULED: n["ApproximateNumberOfMessagesDelayed"],
                # Running jobs and early deliveries hidden until due look alike to SQS.
                State.ACTIVE: n["ApproximateNumberOfMessagesNotVisible"],
                State.COMPLETED: 0,
                State.DEAD: n.get("dlq_ApproximateNumberOfMessages", 0)
                + n.get("dlq_ApproximateNumberOfMessagesNotVisible", 0),
            }
            paused = await self.host.queues.is_paused(queue, fresh=True)
            out.append(QueueStats(queue, counts, paused, None))
        return out

    async def redrive(self, queue: str, job_ids: Sequence[str]) -> int:
        """DLQ -> queue: receive, send (attempts reset, history kept), delete; in batches."""
        host = self.host
        wanted = set(job_ids)
        found = await self._dead(queue, wanted, keep_hidden=True)
        entries, receipts = [], []
        for d, record in found:
            env = d.envelope
            if env is None or env.task is None:
                continue
            back = replace(
                env,
                nonce=new_nonce(),
                kind="re",
                run_at=host.clock.now(),
                attempts=0,
                failures=record.failures,
                finished_at=None,
                options={**env.options, "redriven": int(env.options.get("redriven", 0)) + 1},
            )
            entries.append(
                SendEntry(
                    body=back.encode(),
                    group=host.group_id(queue, env.task, env.id),
                    dedup=dedup_id(f"{env.id}/{back.nonce}"),
                    attributes={TASK_ATTRIBUTE: env.task},
                )
            )
            receipts.append(d.receipt)
        codes = await host.queues.send(queue, entries)
        sent = [r for r, c in zip(receipts, codes, strict=True) if c is None]
        await host.queues.delete(queue, sent, dlq=True)
        unsent = [(d.receipt, 0.0) for d, _ in found if d.receipt not in sent]
        await host.queues.change_visibility(queue, unsent, dlq=True)
        host.wake()
        return len(sent)

    async def delete(self, queue: str, job_ids: Sequence[str]) -> int:
        """Delete dead jobs from the DLQ (others cannot be found without a state table)."""
        found = await self._dead(queue, set(job_ids), keep_hidden=True)
        codes = await self.host.queues.delete(queue, [d.receipt for d, _ in found], dlq=True)
        return sum(1 for c in codes if c is None)

    async def trim(self, queue: str, task: str, keep: int | None, older_than: float | None) -> int:
        """Nothing to trim: completed jobs are not kept."""
        return 0

    async def set_paused(self, queue: str) -> None:
        """Nothing to record beyond the queue tag."""

    async def adopt_dead(self, queue: str, force: bool = False) -> int:
        """Nothing to adopt: the DLQ is read directly."""
        return 0

    async def _dead(
        self, queue: str, ids: set[str] | None, keep_hidden: bool = False
    ) -> list[tuple[Delivery, JobRecord]]:
        """Read the DLQ (up to ``dlq_scan_limit`` messages). Matching messages stay hidden
        when ``keep_hidden`` (the caller acts on them); all others are shown again."""
        host = self.host
        info = await host.queues.get(queue)
        seen: list[Delivery] = []
        while len(seen) < host.options.dlq_scan_limit:
            batch = await host.queues.receive(queue, 10, DLQ_SCAN_VISIBILITY, dlq=True)
            if not batch:
                break
            seen.extend(batch)
        matches: list[tuple[Delivery, JobRecord]] = []
        for d in seen:
            record = await self._dead_record(d, info.max_receive_count)
            if ids is None or record.id in ids:
                matches.append((d, record))
        shown_again = [d for d in seen if not (keep_hidden and any(d is m for m, _ in matches))]
        await host.queues.change_visibility(queue, [(d.receipt, 0) for d in shown_again], dlq=True)
        return matches

    async def _dead_record(self, d: Delivery, max_receives: int | None) -> JobRecord:
        env = d.envelope
        if env is None or env.task is None:
            attempt = Attempt(1, Outcome.INVALID, "NotAConveyorMessage", d.problem)
            return JobRecord(
                d.queue,
                d.message_id,
                "?",
                d.body.encode(),
                State.DEAD,
                attempts=1,
                failures=[attempt],
            )
        payload = env.payload
        if payload is None and env.payload_ref and self.host.claim is not None:
            payload = await self.host.claim.get(env.payload_ref)
        failures, attempts = list(env.failures), env.attempts
        if not d.dead_mark:
            # SQS moved it here itself: its redrive policy saw too many receives.
            receives = max_receives or d.receive_count
            attempts = env.attempts + receives
            failures.append(
                Attempt(
                    number=attempts,
                    outcome=Outcome.LOST,
                    error_type="MaxReceiveCountExceeded",
                    message=(
                        f"SQS moved the message to the dead-letter queue after {receives} "
                        "receives (the queue's redrive policy, Conveyor's crash-loop safety "
                        "net): the workers that received it kept dying or stalling"
                    ),
                    round=int(env.options.get("redriven", 0)),
                )
            )
        return JobRecord(
            queue=env.queue,
            id=env.id,
            task=env.task,
            payload=payload or b"",
            state=State.DEAD,
            priority=env.priority,
            run_at=env.run_at,
            created_at=env.created_at,
            attempts=attempts,
            options=dict(env.options),
            finished_at=env.finished_at if env.finished_at is not None else d.sent_at,
            failures=failures,
        )


def _fit(envelope: Envelope, limit: int) -> str:
    """The envelope's body within SQS's size limit: oldest tracebacks go first, then the
    oldest attempts, so the newest history always travels."""
    body = envelope.encode()
    failures = list(envelope.failures)
    i = 0
    while len(body.encode()) > limit and i < len(failures):
        if failures[i].traceback:
            failures[i] = replace(failures[i], traceback="(dropped: SQS message size limit)")
        i += 1
        body = replace(envelope, failures=failures).encode()
    while len(body.encode()) > limit and len(failures) > 1:
        failures.pop(0)
        body = replace(envelope, failures=failures).encode()
    return body
