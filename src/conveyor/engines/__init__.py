"""Storage engines. Each implements :class:`conveyor.engines.base.Engine`; pick one by URL."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from conveyor.clock import Clock
from conveyor.engines.base import Engine
from conveyor.errors import ConfigurationError

DEFAULT_URL = "sqlite:///conveyor.db"


def resolve_url(url: str | None) -> str:
    """The engine URL to use: the argument, else ``CONVEYOR_URL``, else ``./conveyor.db``."""
    return url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL


def open_engine(url: str, clock: Clock) -> Engine:
    """Build the engine for ``url``'s scheme (``sqlite``, ``redis``/``rediss``, ``sqs``)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from conveyor.engines.sqlite.engine import SQLiteEngine

        return SQLiteEngine.from_url(url, clock)
    if scheme in ("redis", "rediss"):
        try:
            from conveyor.engines.redis.engine import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
                RedisEngine,
            )
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                f"the Redis engine needs the redis extra: pip install 'conveyor[redis]' ({exc})"
            ) from exc
        engine: Engine = RedisEngine.from_url(url, clock)
        return engine
    if scheme == "sqs":
        try:
            from conveyor.engines.sqs.engine import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
                SQSEngine,
            )
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                f"the SQS engine needs the sqs extra: pip install 'conveyor[sqs]' ({exc})"
            ) from exc
        sqs: Engine = SQSEngine.from_url(url, clock)
        return sqs
    raise ConfigurationError(
        f"unknown engine URL scheme {scheme!r} in {redact(url)!r}; "
        "expected sqlite:///path.db, redis://host:port/db or sqs://?region=..."
    )


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
