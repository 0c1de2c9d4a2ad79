"""The Redis engine's URL: which server, how to reach it, and the engine's own options."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conveyor.engines import redact
from conveyor.errors import ConfigurationError

DEFAULT_PREFIX = "conveyor"
#: Seconds a command may take before the connection is considered dead and retried.
DEFAULT_SOCKET_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Scheduled jobs promoted (and expired leases reclaimed) per reserve call: bounds how long
#: one script may block the server when many delayed jobs come due at once.
DEFAULT_PROMOTE_BATCH = 1000

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_PREFIX_RE = re.compile(r"^[^{}\s]+$")

#: Connection options passed on to redis-py, with the type each is parsed to.
CONNECTION_OPTIONS: dict[str, type] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "health_check_interval": int,
    "max_connections": int,
    "client_name": str,
}
#: The same, for TLS (``rediss://``) only.
TLS_OPTIONS: dict[str, type] = {
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": bool,
}
OWN = frozenset({"prefix", "allow_eviction", "cluster", "promote_batch"})


@dataclass(frozen=True)
class RedisOptions:
    """A parsed engine URL.

    ``redis_url`` is the server part redis-py receives (scheme, credentials, host, port,
    database); ``connection`` holds connection options for redis-py; the rest are the
    engine's own options.
    """

    redis_url: str
    connection: dict[str, Any] = field(default_factory=dict)
    prefix: str = DEFAULT_PREFIX
    allow_eviction: bool = False
    cluster: bool = False
    promote_batch: int = DEFAULT_PROMOTE_BATCH

    @property
    def safe_url(self) -> str:
        """The server URL with any password hidden, for logs and error messages."""
        return redact(self.redis_url)


def parse(url: str) -> RedisOptions:
    """Parse ``redis://[user:pass@]host:port/db?prefix=..&allow_eviction=1&cluster=1``.

    ``rediss://`` connects with TLS. Unknown query options are refused, so a typo cannot
    silently fall back to a default.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            f"the Redis engine needs a redis:// or rediss:// URL, got {redact(url)!r}"
        )
    if not parts.hostname:
        raise ConfigurationError(f"Redis URL {redact(url)!r} names no host")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ConfigurationError(f"Redis URL {redact(url)!r}: {exc}") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    known = (
        OWN | set(CONNECTION_OPTIONS) | (set(TLS_OPTIONS) if parts.scheme == "rediss" else set())
    )
    unknown = set(query) - known
    if unknown:
        raise ConfigurationError(
            f"unknown Redis URL options {sorted(unknown)} in {redact(url)!r}; "
            f"known: {sorted(known)} (TLS options need rediss://)"
        )
    prefix = query.pop("prefix", DEFAULT_PREFIX)
    if not _PREFIX_RE.match(prefix):
        raise ConfigurationError(
            f"Redis key prefix {prefix!r} must be non-empty, without spaces or braces "
            "(braces would break the per-queue {hash tags} Redis Cluster needs)"
        )
    allow_eviction = _flag(query.pop("allow_eviction", "0"), "allow_eviction", url)
    cluster = _flag(query.pop("cluster", "0"), "cluster", url)
    try:
        promote_batch = int(query.pop("promote_batch", DEFAULT_PROMOTE_BATCH))
    except ValueError:
        raise ConfigurationError(
            f"promote_batch in {redact(url)!r} must be a whole number"
        ) from None
    if promote_batch < 1:
        raise ConfigurationError(f"promote_batch in {redact(url)!r} must be at least 1")
    path = parts.path
    if cluster:
        if path.strip("/") not in ("", "0"):
            raise ConfigurationError(
                f"Redis Cluster has only database 0; drop the /{path.strip('/')} from "
                f"{redact(url)!r}"
            )
        path = ""
    elif path.strip("/") and not path.strip("/").isdigit():
        raise ConfigurationError(f"the path of {redact(url)!r} must be a database number, like /0")
    connection = {
        name: _typed(value, {**CONNECTION_OPTIONS, **TLS_OPTIONS}[name], name, url)
        for name, value in query.items()
    }
    redis_url = parts._replace(path=path, query="", fragment="").geturl()
    return RedisOptions(redis_url, connection, prefix, allow_eviction, cluster, promote_batch)


def _typed(value: str, kind: type, name: str, url: str) -> Any:
    if kind is bool:
        return _flag(value, name, url)
    try:
        return kind(value)
    except ValueError:
        raise ConfigurationError(
            f"{name} in {redact(url)!r} must be a {kind.__name__}, got {value!r}"
        ) from None


def _flag(value: str, name: str, url: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigurationError(f"{name} in {redact(url)!r} must be 1 or 0, got {value!r}")
