"""The Redis engine: every state transition is one Lua script run with EVALSHA.

Jobs of a queue live in a few keys that share the queue's ``{hash tag}`` (see ``_lib.lua``),
so the engine runs unchanged on Redis Cluster (``?cluster=1``): each script touches one slot,
and operations spanning several queues become one script call per queue, pipelined.

An idle worker blocks in BLPOP on its queues' wake lists (on a connection of its own), which
enqueues and retries push to: a new job starts within a millisecond or so, with no polling.
The block is bounded by the next scheduled job or lease expiry, so delayed jobs and expired
leases come due on time.

Job events (:meth:`RedisEngine.subscribe`, which ``Job.result()`` waits on) travel over
pub/sub, published by the scripts only while someone listens; see ``events.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.clock import Clock
from conveyor.engines.redis import options as url_options
from conveyor.engines.redis import wire
from conveyor.engines.redis.blocking import BlockingEnqueuer
from conveyor.engines.redis.events import EventHub
from conveyor.engines.redis.keys import QueueKeys, queues_key
from conveyor.engines.redis.scripts import Call, Client, ScriptRunner, scripts
from conveyor.errors import ConfigurationError, EngineUnavailable
from conveyor.records import (
    JobEvent,
    JobRecord,
    Lease,
    NewJob,
    QueueStats,
    Settlement,
    State,
)

log = logging.getLogger("conveyor.engines.redis")

#: Jobs per script call when enqueuing or settling many: one call blocks the server while it
#: runs, so huge batches are cut into pieces (sent together in one pipeline).
BATCH_PER_CALL = 500
#: Completed jobs deleted per retention rule per trim call (the worker trims every few
#: seconds, so a backlog shrinks by this much each round without blocking the server long).
TRIM_BATCH = 10_000
#: redis-py retries a command this often after a dropped connection, backing off from
#: RETRY_BASE to RETRY_CAP seconds, before the error reaches the caller (who retries too).
RETRIES = 3
RETRY_BASE = 0.05
RETRY_CAP = 1.0
#: A blocking wait that has not returned this long after its deadline means a dead link.
WAIT_GRACE = 5.0
#: Shortest BLPOP; Redis rounds shorter timeouts down to 0, which means "forever".
MIN_BLOCK = 0.001
#: Pause after a failed wait, so an outage does not become a busy loop.
WAIT_ERROR_PAUSE = 0.5
#: Connections per server (the ``max_connections`` URL option overrides it). When all are
#: busy, a command waits up to POOL_WAIT seconds for one instead of failing at once: a
#: batch of finished jobs wakes every ``job.result()`` waiting for them at the same moment.
DEFAULT_MAX_CONNECTIONS = 100
POOL_WAIT = 10.0
#: First server version with sharded pub/sub (SPUBLISH), which events use on a cluster.
SHARDED_PUBSUB_VERSION = 7

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ClusterError, RedisClusterException)

P = ParamSpec("P")
T = TypeVar("T")


def _unavailable(
    fn: Callable[Concatenate[RedisEngine, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RedisEngine, P], Coroutine[Any, Any, T]]:
    """Raise :class:`EngineUnavailable` (with the password hidden) when Redis is out of reach."""

    @functools.wraps(fn)
    async def wrapper(self: RedisEngine, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(self, *args, **kwargs)
        except _UNREACHABLE as exc:
            raise EngineUnavailable(
                f"Redis at {self.options.safe_url} is unreachable: {exc}"
            ) from exc

    return wrapper


class RedisEngine:
    """Jobs in Redis or Redis Cluster.

    URL: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS), with options
    ``prefix`` (key namespace, default ``conveyor``), ``cluster=1`` (Redis Cluster; the host
    is any node), ``allow_eviction=1`` (start even if ``maxmemory-policy`` may evict keys),
    ``promote_batch`` (delayed jobs promoted per reserve, default 1000), and the connection
    options ``socket_timeout``, ``socket_connect_timeout``, ``health_check_interval``,
    ``max_connections``, ``client_name`` (plus ``ssl_*`` with ``rediss://``).
    """

    #: Redis strings hold 512 MB; the core's own payload limit is far lower.
    max_payload_bytes: int | None = None

    def __init__(self, options: url_options.RedisOptions, clock: Clock) -> None:
        self.options = options
        self.clock = clock
        self.prefix = options.prefix
        self._scripts = scripts()
        self._client: Client | None = None
        self._blocking: Client | None = None
        self._runner: ScriptRunner | None = None
        self._blocking_runner: ScriptRunner | None = None
        self._keys: dict[str, QueueKeys] = {}
        self._known_queues: set[str] = set()
        self._next_first_queue = 0
        self._hub: EventHub | None = None
        self._sync: BlockingEnqueuer | None = None
        #: Events over sharded pub/sub (a cluster of Redis 7 or later); set by connect().
        self._sharded_events = False

    @classmethod
    def from_url(cls, url: str, clock: Clock) -> RedisEngine:
        """Build from a URL (see the class docstring); connects only in :meth:`connect`."""
        return cls(url_options.parse(url), clock)

    def __repr__(self) -> str:
        return f"<RedisEngine {self.options.safe_url} prefix={self.prefix!r}>"

    # -- plumbing ---------------------------------------------------------------------------

    def _make_client(self, *, blocking: bool) -> Client:
        kwargs = self._client_options()
        if blocking:
            # BLPOP may wait longer than any sensible command timeout; wait() bounds it.
            # Without a socket timeout redis-py also sends without asyncio.wait_for, which
            # on Python 3.11 can swallow a cancellation: a worker told to stop would then
            # sit out its whole idle wait.
            kwargs["socket_timeout"] = None
        if self.options.cluster:
            return RedisCluster.from_url(self.options.redis_url, **kwargs)
        if blocking:
            return Redis.from_url(self.options.redis_url, **kwargs)
        kwargs.setdefault("max_connections", DEFAULT_MAX_CONNECTIONS)
        pool = BlockingConnectionPool.from_url(self.options.redis_url, timeout=POOL_WAIT, **kwargs)
        return Redis.from_pool(pool)

    def _client_options(self) -> dict[str, Any]:
        return {
            "socket_timeout": url_options.DEFAULT_SOCKET_TIMEOUT,
            "socket_connect_timeout": url_options.DEFAULT_CONNECT_TIMEOUT,
            "socket_keepalive": True,
            "retry": RedisRetry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), RETRIES),
            **self.options.connection,
        }

    def _pubsub_client(self, node: str | None) -> Redis:
        """A client for the event hub's pub/sub: to ``node`` (``"host:port"`` of a cluster
        node), or to the server (any primary of a cluster). Without retries of its own: the
        hub reconnects, and must learn that it did, to tell its subscribers."""
        kwargs = self._client_options()
        kwargs["retry"] = RedisRetry(NoBackoff(), 0)
        url = self.options.redis_url
        if node is None and isinstance(self._client, RedisCluster):
            primary = random.choice(self._client.get_primaries())
            node = f"{primary.host}:{primary.port}"
        if node is not None:
            parts = urlsplit(url)
            credentials = parts.netloc.rpartition("@")[0]
            netloc = f"{credentials}@{node}" if credentials else node
            url = parts._replace(netloc=netloc).geturl()
        return Redis.from_url(url, **kwargs)

    def _k(self, queue: str) -> QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys.build(self.prefix, queue)
        return keys

    @property
    def _run(self) -> ScriptRunner:
        if self._runner is None:
            raise RuntimeError("RedisEngine used before connect()")
        return self._runner

    async def _remember_queues(self, queues: set[str]) -> None:
        """Record queue names for :meth:`stats` (a cluster-wide set, so outside the scripts,
        which only touch one queue's slot); once per queue per engine."""
        new = queues - self._known_queues
        if new and self._client is not None:
            await self._client.sadd(queues_key(self.prefix), *sorted(new))
            self._known_queues |= new

    # -- Engine -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, check the eviction policy and load the scripts; safe to call again."""
        if self._client is not None:
            return
        client = self._make_client(blocking=False)
        blocking = self._make_client(blocking=True)
        try:
            await client.ping()
            await self._check_eviction_policy(client)
            runner = ScriptRunner(client)
            await runner.load()
            if isinstance(client, RedisCluster):
                self._sharded_events = await _major_version(client) >= SHARDED_PUBSUB_VERSION
        except BaseException as exc:
            await client.aclose()
            await blocking.aclose()
            if isinstance(exc, RedisError):
                raise EngineUnavailable(
                    f"cannot use Redis at {self.options.safe_url}: {exc}"
                ) from exc
            raise
        self._client, self._blocking, self._runner = client, blocking, runner
        self._blocking_runner = ScriptRunner(blocking)

    async def _check_eviction_policy(self, client: Client) -> None:
        """Refuse a server that may evict keys: an evicted key is a silently lost job."""
        if self.options.allow_eviction:
            return
        try:
            if isinstance(client, RedisCluster):
                replies = await client.config_get(
                    "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES
                )
                policies = _policies(replies)
            else:
                policies = _policies(await client.config_get("maxmemory-policy"))
        except ResponseError as exc:
            log.warning(
                "could not read maxmemory-policy from Redis at %s (%s); make sure it is "
                "'noeviction', or jobs may be evicted when memory runs out",
                self.options.safe_url,
                exc,
            )
            return
        if not policies:
            log.warning(
                "Redis at %s did not report its maxmemory-policy; make sure it is "
                "'noeviction', or jobs may be evicted when memory runs out",
                self.options.safe_url,
            )
        bad = sorted(p for p in policies if p != "noeviction")
        if bad:
            raise ConfigurationError(
                f"Redis at {self.options.safe_url} has maxmemory-policy {bad[0]!r}: when "
                "memory runs out it deletes keys, and with them queued jobs, silently. Set "
                "'maxmemory-policy noeviction' in redis.conf (or CONFIG SET), or add "
                "?allow_eviction=1 to the URL to accept that risk."
            )

    async def close(self) -> None:
        """Close both connection pools and the event subscriptions."""
        hub, self._hub = self._hub, None
        if hub is not None:
            await hub.close()
        client, blocking = self._client, self._blocking
        self._client = self._blocking = self._runner = self._blocking_runner = None
        for c in (client, blocking):
            if c is not None:
                await c.aclose()

    @_unavailable
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[bool]:
        """Store jobs: one script call per queue (and per BATCH_PER_CALL jobs), pipelined."""
        if not jobs:
            return []
        batches = wire.enqueue_batches(jobs, self.clock.now(), self._k, BATCH_PER_CALL)
        await self._remember_queues({job.queue for job in jobs})
        script = self._scripts["enqueue"]
        calls: list[Call] = [(script, b.keys, b.args) for b in batches]
        return wire.created(len(jobs), batches, await self._run.run_many(calls))

    #: Task.enqueue_sync stores jobs from the caller's thread (see enqueue_blocking).
    blocking_enqueue = True

    def enqueue_blocking(self, jobs: Sequence[NewJob]) -> list[bool]:
        """:meth:`enqueue` for synchronous producers: a plain redis-py client on the calling
        thread, one round trip per call, no event loop and no thread hop."""
        if self._sync is None:
            self._sync = BlockingEnqueuer(self.options)
        batches = wire.enqueue_batches(jobs, self.clock.now(), self._k, BATCH_PER_CALL)
        return wire.created(len(jobs), batches, self._sync.run(batches, {j.queue for j in jobs}))

    def close_blocking(self) -> None:
        """Close the synchronous producers' client, if one was opened."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    @_unavailable
    async def reserve(
        self, queues: Sequence[str], limit: int, lease_seconds: float, worker: str
    ) -> list[JobRecord]:
        """Lease up to ``limit`` due jobs in one script call (on a cluster: one per queue,
        starting from a different queue each time so none starves)."""
        if limit <= 0 or not queues:
            return []
        now = self.clock.now()
        expires = now + lease_seconds
        script = self._scripts["reserve"]
        batch = self.options.promote_batch
        keys = [self._k(q) for q in queues]
        if not self.options.cluster or len(keys) == 1:
            flat = [key for k in keys for key in k.reserve]
            token = os.urandom(9).hex() + "."
            rows = await self._run.run(script, flat, (now, expires, limit, worker, token, batch))
            return [wire.record(keys[row[19] - 1].queue, row, now) for row in rows]
        first = self._next_first_queue % len(keys)
        self._next_first_queue += 1
        records: list[JobRecord] = []
        for k in keys[first:] + keys[:first]:
            token = os.urandom(9).hex() + "."
            args = (now, expires, limit - len(records), worker, token, batch)
            rows = await self._run.run(script, k.reserve, args)
            records += [wire.record(k.queue, row, now) for row in rows]
            if len(records) >= limit:
                break
        return records

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block on the queues' wake lists until a job may be due or ``timeout`` passes."""
        if not queues:
            await asyncio.sleep(timeout)
            return
        runner = self._blocking_runner
        if runner is None:
            raise RuntimeError("RedisEngine used before connect()")
        keys = [self._k(q) for q in queues]
        bound = timeout
        try:
            script = self._scripts["next_due"]
            calls: list[Call] = [(script, (k.ready, k.sched, k.active, k.paused), ()) for k in keys]
            now = self.clock.now()
            # On the blocking connection too, so that the whole wait can be cancelled.
            for due in await runner.run_many(calls):
                if due is not None:
                    bound = min(bound, float(due) - now)
            if bound < MIN_BLOCK:
                return
            async with asyncio.timeout(bound + WAIT_GRACE):
                await self._block([k.wake for k in keys], bound)
        except (RedisError, TimeoutError) as exc:
            # A spurious return is harmless; the caller's next reserve reports the outage.
            log.warning("waiting for jobs failed: %s", exc)
            await asyncio.sleep(min(max(bound, 0.0), WAIT_ERROR_PAUSE))

    async def _block(self, wake_keys: list[str], seconds: float) -> None:
        blocking = self._blocking
        if blocking is None:
            raise RuntimeError("RedisEngine used before connect()")
        if not isinstance(blocking, RedisCluster) or len(wake_keys) == 1:
            await blocking.blpop(wake_keys, timeout=seconds)
            return
        # Wake lists of different queues live in different slots, maybe on different nodes.
        waits = [asyncio.ensure_future(blocking.blpop([key], timeout=seconds)) for key in wake_keys]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()
        finally:
            for pending in waits:
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RedisError):
                        await pending

    @_unavailable
    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[bool]:
        """Push lease expiries forward: one script call per queue, pipelined."""
        if not leases:
            return []
        expires = self.clock.now() + lease_seconds
        script = self._scripts["extend"]
        calls: list[Call] = []
        spans = []
        for queue, indexes in wire.by_queue(leases).items():
            k = self._k(queue)
            args: list[Any] = [expires]
            for i in indexes:
                args += (leases[i].job_id, leases[i].token)
            calls.append((script, (k.jobs, k.active), args))
            spans.append(indexes)
        return self._scatter(len(leases), spans, await self._run.run_many(calls))

    @_unavailable
    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply settlements: one script call per queue (and per BATCH_PER_CALL), pipelined."""
        if not settlements:
            return []
        now = self.clock.now()
        call = os.urandom(6).hex() + ":"
        script = self._scripts["settle"]
        calls: list[Call] = []
        spans = []
        leases = [s.lease for s in settlements]
        for queue, indexes in wire.by_queue(leases).items():
            keys = self._k(queue).settle
            for start in range(0, len(indexes), BATCH_PER_CALL):
                span = indexes[start : start + BATCH_PER_CALL]
                args: list[Any] = [now, call]
                for i in span:
                    args += wire.settle_args(settlements[i])
                calls.append((script, keys, args))
                spans.append(span)
        return self._scatter(len(settlements), spans, await self._run.run_many(calls))

    @staticmethod
    def _scatter(n: int, spans: list[list[int]], results: list[Any]) -> list[bool]:
        out = [False] * n
        for span, result in zip(spans, results, strict=True):
            for i, ok in zip(span, result, strict=True):
                out[i] = ok == 1
        return out

    @_unavailable
    async def report(
        self, lease: Lease, progress: float | None = None, log: str | None = None
    ) -> bool:
        """Store progress and/or append a log line, if the lease is still held."""
        line = "" if log is None else json.dumps({"at": self.clock.now(), "message": log})
        k = self._k(lease.queue)
        now = self.clock.now()
        args = (lease.job_id, lease.token, "" if progress is None else progress, line, now)
        keys = (k.jobs, k.logs, k.events)
        return bool(await self._run.run(self._scripts["report"], keys, args) == 1)

    @_unavailable
    async def get(self, queue: str, job_id: str) -> JobRecord | None:
        """Read one job."""
        now = self.clock.now()
        k = self._k(queue)
        row = await self._run.run(self._scripts["get"], (k.jobs, k.fail, k.logs), (job_id,))
        return None if row is None else wire.record(queue, row, now)

    @_unavailable
    async def list_jobs(
        self, queue: str, state: State, limit: int = 100, offset: int = 0
    ) -> list[JobRecord]:
        """Jobs of one queue in one state, paged: dead and completed newest first, queued in
        reserve order, scheduled by due time, active by start time."""
        if limit <= 0:
            return []
        now = self.clock.now()
        args = (state.value, now, limit, max(offset, 0), self.options.promote_batch)
        rows = await self._run.run(self._scripts["list"], self._k(queue).listing, args)
        return [wire.record(queue, row, now) for row in rows]

    @_unavailable
    async def stats(self) -> list[QueueStats]:
        """Counts by state of every queue that has jobs or is paused, by queue name."""
        assert self._client is not None
        names = sorted(_text(n) for n in await self._client.smembers(queues_key(self.prefix)))
        if not names:
            return []
        now = self.clock.now()
        script = self._scripts["stats"]
        calls: list[Call] = []
        for name in names:
            k = self._k(name)
            calls.append((script, (k.ready, k.sched, k.active, k.done, k.dead, k.paused), (now,)))
        out = []
        for name, reply in zip(names, await self._run.run_many(calls), strict=True):
            counts = dict(zip(wire.STAT_ORDER, reply[:5], strict=True))
            paused = reply[5] == 1
            if not paused and not any(counts.values()):
                continue  # like the SQLite engine: a queue shows while it has jobs
            oldest = None if reply[6] is None else float(reply[6])
            out.append(QueueStats(name, counts, paused, oldest))
        return out

    @_unavailable
    async def redrive(self, queue: str, job_ids: Sequence[str]) -> int:
        """Dead jobs back to queued, due now, attempts reset, failure log kept."""
        if not job_ids:
            return 0
        k = self._k(queue)
        keys = (k.jobs, k.ready, k.dead, k.wake, k.events)
        return int(
            await self._run.run(self._scripts["redrive"], keys, (self.clock.now(), *job_ids))
        )

    @_unavailable
    async def delete(self, queue: str, job_ids: Sequence[str]) -> int:
        """Delete jobs that are not active."""
        if not job_ids:
            return 0
        k = self._k(queue)
        keys = (k.jobs, k.fail, k.logs, k.ready, k.sched, k.done, k.donet, k.dead)
        return int(await self._run.run(self._scripts["delete"], keys, job_ids))

    @_unavailable
    async def trim(self, queue: str, task: str, keep: int | None, older_than: float | None) -> int:
        """Apply a retention rule to completed jobs of one task."""
        if keep is None and older_than is None:
            return 0
        k = self._k(queue)
        keys = (k.jobs, k.fail, k.logs, k.done, k.donet)
        args = (
            task,
            "" if keep is None else max(keep, 0),
            "" if older_than is None else older_than,
            TRIM_BATCH,
        )
        return int(await self._run.run(self._scripts["trim"], keys, args))

    @_unavailable
    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume one queue; resuming wakes idle workers."""
        await self._remember_queues({queue})
        k = self._k(queue)
        keys = (k.paused, k.ready, k.wake)
        await self._run.run(self._scripts["pause"], keys, ("1" if paused else "0",))

    # -- EventSource ------------------------------------------------------------------------

    def subscribe(
        self, queues: Sequence[str], job_id: str | None = None
    ) -> AsyncGenerator[JobEvent, None]:
        """Job events of ``queues`` (or of one job), pushed over pub/sub; see
        :meth:`conveyor.engines.base.EventSource.subscribe` and ``events.py``."""
        if self._client is None:
            raise RuntimeError("RedisEngine used before connect()")
        if self._hub is None:
            self._hub = EventHub(
                self._client, self._k, self._pubsub_client, sharded=self._sharded_events
            )
        return self._hub.subscribe(queues, job_id)


async def _major_version(client: RedisCluster) -> int:
    """The major version of a cluster's servers (the lowest, should they differ)."""
    reply = await client.info("server")
    found = [int(str(v).split(".")[0]) for v in _find(reply, "redis_version")]
    return min(found, default=0)


def _find(reply: Any, name: str) -> list[Any]:
    """Values of ``name`` in an INFO reply: a dict, or one dict per node."""
    if not isinstance(reply, dict):
        return []
    if name in reply:
        return [reply[name]]
    return [v for value in reply.values() for v in _find(value, name)]


def _policies(reply: Any) -> list[str]:
    """maxmemory-policy values from a CONFIG GET reply (a dict, or one dict per node)."""
    out: list[str] = []
    if isinstance(reply, dict):
        for key, value in reply.items():
            if isinstance(value, dict):
                out += _policies(value)
            elif _text(key) == "maxmemory-policy":
                out.append(_text(value))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
