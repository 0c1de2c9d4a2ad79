"""SQS queues: name mapping, lookup and creation (with a DLQ and redrive policy), pause flags,
and the batched operations (send, receive, delete, change visibility: 10 per request).

A Conveyor queue ``media`` with prefix ``app-`` is the SQS queue ``app-media`` and its DLQ
``app-media-dlq`` (``app-media.fifo`` and ``app-media-dlq.fifo`` when FIFO).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.engines.sqs.aws import Clients, error_code
from conveyor.engines.sqs.envelope import Delivery
from conveyor.engines.sqs.options import SQS_MAX_VISIBILITY, SQSOptions
from conveyor.errors import ConfigurationError

log = logging.getLogger("conveyor.engines.sqs")

#: SQS's limit on entries per batch request and messages per receive.
BATCH = 10
#: SQS's limit on the total size of one SendMessageBatch request.
BATCH_BYTES = 1_048_576
#: Messages stay in created queues this long (SQS's maximum, 14 days): a job waiting in a
#: backlog must not expire silently after SQS's default of 4 days.
RETENTION_SECONDS = 1_209_600
#: The tag that marks a paused queue.
PAUSED_TAG = "conveyor-paused"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


@dataclass(frozen=True)
class QueueInfo:
    """One Conveyor queue as it exists in SQS."""

    name: str
    sqs_name: str
    url: str
    arn: str
    fifo: bool
    max_message_bytes: int
    dlq_url: str | None
    dlq_name: str | None
    #: The redrive policy's maxReceiveCount; ``None`` when the queue has no redrive policy.
    max_receive_count: int | None


@dataclass
class SendEntry:
    """One message to send."""

    body: str
    delay: int = 0
    group: str | None = None
    dedup: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


class Queues:
    """Finds (or creates) queues and runs batched operations on them."""

    def __init__(self, options: SQSOptions, clients: Clients) -> None:
        self.options = options
        self.clients = clients
        self._info: dict[str, QueueInfo] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._paused: dict[str, tuple[bool, float]] = {}

    # -- names ------------------------------------------------------------------------------

    def sqs_name(self, queue: str, dlq: bool = False) -> str:
        """The SQS name of ``queue`` (or of its DLQ)."""
        if not re.match(r"^[A-Za-z0-9_-]+$", queue):
            raise ConfigurationError(
                f"queue name {queue!r} cannot map to an SQS queue: use letters, digits, "
                "'-' and '_' only"
            )
        if queue.endswith(self.options.dlq_suffix):
            raise ConfigurationError(
                f"queue name {queue!r} ends with the DLQ suffix {self.options.dlq_suffix!r}; "
                "pick another name or set dlq_suffix"
            )
        name = self.options.prefix + queue + (self.options.dlq_suffix if dlq else "")
        if self.options.is_fifo(queue):
            name += ".fifo"
        if not _NAME.match(name.removesuffix(".fifo")):
            raise ConfigurationError(f"SQS queue name {name!r} is longer than 80 characters")
        return name

    def base(self, queue: str) -> str:
        """The key Conveyor uses for ``queue`` in the state table (its prefixed name)."""
        return self.options.prefix + queue

    def logical(self, sqs_name: str) -> str | None:
        """The Conveyor queue behind an SQS queue name, or ``None`` if it is not one of ours
        (another prefix, or a DLQ)."""
        name = sqs_name.removesuffix(".fifo")
        if not name.startswith(self.options.prefix) or name.endswith(self.options.dlq_suffix):
            return None
        return name[len(self.options.prefix) :] or None

    def from_arn(self, arn: str) -> str:
        """The Conveyor queue behind a queue ARN (as in Lambda's ``eventSourceARN``)."""
        sqs_name = arn.rsplit(":", 1)[-1]
        queue = self.logical(sqs_name)
        if queue is None:
            raise ConfigurationError(
                f"SQS queue {sqs_name!r} is not a Conveyor queue of prefix "
                f"{self.options.prefix!r} (or it is a DLQ)"
            )
        return queue

    # -- lookup and creation ----------------------------------------------------------------

    async def get(self, queue: str) -> QueueInfo:
        """The queue's URLs and limits, looked up once (and created if ``create`` is on)."""
        info = self._info.get(queue)
        if info is not None:
            return info
        lock = self._locks.setdefault(queue, asyncio.Lock())
        async with lock:
            info = self._info.get(queue)
            if info is None:
                info = await self._lookup(queue)
                self._info[queue] = info
            return info

    async def _url(self, name: str) -> str | None:
        try:
            response = await self.clients.sqs.get_queue_url(QueueName=name)
        except Exception as exc:
            if error_code(exc) in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                return None
            raise
        return str(response["QueueUrl"])

    async def _lookup(self, queue: str) -> QueueInfo:
        name = self.sqs_name(queue)
        url = await self._url(name)
        if url is None:
            if not self.options.create:
                raise ConfigurationError(
                    f"SQS queue {name!r} does not exist; create it with its DLQ (see "
                    "docs/aws.md) or add create=true to the engine URL"
                )
            url = await self._create(queue)
        attributes = await self._attributes(url, ["All"])
        policy = json.loads(attributes.get("RedrivePolicy") or "{}")
        dlq_url: str | None = None
        dlq_name: str | None = None
        if policy.get("deadLetterTargetArn"):
            dlq_name = str(policy["deadLetterTargetArn"]).rsplit(":", 1)[-1]
            dlq_url = await self._url(dlq_name)
        else:
            log.warning(
                "SQS queue %s has no redrive policy: a job whose worker dies every time is not "
                "moved to a DLQ by SQS (Conveyor's crash-loop safety net is off)",
                name,
            )
            dlq_name = self.sqs_name(queue, dlq=True)
            dlq_url = await self._url(dlq_name)
        if dlq_url is None and not self.options.tracked:
            raise ConfigurationError(
                f"SQS queue {name!r} has no dead-letter queue; without a state table dead jobs "
                f"live in the DLQ: create {self.sqs_name(queue, dlq=True)!r} or set create=true"
            )
        count = policy.get("maxReceiveCount")
        return QueueInfo(
            name=queue,
            sqs_name=name,
            url=url,
            arn=attributes["QueueArn"],
            fifo=attributes.get("FifoQueue") == "true",
            max_message_bytes=int(attributes.get("MaximumMessageSize", BATCH_BYTES)),
            dlq_url=dlq_url,
            dlq_name=dlq_name if dlq_url else None,
            max_receive_count=None if count is None else int(count),
        )

    async def _create(self, queue: str) -> str:
        fifo = self.options.is_fifo(queue)
        common = {"MessageRetentionPeriod": str(RETENTION_SECONDS)}
        if fifo:
            common["FifoQueue"] = "true"
        dlq_url = await self._create_one(self.sqs_name(queue, dlq=True), dict(common))
        dlq_arn = (await self._attributes(dlq_url, ["QueueArn"]))["QueueArn"]
        policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": self.options.max_receive_count}
        attributes = {
            **common,
            "MaximumMessageSize": str(self.options.max_message_bytes),
            "RedrivePolicy": json.dumps(policy),
        }
        url = await self._create_one(self.sqs_name(queue), attributes)
        log.info("created SQS queue %s with DLQ %s", self.sqs_name(queue), dlq_arn)
        return url

    async def _create_one(self, name: str, attributes: dict[str, str]) -> str:
        try:
            response = await self.clients.sqs.create_queue(QueueName=name, Attributes=attributes)
        except Exception as exc:
            # Another process created it first with other attributes: use theirs.
            if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
                raise
            url = await self._url(name)
            if url is None:
                raise
            return url
        return str(response["QueueUrl"])

    async def _attributes(self, url: str, names: list[str]) -> dict[str, str]:
        response = await self.clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        return dict(response.get("Attributes", {}))

    async def counts(self, queue: str) -> dict[str, int]:
        """SQS's approximate counts of the queue and its DLQ (``dlq_*`` keys)."""
        info = await self.get(queue)
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        found = await self._attributes(info.url, names)
        out = {name: int(found.get(name, 0)) for name in names}
        if info.dlq_url:
            dead = await self._attributes(info.dlq_url, names)
            out.update({f"dlq_{name}": int(dead.get(name, 0)) for name in names})
        return out

    async def known(self) -> list[str]:
        """Conveyor queues that exist in SQS under this prefix (DLQs left out)."""
        names: list[str] = []
        kwargs: dict[str, Any] = {"MaxResults": 1000}
        if self.options.prefix:
            kwargs["QueueNamePrefix"] = self.options.prefix
        while True:
            response = await self.clients.sqs.list_queues(**kwargs)
            for url in response.get("QueueUrls", []):
                queue = self.logical(str(url).rsplit("/", 1)[-1])
                if queue is not None:
                    names.append(queue)
            token = response.get("NextToken")
            if not token:
                return sorted(set(names))
            kwargs["NextToken"] = token

    # -- pause flags (queue tags) -----------------------------------------------------------

    async def is_paused(self, queue: str, fresh: bool = False) -> bool:
        """Whether ``queue`` is paused; cached for ``pause_check_interval`` seconds."""
        cached = self._paused.get(queue)
        now = time.monotonic()
        if not fresh and cached is not None and now - cached[1] < self.options.pause_check_interval:
            return cached[0]
        info = await self.get(queue)
        response = await self.clients.sqs.list_queue_tags(QueueUrl=info.url)
        paused = bool(response.get("Tags", {}).get(PAUSED_TAG) == "true")
        self._paused[queue] = (paused, now)
        return paused

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume ``queue`` (a tag on the SQS queue, seen by every worker)."""
        info = await self.get(queue)
        if paused:
            await self.clients.sqs.tag_queue(QueueUrl=info.url, Tags={PAUSED_TAG: "true"})
        else:
            await self.clients.sqs.untag_queue(QueueUrl=info.url, TagKeys=[PAUSED_TAG])
        self._paused[queue] = (paused, time.monotonic())

    # -- batched operations -----------------------------------------------------------------

    async def receive(
        self, queue: str, limit: int, visibility: float, wait: int = 0, dlq: bool = False
    ) -> list[Delivery]:
        """Receive up to ``limit`` (at most 10) messages, hidden for ``visibility`` seconds."""
        info = await self.get(queue)
        url = info.dlq_url if dlq else info.url
        if url is None:
            return []
        response = await self.clients.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=max(1, min(BATCH, limit)),
            VisibilityTimeout=visibility_seconds(visibility),
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return [Delivery.from_sqs(queue, m) for m in response.get("Messages", [])]

    async def send(
        self, queue: str, entries: Sequence[SendEntry], dlq: bool = False
    ) -> list[str | None]:
        """Send messages in batches; per entry ``None`` if sent, else the error code."""
        info = await self.get(queue)
        url = info.dlq_url if dlq else info.url
        if url is None:
            raise ConfigurationError(f"queue {queue!r} has no dead-letter queue in SQS")

        def entry(i: int, e: SendEntry) -> dict[str, Any]:
            out: dict[str, Any] = {"Id": str(i), "MessageBody": e.body}
            if e.delay and not info.fifo:  # FIFO queues take no per-message delay
                out["DelaySeconds"] = min(int(e.delay), 900)
            if info.fifo:
                out["MessageGroupId"] = e.group or "conveyor"
                out["MessageDeduplicationId"] = e.dedup or str(time.time_ns())
            if e.attributes:
                out["MessageAttributes"] = {
                    k: {"DataType": "String", "StringValue": v} for k, v in e.attributes.items()
                }
            return out

        built = [entry(i, e) for i, e in enumerate(entries)]
        chunks: list[list[dict[str, Any]]] = []
        size = 0
        for item in built:
            item_size = len(item["MessageBody"]) + sum(
                len(k) + len(v["StringValue"]) for k, v in item.get("MessageAttributes", {}).items()
            )
            if not chunks or len(chunks[-1]) == BATCH or size + item_size > BATCH_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += item_size
        results: list[str | None] = [None] * len(entries)

        async def send_chunk(chunk: list[dict[str, Any]]) -> None:
            response = await self.clients.sqs.send_message_batch(QueueUrl=url, Entries=chunk)
            for failed in response.get("Failed", []):
                results[int(failed["Id"])] = str(failed.get("Code", "Failed"))

        await asyncio.gather(*(send_chunk(c) for c in chunks))
        return results

    async def delete(
        self, queue: str, receipts: Sequence[str], dlq: bool = False
    ) -> list[str | None]:
        """Delete messages in batches; per receipt ``None`` if deleted, else the error code."""
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        return await self._batch(queue, "delete_message_batch", entries, dlq)

    async def change_visibility(
        self, queue: str, changes: Sequence[tuple[str, float]], dlq: bool = False
    ) -> list[str | None]:
        """Set messages' visibility timeouts in batches; ``None`` per success, else the code."""
        entries = [
            {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": visibility_seconds(s)}
            for i, (r, s) in enumerate(changes)
        ]
        return await self._batch(queue, "change_message_visibility_batch", entries, dlq)

    async def _batch(
        self, queue: str, operation: str, entries: list[dict[str, Any]], dlq: bool
    ) -> list[str | None]:
        if not entries:
            return []
        info = await self.get(queue)
        url = info.dlq_url if dlq else info.url
        results: list[str | None] = [None] * len(entries)

        async def run(chunk: list[dict[str, Any]]) -> None:
            try:
                response = await getattr(self.clients.sqs, operation)(QueueUrl=url, Entries=chunk)
            except Exception as exc:
                code = error_code(exc)
                if not code:
                    raise
                for e in chunk:  # a whole-batch refusal (e.g. one invalid value) fails each
                    results[int(e["Id"])] = code
                return
            for failed in response.get("Failed", []):
                results[int(failed["Id"])] = str(failed.get("Code", "Failed"))

        await asyncio.gather(*(run(entries[i : i + BATCH]) for i in range(0, len(entries), BATCH)))
        return results


def visibility_seconds(seconds: float) -> int:
    """SQS visibility timeouts are whole seconds from 0 to 12 hours; round up, so a message
    never shows before the time Conveyor asked for."""
    return max(0, min(SQS_MAX_VISIBILITY, math.ceil(seconds - 1e-6)))
