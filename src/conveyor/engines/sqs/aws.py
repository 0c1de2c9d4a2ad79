"""AWS plumbing of the SQS engine: aiobotocore clients and request accounting.

SQS bills per request (and DynamoDB per request unit), so every HTTP request the engine
sends is counted, by service and operation, through botocore's ``before-send`` event: a
request botocore retries is counted once per try, as AWS bills it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError, NoRegionError

from conveyor.engines.sqs.options import SQSOptions
from conveyor.errors import ConfigurationError

#: Standard retry mode with a few attempts: throttling and 5xx errors are retried by botocore.
_RETRIES = {"mode": "standard", "max_attempts": 5}
#: Connections per client; the engine runs many DynamoDB writes concurrently.
_POOL = 50


@dataclass(frozen=True)
class RequestStats:
    """A snapshot of the API requests one engine made, and the jobs it finished."""

    by_operation: dict[str, int]
    jobs_finished: int
    attempts: int

    @property
    def total(self) -> int:
        """All requests, every service."""
        return sum(self.by_operation.values())

    def service(self, name: str) -> int:
        """Requests to one service (``sqs``, ``dynamodb``, ``s3``)."""
        return sum(n for op, n in self.by_operation.items() if op.split(".", 1)[0] == name)

    @property
    def per_job(self) -> float | None:
        """Requests per finished (completed or dead-lettered) job; ``None`` before the first."""
        return self.total / self.jobs_finished if self.jobs_finished else None

    def summary(self) -> str:
        """One line for logs and ``conveyor status``."""
        per = "-" if self.per_job is None else f"{self.per_job:.2f}"
        return (
            f"{self.total} AWS requests (sqs {self.service('sqs')}, dynamodb "
            f"{self.service('dynamodb')}, s3 {self.service('s3')}) for {self.jobs_finished} "
            f"finished job(s): {per} per job"
        )


@dataclass
class RequestCounter:
    """Counts requests as they are sent; read it with :meth:`snapshot`."""

    by_operation: Counter[str] = field(default_factory=Counter)
    jobs_finished: int = 0
    attempts: int = 0

    def on_send(self, event_name: str = "", **_: Any) -> None:
        """botocore ``before-send`` handler: ``before-send.<service>.<Operation>``."""
        parts = [*event_name.split(".", 2), "?", "?"]
        self.by_operation[f"{parts[1].lower()}.{parts[2]}"] += 1
        # Returning None lets the request go out (a value would replace the response).

    def snapshot(self) -> RequestStats:
        """The counts so far."""
        return RequestStats(dict(self.by_operation), self.jobs_finished, self.attempts)


class Clients:
    """One aiobotocore session and a client per service, opened on :meth:`open`."""

    def __init__(self, options: SQSOptions, counter: RequestCounter) -> None:
        self.options = options
        self.counter = counter
        self._stack = contextlib.AsyncExitStack()
        self.sqs: Any = None
        self.dynamodb: Any = None
        self.s3: Any = None

    async def open(self) -> None:
        """Create the clients the options need."""
        from aiobotocore.session import AioSession

        session = AioSession(profile=self.options.profile)
        config = Config(retries=_RETRIES, max_pool_connections=_POOL)
        kwargs: dict[str, Any] = {"config": config}
        if self.options.region:
            kwargs["region_name"] = self.options.region
        if self.options.endpoint_url:
            kwargs["endpoint_url"] = self.options.endpoint_url
        try:
            self.sqs = await self._client(session, "sqs", kwargs)
            if self.options.tracked:
                self.dynamodb = await self._client(session, "dynamodb", kwargs)
            if self.options.claim_check is not None:
                self.s3 = await self._client(session, "s3", kwargs)
        except NoRegionError:
            await self.close()
            raise ConfigurationError(
                "no AWS region for the SQS engine: add region=... to the URL or set "
                "AWS_DEFAULT_REGION"
            ) from None

    async def _client(self, session: Any, service: str, kwargs: dict[str, Any]) -> Any:
        client = await self._stack.enter_async_context(session.create_client(service, **kwargs))
        client.meta.events.register("before-send", self.counter.on_send)
        return client

    async def close(self) -> None:
        """Close every client."""
        await self._stack.aclose()


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""
