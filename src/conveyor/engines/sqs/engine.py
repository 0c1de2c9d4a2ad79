"""``SQSEngine``: Conveyor's lease model on Amazon SQS.

SQS carries delivery. A reserve is a ``ReceiveMessage`` (10 per request); the visibility
timeout is the lease, pushed forward by heartbeats with ``ChangeMessageVisibility``; a
backoff hides the failed message for the backoff (also ``ChangeMessageVisibility``, which
unlike ``DelaySeconds`` reaches past 15 minutes, up to 12 hours); completion deletes it. An
idle worker long-polls. The queue's redrive policy (``maxReceiveCount``) stays on as the
safety net for crash loops.

What SQS cannot do (look jobs up, keep results, refuse duplicate ids, refuse a stale
settlement, count exactly) needs a record per job. Two modes:

* **state table** (``state_table=<DynamoDB table>``): every job has an item changed by
  conditional writes; the full engine contract holds. See :mod:`.tracked`.
* **delivery-only** (no table): the message carries the whole job; lookups of queued,
  running or completed jobs raise :class:`StateTableRequired`. See :mod:`.untracked`.

Every AWS request is counted (:meth:`SQSEngine.request_stats`), since SQS bills per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from conveyor.clock import Clock
from conveyor.engines.sqs.actions import Actions, ExternalBatch
from conveyor.engines.sqs.aws import Clients, RequestCounter, RequestStats
from conveyor.engines.sqs.claimcheck import ClaimCheck
from conveyor.engines.sqs.envelope import DEAD_MARK, Delivery, dedup_id
from conveyor.engines.sqs.options import SQS_MAX_VISIBILITY, SQSOptions
from conveyor.engines.sqs.prefetch import Prefetch
from conveyor.engines.sqs.queues import BATCH, Queues, SendEntry
from conveyor.engines.sqs.tracked import PAYLOAD_LIMIT, TrackedMode
from conveyor.engines.sqs.untracked import DeliveryOnlyMode
from conveyor.errors import ConfigurationError
from conveyor.records import (
    JobRecord,
    Lease,
    NewJob,
    QueueStats,
    Release,
    Retry,
    Settlement,
    State,
)

log = logging.getLogger("conveyor.engines.sqs")

#: Lease length assumed for messages a long poll receives before the first reserve says.
DEFAULT_LEASE_SECONDS = 30.0
#: Room left in an SQS message for the envelope around the payload (delivery-only mode).
ENVELOPE_HEADROOM = 16 * 1024
#: After a long poll came back empty, a receive within this many seconds is skipped.
QUIET_WINDOW = 0.05
#: Kept messages older than this get their visibility renewed when they are started.
REFRESH_AFTER = 1.0
#: How often kept messages are checked against ``prefetch_hold``.
TEND_INTERVAL = 0.5
#: While a Lambda batch runs, the worker's idle wait is this short.
EXTERNAL_POLL = 0.01
#: Pause after a failed long poll, so an outage does not spin.
POLL_ERROR_PAUSE = 1.0
#: Seconds ``close`` lets in-flight long polls finish (their messages are given back).
CLOSE_GRACE = 2.0
#: How often a busy engine logs its request count and requests per job.
REQUEST_LOG_INTERVAL = 300.0


class SQSEngine:
    """Jobs on SQS (plus DynamoDB for job state, plus S3 for large payloads, both optional).

    URL: ``sqs://?region=eu-west-1&prefix=myapp-&state_table=conveyor-jobs&create=true``;
    every option is described in docs/aws.md.
    """

    max_payload_bytes: int | None

    def __init__(self, options: SQSOptions, clock: Clock) -> None:
        self.options = options
        self.clock = clock
        self.requests = RequestCounter()
        self.clients = Clients(options, self.requests)
        self.queues = Queues(options, self.clients)
        self.claim = ClaimCheck(options, self.clients) if options.claim_check else None
        self.mode: TrackedMode | DeliveryOnlyMode = (
            TrackedMode(self) if options.tracked else DeliveryOnlyMode(self)
        )
        if self.claim is not None:
            self.max_payload_bytes = None
        elif options.tracked:
            self.max_payload_bytes = PAYLOAD_LIMIT
        else:
            self.max_payload_bytes = options.max_message_bytes - ENVELOPE_HEADROOM
        self._prefetch = Prefetch(options.is_fifo)
        self._lease_seconds = DEFAULT_LEASE_SECONDS
        self._polls: dict[str, asyncio.Task[int]] = {}
        self._quiet: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._next_due: dict[str, float] = {}
        self._swept_at: dict[str, float] = {}
        self._groups: dict[str, tuple[str, str]] = {}
        self._settling: set[str] = set()
        self._external: ExternalBatch | None = None
        self._tender: asyncio.Task[None] | None = None
        self._connected = False

    @classmethod
    def from_url(cls, url: str, clock: Clock) -> SQSEngine:
        """Build from an ``sqs://`` URL (no network access until :meth:`connect`)."""
        return cls(SQSOptions.from_url(url), clock)

    # -- life cycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the AWS clients and check (or create) the state table and claim-check bucket.
        Queues are looked up (or created) on first use."""
        if self._connected:
            return
        await self.clients.open()
        try:
            await self.mode.connect()
            if self.claim is not None:
                await self.claim.ensure_bucket()
        except BaseException:
            await self.clients.close()
            raise
        self._tender = asyncio.create_task(self._tend(), name="conveyor-sqs-prefetch")
        self._connected = True

    async def close(self) -> None:
        """Give kept messages back, stop long polls and close the clients."""
        if not self._connected:
            return
        self._connected = False
        if self._tender is not None:
            self._tender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tender
        polls = [p for p in self._polls.values() if not p.done()]
        if polls:
            _, pending = await asyncio.wait(polls, timeout=CLOSE_GRACE)
            for p in pending:
                p.cancel()  # its messages, if any, show again after their visibility timeout
            await asyncio.gather(*pending, return_exceptions=True)
        kept = self._prefetch.clear()
        if kept:
            with contextlib.suppress(Exception):
                await self.mode.give_back(kept)
        stats = self.request_stats()
        if stats.total:
            log.info("SQS engine closed: %s", stats.summary())
        await self.clients.close()

    # -- Engine: producers ------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[bool]:
        """Store jobs: one message each (sent 10 per request) and, with a state table, one
        conditional write each (``False`` where the id exists)."""
        if not jobs:
            return []
        created = await self.mode.enqueue(jobs)
        self.wake()
        return created

    # -- Engine: workers --------------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        """Receive (10 per request), lease what is due, highest priority first among the
        messages in hand; then sweep the state table for jobs due by the app clock that SQS
        still hides."""
        self._lease_seconds = lease_seconds
        self._changed.clear()  # a change from now on wakes the next wait()
        if limit < 1:
            return []
        if self._external is not None:
            picked = self._external.take(limit)
            return self._leased(await self.mode.lease(picked, lease_seconds, worker))
        names = [q for q in queues if not await self.queues.is_paused(q)]
        if not names:
            return []
        out: list[JobRecord] = []
        if self._prefetch.count(names) < limit:
            await self._receive(names, lease_seconds)
        out += await self._lease_kept(names, limit, lease_seconds, worker)
        if len(out) < limit and self.mode.sweeps:
            due = [q for q in names if self._sweep_due(q)]
            if due:
                swept, resent = await self.mode.sweep(due, limit - len(out), lease_seconds, worker)
                out += self._leased([(r, None) for r in swept])
                if resent and len(out) < limit:
                    await self._receive(names, lease_seconds, force=True)
                    out += await self._lease_kept(names, limit - len(out), lease_seconds, worker)
        out.sort(key=lambda r: (-r.priority, r.run_at))
        return out

    async def _receive(
        self, names: Sequence[str], lease_seconds: float, force: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()

        async def one(queue: str) -> None:
            # A long poll that just came back empty needs no second look right after it (the
            # worker's loop is: reserve, wait, reserve...). A long poll still in flight is no
            # reason to skip: a burst worker must not decide "nothing to do" on a poll whose
            # answer has not come yet.
            if not force and loop.time() - self._quiet.get(queue, -math.inf) < QUIET_WINDOW:
                return
            self._prefetch.add(await self.queues.receive(queue, BATCH, lease_seconds))

        await asyncio.gather(*(one(q) for q in names))

    async def _lease_kept(
        self, names: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        out: list[JobRecord] = []
        while len(out) < limit:
            busy = set(self._groups.values())
            picked = self._prefetch.take(names, limit - len(out), busy)
            if not picked:
                break
            picked = await self._renew(picked, lease_seconds)
            out += self._leased(await self.mode.lease(picked, lease_seconds, worker))
        return out

    async def _renew(self, picked: list[Delivery], lease_seconds: float) -> list[Delivery]:
        """Kept messages' visibility ran since their receive: renew it before starting them."""
        old = [d for d in picked if time.monotonic() - d.received_at > REFRESH_AFTER]
        gone: set[str] = set()
        by_queue: dict[str, list[Delivery]] = {}
        for d in old:
            by_queue.setdefault(d.queue, []).append(d)
        for queue, group in by_queue.items():
            codes = await self.queues.change_visibility(
                queue, [(d.receipt, lease_seconds) for d in group]
            )
            gone |= {d.receipt for d, c in zip(group, codes, strict=True) if c is not None}
        return [d for d in picked if d.receipt not in gone]

    def _leased(self, pairs: Sequence[tuple[JobRecord, Delivery | None]]) -> list[JobRecord]:
        for record, delivery in pairs:
            self.requests.attempts += 1
            if record.lease_expires_at is not None:
                self.note_due(record.queue, record.lease_expires_at)
            if delivery is not None and self.options.is_fifo(record.queue) and record.lease_token:
                self._groups[record.lease_token] = (record.queue, delivery.group or "")
        return [record for record, _ in pairs]

    def _sweep_due(self, queue: str) -> bool:
        due, last = self._next_due.get(queue), self._swept_at.get(queue)
        if due is None or last is None:
            return True
        return self.clock.now() >= due or time.monotonic() - last >= self.options.sweep_interval

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Long-poll the queues (up to ``wait_seconds``, whole seconds as SQS counts them);
        return early when a message arrives, when this engine changed something since the
        last reserve, or when a job the engine knows of comes due. Messages received are
        kept for the next reserve."""
        if self._external is not None:
            await asyncio.sleep(min(timeout, EXTERNAL_POLL))
            return
        names = [q for q in queues if not await self.queues.is_paused(q)]
        if self._changed.is_set() or (names and self._prefetch.count(names)):
            return
        loop = asyncio.get_running_loop()
        due = min((self._next_due.get(q, math.inf) for q in names), default=math.inf)
        timeout = max(0.0, min(timeout, due - self.clock.now()))
        deadline = loop.time() + timeout
        seconds = int(min(timeout, self.options.wait_seconds))
        changed: asyncio.Task[bool] = asyncio.create_task(self._changed.wait())
        polls = [self._poll(q, seconds) for q in names] if seconds >= 1 else []
        pending: set[asyncio.Future[Any]] = {changed, *polls}
        try:
            while pending and (remaining := deadline - loop.time()) > 0:
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if changed in done or any(_got(p) for p in done):
                    return
                if polls and all(p.done() for p in polls):
                    return  # every long poll came back empty
        finally:
            changed.cancel()

    def _poll(self, queue: str, seconds: int) -> asyncio.Task[int]:
        task = self._polls.get(queue)
        if task is None or task.done():
            task = asyncio.create_task(self._poll_once(queue, seconds), name=f"sqs-poll-{queue}")
            self._polls[queue] = task
        return task

    async def _poll_once(self, queue: str, seconds: int) -> int:
        try:
            found = await self.queues.receive(queue, BATCH, self._lease_seconds, wait=seconds)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("long poll of queue %s failed: %s", queue, exc)
            await asyncio.sleep(POLL_ERROR_PAUSE)
            return 0
        self._prefetch.add(found)
        if not found:
            self._quiet[queue] = asyncio.get_running_loop().time()
        return len(found)

    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[bool]:
        """Heartbeat: push lease expiries (table) and visibility timeouts (SQS, batched)."""
        if not leases:
            return []
        # A lease this engine is settling right now is not lost: its settlement (a few
        # round trips here, not one local transaction) is on its way.
        live = [lease for lease in leases if lease.token not in self._settling]
        alive = dict(zip(live, await self.mode.extend(live, lease_seconds), strict=True))
        for lease, ok in alive.items():
            if not ok:
                await self._release_group(lease.token, give_back=True)
        return [alive.get(lease, True) for lease in leases]

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply settlements: state first, then the messages (deletes and visibility changes
        batched 10 per request)."""
        if not settlements:
            return []
        tokens = {s.lease.token for s in settlements}
        self._settling |= tokens
        try:
            results = await self.mode.settle(settlements)
        finally:
            self._settling -= tokens
        for s in settlements:
            # After a retry or release of a FIFO head, the rest of its group must wait for it.
            await self._release_group(s.lease.token, give_back=isinstance(s, Retry | Release))
        self._changed.set()  # a waiting burst worker re-checks at once (nothing new in SQS)
        return results

    async def _release_group(self, token: str, give_back: bool) -> None:
        group = self._groups.pop(token, None)
        if group is not None and give_back:
            kept = self._prefetch.group(*group)
            if kept:
                actions = self.new_actions()
                for d in kept:
                    actions.hold(d.queue, d.receipt, 0)
                await actions.flush()

    async def report(
        self, lease: Lease, progress: float | None = None, log: str | None = None
    ) -> bool:
        """Store progress and/or a log line (state table only; delivery-only keeps none)."""
        return await self.mode.report(lease, progress, log)

    # -- Engine: inspection and housekeeping ------------------------------------------------

    async def get(self, queue: str, job_id: str) -> JobRecord | None:
        """One job's record (delivery-only: dead jobs only)."""
        return await self.mode.get(queue, job_id)

    async def list_jobs(
        self, queue: str, state: State, limit: int = 100, offset: int = 0
    ) -> list[JobRecord]:
        """Jobs of ``queue`` in ``state`` (delivery-only: dead jobs only)."""
        return await self.mode.list_jobs(queue, state, limit, offset)

    async def stats(self) -> list[QueueStats]:
        """Counts per queue: exact from the state table, approximate from SQS without one."""
        return await self.mode.stats()

    async def redrive(self, queue: str, job_ids: Sequence[str]) -> int:
        """Dead jobs back to their queue, attempts reset, failure log kept."""
        return await self.mode.redrive(queue, job_ids) if job_ids else 0

    async def delete(self, queue: str, job_ids: Sequence[str]) -> int:
        """Delete jobs that are not running."""
        return await self.mode.delete(queue, job_ids) if job_ids else 0

    async def trim(self, queue: str, task: str, keep: int | None, older_than: float | None) -> int:
        """Apply a retention rule to completed jobs (state table only)."""
        return await self.mode.trim(queue, task, keep, older_than)

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume a queue: a tag on the SQS queue, read by every worker (each
        trusts its cached flag for ``pause_check_interval`` seconds)."""
        await self.queues.set_paused(queue, paused)
        await self.mode.set_paused(queue)
        if not paused:
            self.wake()

    # -- beyond the Engine contract ---------------------------------------------------------

    def request_stats(self) -> RequestStats:
        """AWS requests this engine made (by ``service.Operation``) and the jobs it finished:
        ``request_stats().per_job`` is the requests per processed job."""
        return self.requests.snapshot()

    async def sqs_counts(self, queue: str) -> dict[str, int]:
        """SQS's own approximate counts for ``queue`` and its DLQ (queue attributes)."""
        return await self.queues.counts(queue)

    async def check_dead_letters(self, queue: str) -> int:
        """Look in the DLQ now for jobs SQS moved there itself (maxReceiveCount) and record
        them as dead; returns how many. Runs by itself every ``dlq_check_interval``."""
        return await self.mode.adopt_dead(queue, force=True)

    def begin_external(self, queue: str, deliveries: Sequence[Delivery]) -> ExternalBatch:
        """Hand the engine messages someone else received (a Lambda event): the next
        reserves lease only these, and their deletes become outcomes (see :mod:`.actions`)."""
        if self._external is not None:
            raise RuntimeError("an external batch is already being processed")
        self._external = ExternalBatch(queue, list(deliveries))
        return self._external

    def end_external(self) -> ExternalBatch:
        """Finish the external batch; messages never settled count as not done."""
        batch, self._external = self._external, None
        if batch is None:
            raise RuntimeError("no external batch is being processed")
        return batch

    # -- services for the modes -------------------------------------------------------------

    def new_actions(self) -> Actions:
        """A collector of message deletes and visibility changes."""
        return Actions(self.queues, self._external)

    def check_delay(self, delay: float) -> None:
        """Refuse a delay SQS cannot hold a message back for."""
        if delay > self.options.max_delay:
            raise ConfigurationError(
                f"a delay of {delay:.0f}s is longer than SQS can hide a message "
                f"({self.options.max_delay:.0f}s; SQS's limit is {SQS_MAX_VISIBILITY}s, 12 "
                "hours). Enqueue it later from a scheduler, or use a shorter delay"
            )

    def group_id(self, queue: str, task: str, job_id: str) -> str:
        """The FIFO message group of a job (``group_by``: queue, task or job)."""
        key = {"queue": queue, "task": task}.get(self.options.group_by, job_id)
        return dedup_id(key)

    def note_due(self, queue: str, when: float) -> None:
        """Something in ``queue`` may come due at ``when`` (app clock): sweep by then."""
        self._next_due[queue] = min(self._next_due.get(queue, math.inf), when)

    def swept(self, queue: str, next_due: float) -> None:
        """A sweep of ``queue`` ran; nothing it saw comes due before ``next_due``."""
        self._next_due[queue] = next_due
        self._swept_at[queue] = time.monotonic()

    def wake(self) -> None:
        """This engine changed something: wake a waiting worker, receive again at once."""
        self._quiet.clear()
        self._changed.set()

    async def poison(self, d: Delivery, actions: Actions) -> None:
        """A message that is not a Conveyor job: move it to the DLQ untouched."""
        info = await self.queues.get(d.queue)
        log.error("message %s in %s: %s; moving it to the DLQ", d.message_id, d.queue, d.problem)
        if info.dlq_url is None:
            actions.hold(d.queue, d.receipt, SQS_MAX_VISIBILITY)
            return
        entry = SendEntry(
            body=d.body,
            group="conveyor-invalid",
            dedup=dedup_id(d.message_id),
            attributes={DEAD_MARK: "1", "conveyor-error": d.problem[:256]},
        )
        (code,) = await self.queues.send(d.queue, [entry], dlq=True)
        if code is None:
            actions.ack(d.queue, d.receipt)
        else:
            actions.hold(d.queue, d.receipt, SQS_MAX_VISIBILITY)

    async def _tend(self) -> None:
        """Give back kept messages older than ``prefetch_hold``; log the request count now
        and then (SQS bills per request)."""
        logged_at, logged_total = time.monotonic(), 0
        while True:
            await asyncio.sleep(TEND_INTERVAL)
            if time.monotonic() - logged_at >= REQUEST_LOG_INTERVAL:
                stats = self.request_stats()
                if stats.total != logged_total and stats.jobs_finished:
                    log.info("SQS engine so far: %s", stats.summary())
                logged_at, logged_total = time.monotonic(), stats.total
            stale = self._prefetch.stale(self.options.prefetch_hold)
            if stale:
                try:
                    await self.mode.give_back(stale)
                except Exception:
                    log.exception("giving back %d kept message(s) failed", len(stale))


def _got(future: asyncio.Future[Any]) -> bool:
    """Whether a finished poll brought messages."""
    return not future.cancelled() and future.exception() is None and bool(future.result())
