"""Job events over Redis pub/sub, behind :meth:`RedisEngine.subscribe`.

The Lua scripts publish only while someone listens (see ``_lib.lua``): a listener sets its
queue's ``events`` key, with an expiry it keeps renewing, and while that key exists each
script call that changes jobs of the queue publishes one JSON array of events on the channel
of the same name. With nobody listening the scripts pay one GET per call.

On Redis Cluster 7 or later the channel is a shard channel (SPUBLISH/SSUBSCRIBE). It hashes
to its queue's slot, so a message goes to that slot's primary (and its replicas) only, not
over the cluster bus to every node as PUBLISH would; the hub keeps one connection per node
that owns a subscribed queue. Older clusters fall back to PUBLISH/SUBSCRIBE on one node.

One hub per engine shares those connections among every subscriber in the process, handing
each event to the subscribers of its queue or of its job. When a connection drops, or stops
answering PING, the hub reconnects, resubscribes, renews the listening keys and sends each
subscriber a ``subscribed`` event again: events may have been lost in between, and that is a
subscriber's cue to re-read what it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.exceptions import NoPermissionError, ResponseError

from conveyor.engines.base import EventsUnavailable
from conveyor.engines.redis import wire
from conveyor.engines.redis.keys import QueueKeys
from conveyor.errors import EngineUnavailable
from conveyor.records import EventKind, JobEvent

log = logging.getLogger("conveyor.engines.redis")

#: Seconds a listening key lives unless renewed; while it lives the scripts publish.
LISTEN_TTL = 60.0
#: Renew listening keys this often (a third of their life, so one late renewal is harmless).
LISTEN_RENEW = LISTEN_TTL / 3
#: Longest wait for a message before the hub looks after its connection: renews listening
#: keys, drops unwanted channels, and sends PING when the connection has been silent.
TICK = 5.0
#: A connection silent this long, PINGs included, is taken for dead and replaced.
SILENCE_LIMIT = 3 * TICK
#: How often the hub looks for listening keys due for renewal.
RENEW_CHECK = 1.0
#: Waits between reconnect attempts (the last one repeats).
RECONNECT_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0)
#: Events buffered for one subscriber. A subscriber that falls this far behind loses the
#: buffer and gets a ``subscribed`` event instead, telling it to re-read.
BUFFER = 10_000

Client = Redis | RedisCluster


class _Moved(Exception):
    """The server unsubscribed a shard channel itself: its slot moved to another node."""


@dataclass(eq=False)
class _Subscriber:
    queues: tuple[str, ...]
    job_id: str | None
    #: Events, or the error that ends the subscription.
    inbox: asyncio.Queue[JobEvent | Exception] = field(default_factory=asyncio.Queue)

    def put(self, event: JobEvent) -> None:
        if self.inbox.qsize() < BUFFER:
            self.inbox.put_nowait(event)
            return
        # Too slow to keep up: drop the backlog and say so; re-reading catches up in one go.
        while not self.inbox.empty():
            self.inbox.get_nowait()
        for queue in self.queues:
            self.inbox.put_nowait(JobEvent(EventKind.SUBSCRIBED, queue))


class EventHub:
    """Shares pub/sub connections among the subscribers of one engine."""

    def __init__(
        self,
        main: Client,
        keys: Callable[[str], QueueKeys],
        connect: Callable[[str | None], Redis],
        *,
        sharded: bool,
    ) -> None:
        """``main`` is the engine's client (it sets listening keys); ``connect(node)`` makes
        a client for pub/sub, to node ``"host:port"`` or, with ``None``, to the server (any
        node of a cluster when not ``sharded``)."""
        self.main = main
        self.keys = keys
        self.connect = connect
        self.sharded = sharded
        self.how = b"s" if sharded else b"p"
        self.links: dict[str, _Link] = {}
        self.queue_of: dict[str, str] = {}
        self._by_queue: dict[str, set[_Subscriber]] = {}
        self._by_job: dict[tuple[str, str], set[_Subscriber]] = {}
        self._closed = False

    async def subscribe(
        self, queues: Sequence[str], job_id: str | None = None
    ) -> AsyncGenerator[JobEvent, None]:
        """See :meth:`conveyor.engines.base.EventSource.subscribe`."""
        if not queues:
            raise ValueError("subscribe() needs at least one queue")
        if self._closed:
            raise RuntimeError("RedisEngine used after close()")
        sub = _Subscriber(tuple(dict.fromkeys(queues)), job_id)
        for queue in sub.queues:
            self._by_queue.setdefault(queue, set()).add(sub)
        if job_id is not None:
            for queue in sub.queues:
                self._by_job.setdefault((queue, job_id), set()).add(sub)
        try:
            for queue in sub.queues:
                await self._want(queue, sub)
            while True:
                event = await sub.inbox.get()
                if isinstance(event, Exception):
                    raise event
                yield event
        finally:
            self._forget(sub)

    async def close(self) -> None:
        """Stop every connection; subscribers still waiting get :class:`EngineUnavailable`."""
        self._closed = True
        links, self.links = list(self.links.values()), {}
        for link in links:
            await link.stop()
        closed = EngineUnavailable("the Redis engine was closed while events were awaited")
        for subs in self._by_queue.values():
            for sub in subs:
                sub.inbox.put_nowait(closed)

    # -- subscribers ------------------------------------------------------------------------

    async def _want(self, queue: str, sub: _Subscriber) -> None:
        if self._closed:
            raise EngineUnavailable("the Redis engine was closed while events were awaited")
        channel = self.keys(queue).events
        self.queue_of[channel] = queue
        node = self._node(channel)
        if node is None:
            raise EngineUnavailable(
                f"no node of the Redis Cluster serves the slot of queue {queue!r} now"
            )
        link = self._link(node)
        if channel in link.live:
            sub.put(JobEvent(EventKind.SUBSCRIBED, queue))
        elif channel not in link.channels:
            await link.add(channel)
        # else: subscribing is under way; its confirmation announces it to every subscriber

    def _forget(self, sub: _Subscriber) -> None:
        for queue in sub.queues:
            subs = self._by_queue.get(queue)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_queue[queue]
                    channel = self.keys(queue).events
                    for link in self.links.values():
                        if channel in link.channels:
                            link.dropped.add(channel)
            if sub.job_id is not None:
                job_subs = self._by_job.get((queue, sub.job_id))
                if job_subs is not None:
                    job_subs.discard(sub)
                    if not job_subs:
                        del self._by_job[(queue, sub.job_id)]

    def wanted(self, channel: str) -> bool:
        """Whether anyone still subscribes to the queue of ``channel``."""
        queue = self.queue_of.get(channel)
        return queue is not None and queue in self._by_queue

    def dispatch(self, channel: str, data: bytes) -> None:
        """Hand the events of one published message to their subscribers."""
        queue = self.queue_of.get(channel)
        if queue is None:
            return
        everyone = self._by_queue.get(queue, ())
        for event in wire.events(queue, data):
            for sub in everyone:
                if sub.job_id is None:
                    sub.put(event)
            for sub in self._by_job.get((queue, event.job_id), ()):
                sub.put(event)

    def refuse(self, link: _Link, exc: Exception) -> None:
        """The server refused ``link``'s subscriptions for good (an ACL without the event
        channels, a server without SSUBSCRIBE): end its subscribers' streams with the reason;
        retrying would only fail again."""
        channels = sorted(link.channels)
        link.channels.clear()
        link.live.clear()
        prefix = channels[0].split(":{", 1)[0] if channels else "conveyor"
        error = EventsUnavailable(
            f"Redis refused to deliver job events ({exc}). With ACLs, allow the user the "
            f"event channels, like '&{prefix}:*'. Until then job.result() polls."
        )
        log.warning("%s", error)
        for channel in channels:
            queue = self.queue_of.get(channel)
            for sub in self._by_queue.get(queue, ()) if queue is not None else ():
                sub.inbox.put_nowait(error)

    def announce(self, channel: str) -> None:
        """Tell every subscriber of ``channel``'s queue that it is listened to from now on."""
        queue = self.queue_of.get(channel)
        if queue is None:
            return
        for sub in self._by_queue.get(queue, ()):
            sub.put(JobEvent(EventKind.SUBSCRIBED, queue))

    # -- connections ------------------------------------------------------------------------

    def _node(self, channel: str) -> str | None:
        """The link a channel belongs on: its slot's node (sharded), else the one link;
        ``None`` while no node serves the slot (a cluster that is down)."""
        if self.sharded and isinstance(self.main, RedisCluster):
            node = self.main.get_node_from_key(channel)
            return None if node is None else f"{node.host}:{node.port}"
        return ""

    def _link(self, node: str) -> _Link:
        link = self.links.get(node)
        if link is None:
            link = self.links[node] = _Link(self, node)
            link.start()
        return link

    async def listen(self, channels: Sequence[str]) -> None:
        """Set the listening keys of ``channels`` (one round trip), so the scripts publish."""
        ttl = int(LISTEN_TTL * 1000)
        if len(channels) == 1:
            await self.main.set(channels[0], self.how, px=ttl)
            return
        pipe = self.main.pipeline(transaction=False)
        for channel in channels:
            pipe.set(channel, self.how, px=ttl)
        await pipe.execute()

    async def reroute(self, link: _Link) -> None:
        """After a failure on a cluster: move channels whose slot changed node."""
        if not (self.sharded and isinstance(self.main, RedisCluster)):
            return
        try:
            await self.main.nodes_manager.initialize()
        except Exception as exc:  # the next reconnect attempt tries again
            log.debug("refreshing the cluster layout failed: %s", exc)
            return
        for channel in list(link.channels):
            node = self._node(channel)
            if node is not None and node != link.name:
                link.channels.discard(channel)
                link.live.pop(channel, None)
                await self._link(node).add(channel)


class _Link:
    """One pub/sub connection (to the server, or to one cluster node) and its channels."""

    def __init__(self, hub: EventHub, name: str) -> None:
        self.hub = hub
        self.name = name
        #: Channels wanted on this connection.
        self.channels: set[str] = set()
        #: Channels subscribed and listened to: channel -> when its key was last set.
        self.live: dict[str, float] = {}
        #: Channels whose last subscriber left; unsubscribed at the next tick unless wanted.
        self.dropped: set[str] = set()
        #: UNSUBSCRIBEs sent whose confirmation has not come back yet.
        self._leaving: Counter[str] = Counter()
        self._pubsub: PubSub | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._renew_checked = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"conveyor-events {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def add(self, channel: str) -> None:
        """Subscribe to ``channel``; its confirmation arrives on the reading task."""
        async with self._lock:
            self.channels.add(channel)
            self.dropped.discard(channel)
            if self._pubsub is not None:
                try:
                    await self._subscribe(self._pubsub, [channel])
                except Exception as exc:
                    # The connection is broken; the reader reconnects and subscribes again.
                    log.debug("subscribing to %s failed: %s", channel, exc)
        self._changed.set()

    async def _subscribe(self, pubsub: PubSub, channels: Sequence[str]) -> None:
        if not self.hub.sharded:
            await pubsub.subscribe(*channels)
            return
        for channel in channels:  # shard channels of different slots: one command each
            await pubsub.ssubscribe(channel)

    async def _unsubscribe(self, pubsub: PubSub, channels: Sequence[str]) -> None:
        if not self.hub.sharded:
            await pubsub.unsubscribe(*channels)
            return
        for channel in channels:
            await pubsub.sunsubscribe(channel)

    async def _run(self) -> None:
        while True:
            if not self.channels:
                self._changed.clear()
                await self._changed.wait()
                continue
            client: Redis | None = None
            pubsub: PubSub | None = None
            try:
                client = self.hub.connect(self.name or None)
                pubsub = client.pubsub()
                async with self._lock:
                    self._leaving.clear()
                    self._pubsub = pubsub
                    await self._subscribe(pubsub, sorted(self.channels))
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _refused(exc):
                    self.hub.refuse(self, exc)
                    continue
                log.warning(
                    "job events: connection %s failed (%s: %s); reconnecting",
                    self.name or "to Redis",
                    type(exc).__name__,
                    exc,
                )
            finally:
                self._pubsub = None
                self.live.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.aclose()
            await asyncio.sleep(RECONNECT_DELAYS[min(self._failures, len(RECONNECT_DELAYS) - 1)])
            self._failures += 1
            try:
                await self.hub.reroute(self)
            except Exception as exc:  # never let the link die: its subscribers would hang
                log.warning("job events: rerouting %s failed: %s", self.name, exc)

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while True:
            await self._tend(pubsub)
            message = await pubsub.get_message(timeout=TICK)
            now = loop.time()
            if message is None:
                if now - heard > SILENCE_LIMIT:
                    raise ConnectionError(f"no reply to PING in {SILENCE_LIMIT:g} s")
                if now - max(heard, pinged) >= TICK:
                    await pubsub.ping()
                    pinged = now
                continue
            heard = now
            kind = _text(message["type"])
            if kind == "pong":
                continue
            channel = _text(message["channel"])
            if kind in ("message", "smessage"):
                self.hub.dispatch(channel, message["data"])
            elif kind in ("subscribe", "ssubscribe"):
                await self._confirmed(channel)
            elif kind in ("unsubscribe", "sunsubscribe"):
                if self._leaving[channel] > 0:
                    self._leaving[channel] -= 1
                elif channel in self.channels:
                    raise _Moved(f"the server unsubscribed {channel} (its slot moved)")

    async def _confirmed(self, channel: str) -> None:
        if channel not in self.channels:
            return  # dropped while the confirmation was on its way
        await self.hub.listen([channel])
        self.live[channel] = asyncio.get_running_loop().time()
        self.hub.announce(channel)
        self._failures = 0  # it works again: the next failure starts the delays afresh

    async def _tend(self, pubsub: PubSub) -> None:
        """Unsubscribe channels nobody wants any more; renew listening keys due for it."""
        if self.dropped:
            async with self._lock:
                gone = [c for c in self.dropped if not self.hub.wanted(c)]
                self.dropped.clear()
                for channel in gone:
                    self.channels.discard(channel)
                    self.live.pop(channel, None)
                    self._leaving[channel] += 1
                if gone:
                    await self._unsubscribe(pubsub, gone)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._renew_checked < RENEW_CHECK:
            return
        self._renew_checked = now
        due = [c for c, at in self.live.items() if now - at >= LISTEN_RENEW]
        if not due:
            return
        await self.hub.listen(due)
        done = loop.time()
        for channel in due:
            if channel not in self.live:
                continue
            lapsed = done - self.live[channel] > LISTEN_TTL
            self.live[channel] = now
            if lapsed:
                # Renewed too late (a blocked event loop): the key may have expired and
                # the scripts stopped publishing for a while.
                self.hub.announce(channel)


def _refused(exc: Exception) -> bool:
    """Whether the server refuses the subscription for good (so retrying is pointless)."""
    if isinstance(exc, NoPermissionError):
        return True
    return isinstance(exc, ResponseError) and "unknown command" in str(exc).lower()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
