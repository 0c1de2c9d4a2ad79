"""Enqueue for synchronous producers (Django views, Flask handlers, scripts).

A plain redis-py client used from the caller's own thread runs the same ``enqueue.lua`` as
the async engine: one round trip per call, with no event loop and no hop to another thread.
redis-py's sync client is thread-safe (a connection pool), so one serves every thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from conveyor.engines.redis import options as url_options
from conveyor.engines.redis.keys import queues_key
from conveyor.engines.redis.scripts import scripts
from conveyor.engines.redis.wire import EnqueueBatch
from conveyor.errors import EngineUnavailable

RETRIES = 3


class BlockingEnqueuer:
    """Runs enqueue script calls on a synchronous client."""

    def __init__(self, options: url_options.RedisOptions) -> None:
        self.options = options
        kwargs: dict[str, Any] = {
            "socket_timeout": url_options.DEFAULT_SOCKET_TIMEOUT,
            "socket_connect_timeout": url_options.DEFAULT_CONNECT_TIMEOUT,
            "socket_keepalive": True,
            "retry": Retry(ExponentialBackoff(), RETRIES),
            **options.connection,
        }
        self.client: Redis | RedisCluster = (
            RedisCluster.from_url(options.redis_url, **kwargs)
            if options.cluster
            else Redis.from_url(options.redis_url, **kwargs)
        )
        self.script = scripts()["enqueue"]
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def run(self, batches: Sequence[EnqueueBatch], queues: set[str]) -> list[Any]:
        """Run the batches (pipelined when there are several); returns each script's reply."""
        try:
            self._remember(queues)
            try:
                return self._send(batches)
            except NoScriptError:
                # NOSCRIPT means the script did not run: loading and sending again is safe.
                self.client.script_load(self.script.source)
                return self._send(batches)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise EngineUnavailable(
                f"Redis at {self.options.safe_url} is unreachable: {exc}"
            ) from exc
        except RedisError as exc:
            raise EngineUnavailable(f"Redis at {self.options.safe_url} refused: {exc}") from exc

    def _send(self, batches: Sequence[EnqueueBatch]) -> list[Any]:
        sha = self.script.sha
        if len(batches) == 1:
            b = batches[0]
            reply = self.client.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", sha, len(b.keys), *b.keys, *b.args
            )
            return [reply]
        pipe = self.client.pipeline(transaction=False)
        for b in batches:
            pipe.execute_command("EVALSHA", sha, len(b.keys), *b.keys, *b.args)
        results: list[Any] = pipe.execute(raise_on_error=True)
        return results

    def _remember(self, queues: set[str]) -> None:
        """Record queue names for stats(), once per queue (as the async engine does)."""
        new = queues - self._known
        if new:
            self.client.sadd(queues_key(self.options.prefix), *sorted(new))
            with self._lock:
                self._known |= new

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()
