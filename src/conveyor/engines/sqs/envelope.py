"""What travels in an SQS message (the envelope) and what a receive hands back (a delivery).

With a state table the envelope is a pointer: queue, job id and a *nonce* naming the one
message that currently stands for the job (older or duplicate messages are recognised as
stale by their nonce). Without a state table the envelope carries the whole job: payload,
options, attempts made and the failure log, re-sent with each retry since SQS messages are
immutable. JSON, ASCII only (SQS refuses some Unicode code points in bodies).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from conveyor.records import Attempt

FORMAT = 1
#: Message attribute that marks a message Conveyor itself put in a DLQ (vs SQS's redrive).
DEAD_MARK = "conveyor-dead"
#: Message attribute naming the job's task, for people reading the queue in the console.
TASK_ATTRIBUTE = "conveyor-task"

_seq = itertools.count()


def dedup_id(text: str) -> str:
    """A FIFO deduplication id for ``text``: itself when SQS accepts it, else its hash."""
    if len(text) <= 128 and all(33 <= ord(c) <= 126 for c in text):
        return text
    return hashlib.sha256(text.encode()).hexdigest()


def new_nonce() -> str:
    """A fresh message nonce."""
    return os.urandom(8).hex()


@dataclass
class Envelope:
    """The body of a Conveyor message.

    ``kind`` is ``new`` for a job's first message and ``re`` for a message that replaces
    message ``prev`` (a redrive, a re-send); the difference tells a stale duplicate from a
    replacement whose state-table write has not landed yet.
    """

    queue: str
    id: str
    nonce: str
    priority: int = 0
    run_at: float = 0.0
    kind: str = "new"
    prev: str | None = None
    # The whole job, carried only without a state table:
    task: str | None = None
    payload: bytes | None = None
    payload_ref: str | None = None
    created_at: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    failures: list[Attempt] = field(default_factory=list)
    finished_at: float | None = None

    def encode(self) -> str:
        """JSON text (ASCII) of this envelope."""
        doc: dict[str, Any] = {
            "conveyor": FORMAT,
            "queue": self.queue,
            "id": self.id,
            "nonce": self.nonce,
            "priority": self.priority,
            "run_at": self.run_at,
            "kind": self.kind,
        }
        if self.prev is not None:
            doc["prev"] = self.prev
        if self.task is not None:
            doc["task"] = self.task
            doc["created_at"] = self.created_at
            doc["options"] = self.options
            doc["attempts"] = self.attempts
            doc["failures"] = [a.to_dict() for a in self.failures]
            if self.finished_at is not None:
                doc["finished_at"] = self.finished_at
            if self.payload_ref is not None:
                doc["payload_ref"] = self.payload_ref
            elif self.payload is not None:
                try:
                    doc["payload"] = self.payload.decode("utf-8")
                except UnicodeDecodeError:
                    doc["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Envelope:
        """Parse a body written by :meth:`encode`; ``ValueError`` if it is not one."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("conveyor") != FORMAT:
            raise ValueError("not a Conveyor message")
        payload: bytes | None = None
        if "payload" in doc:
            payload = str(doc["payload"]).encode("utf-8")
        elif "payload_b64" in doc:
            payload = base64.b64decode(doc["payload_b64"])
        return cls(
            queue=str(doc["queue"]),
            id=str(doc["id"]),
            nonce=str(doc["nonce"]),
            priority=int(doc.get("priority", 0)),
            run_at=float(doc.get("run_at", 0.0)),
            kind=str(doc.get("kind", "new")),
            prev=doc.get("prev"),
            task=doc.get("task"),
            payload=payload,
            payload_ref=doc.get("payload_ref"),
            created_at=float(doc.get("created_at", 0.0)),
            options=dict(doc.get("options", {})),
            attempts=int(doc.get("attempts", 0)),
            failures=[Attempt.from_dict(a) for a in doc.get("failures", [])],
            finished_at=doc.get("finished_at"),
        )


@dataclass
class Delivery:
    """One received message: from ``ReceiveMessage`` or from a Lambda SQS event record."""

    queue: str
    message_id: str
    receipt: str
    body: str
    receive_count: int = 1
    sent_at: float = 0.0
    first_receive_at: float | None = None
    group: str | None = None
    dead_mark: bool = False
    received_at: float = field(default_factory=time.monotonic)
    seq: int = field(default_factory=lambda: next(_seq))
    envelope: Envelope | None = None
    problem: str = ""

    def __post_init__(self) -> None:
        try:
            self.envelope = Envelope.decode(self.body)
        except (ValueError, KeyError, TypeError) as exc:
            self.problem = f"the message body is not a Conveyor job ({exc})"

    @property
    def priority(self) -> int:
        """The job's priority as carried by the message (0 if unknown)."""
        return self.envelope.priority if self.envelope else 0

    @property
    def run_at(self) -> float:
        """The job's due time as carried by the message."""
        return self.envelope.run_at if self.envelope else 0.0

    @classmethod
    def from_sqs(cls, queue: str, message: dict[str, Any]) -> Delivery:
        """Wrap a message from ``ReceiveMessage`` (asked with all system attributes)."""
        attributes = message.get("Attributes", {})
        custom = message.get("MessageAttributes", {})
        return cls(
            queue=queue,
            message_id=message["MessageId"],
            receipt=message["ReceiptHandle"],
            body=message["Body"],
            **_system(attributes),
            dead_mark=DEAD_MARK in custom,
        )

    @classmethod
    def from_lambda(cls, queue: str, record: dict[str, Any]) -> Delivery:
        """Wrap a record of a Lambda SQS event (``Records[i]``)."""
        custom = record.get("messageAttributes", {}) or {}
        return cls(
            queue=queue,
            message_id=record["messageId"],
            receipt=record["receiptHandle"],
            body=record["body"],
            **_system(record.get("attributes", {}) or {}),
            dead_mark=DEAD_MARK in custom,
        )


def _system(attributes: dict[str, Any]) -> dict[str, Any]:
    first = attributes.get("ApproximateFirstReceiveTimestamp")
    return {
        "receive_count": int(attributes.get("ApproximateReceiveCount", 1)),
        "sent_at": int(attributes.get("SentTimestamp", 0)) / 1000,
        "first_receive_at": None if first is None else int(first) / 1000,
        "group": attributes.get("MessageGroupId"),
    }
