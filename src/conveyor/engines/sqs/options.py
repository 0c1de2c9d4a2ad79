"""The SQS engine's URL: ``sqs://?region=...&endpoint_url=...&prefix=...`` and its options.

Every timing, size and count a user may tune is a named option here with its default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conveyor.errors import ConfigurationError

#: SQS allows at most this many receives before its redrive policy moves a message to the
#: DLQ; Conveyor counts attempts itself (with a state table), so this is a crash-loop
#: safety net and sits above the usual ``retries``.
DEFAULT_MAX_RECEIVE_COUNT = 10
#: Created queues accept messages up to this size (SQS's own maximum and default: 1 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
#: The longest long poll SQS allows.
MAX_WAIT_SECONDS = 20
#: SQS's limit on a message's visibility timeout, and so on any delay or backoff step.
SQS_MAX_VISIBILITY = 43_200
#: Payloads above this size go to S3 when claim-check is on (SQS bills per 64 KiB chunk).
DEFAULT_CLAIM_CHECK_THRESHOLD = 64 * 1024
#: Seconds between checks of the state table for jobs due by the app clock that SQS still
#: hides (sub-second backoffs, expired leases, clocks that are not the wall clock). A check
#: also runs whenever the engine knows a job came due.
DEFAULT_SWEEP_INTERVAL = 5.0
#: Seconds a worker keeps messages it received beyond what it could start (kept to honour
#: priorities among them) before giving them back to the queue.
DEFAULT_PREFETCH_HOLD = 2.0
#: Seconds a worker trusts its cached paused/resumed flag of a queue.
DEFAULT_PAUSE_CHECK_INTERVAL = 5.0
#: Seconds within which a message may arrive before the state-table write that makes it
#: valid (the engine sends first, then writes); such messages are put back, not deleted.
DEFAULT_COMMIT_GRACE = 60.0
#: Seconds between checks of a DLQ for messages SQS moved there itself (maxReceiveCount).
DEFAULT_DLQ_CHECK_INTERVAL = 30.0
#: Dead messages a delivery-only DLQ listing reads at most.
DEFAULT_DLQ_SCAN_LIMIT = 1000
DEFAULT_DLQ_SUFFIX = "-dlq"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_GROUP_BY = ("queue", "task", "job")
#: SQS queue names: letters, digits, hyphens and underscores, 80 characters at most.
_SQS_NAME = re.compile(r"^[A-Za-z0-9_-]*$")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")


@dataclass(frozen=True)
class SQSOptions:
    """A parsed ``sqs://`` URL. See docs/aws.md for what each option does."""

    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    prefix: str = ""
    create: bool = False
    fifo: frozenset[str] | bool = False
    group_by: str = "queue"
    state_table: str | None = None
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    wait_seconds: int = MAX_WAIT_SECONDS
    max_delay: float = SQS_MAX_VISIBILITY
    claim_check: str | None = None
    claim_check_threshold: int = DEFAULT_CLAIM_CHECK_THRESHOLD
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    prefetch_hold: float = DEFAULT_PREFETCH_HOLD
    pause_check_interval: float = DEFAULT_PAUSE_CHECK_INTERVAL
    commit_grace: float = DEFAULT_COMMIT_GRACE
    dlq_check_interval: float = DEFAULT_DLQ_CHECK_INTERVAL
    dlq_scan_limit: int = DEFAULT_DLQ_SCAN_LIMIT
    dlq_suffix: str = DEFAULT_DLQ_SUFFIX

    @property
    def tracked(self) -> bool:
        """Whether a DynamoDB state table holds job records (else: delivery-only mode)."""
        return self.state_table is not None

    def is_fifo(self, queue: str) -> bool:
        """Whether ``queue`` maps to a FIFO queue."""
        if isinstance(self.fifo, bool):
            return self.fifo
        return queue in self.fifo

    @property
    def claim_check_bucket(self) -> tuple[str, str] | None:
        """``(bucket, key prefix)`` of the claim-check store, if configured."""
        if self.claim_check is None:
            return None
        parts = urlsplit(self.claim_check)
        return parts.netloc, parts.path.strip("/")

    @classmethod
    def from_url(cls, url: str) -> SQSOptions:
        """Parse ``sqs://?option=value&...``; raise :class:`ConfigurationError` when bad."""
        parts = urlsplit(url)
        if parts.scheme != "sqs":
            raise ConfigurationError(f"not an sqs:// URL: {url!r}")
        if parts.netloc or parts.path not in ("", "/"):
            raise ConfigurationError(
                "SQS URLs carry everything in the query, e.g. "
                f"sqs://?region=eu-west-1&prefix=myapp-; got {url!r}"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        known = set(cls.__dataclass_fields__)
        unknown = set(query) - known
        if unknown:
            raise ConfigurationError(
                f"unknown SQS URL options: {sorted(unknown)}; known: {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for name, text in query.items():
            values[name] = _parse(name, text)
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        """Check the values against SQS's and DynamoDB's limits."""
        if not _SQS_NAME.match(self.prefix) or len(self.prefix) > 40:
            raise ConfigurationError(
                f"SQS prefix {self.prefix!r} may hold letters, digits, '-' and '_' only "
                "(at most 40 characters), since it becomes part of queue names"
            )
        if not _SQS_NAME.match(self.dlq_suffix) or not self.dlq_suffix:
            raise ConfigurationError(f"dlq_suffix {self.dlq_suffix!r} must be a non-empty name")
        if self.group_by not in _GROUP_BY:
            raise ConfigurationError(f"group_by must be one of {_GROUP_BY}, got {self.group_by!r}")
        if self.state_table is not None and not _TABLE_NAME.match(self.state_table):
            raise ConfigurationError(
                f"state_table {self.state_table!r} is not a valid DynamoDB table name "
                "(3-255 letters, digits, '_', '-', '.')"
            )
        if not 1 <= self.max_receive_count <= 1000:
            raise ConfigurationError(
                f"max_receive_count must be 1-1000 (SQS's range), got {self.max_receive_count}"
            )
        if not 1024 <= self.max_message_bytes <= DEFAULT_MAX_MESSAGE_BYTES:
            raise ConfigurationError(
                f"max_message_bytes must be 1024-1048576 (SQS's range), "
                f"got {self.max_message_bytes}"
            )
        if not 0 <= self.wait_seconds <= MAX_WAIT_SECONDS:
            raise ConfigurationError(f"wait_seconds must be 0-20, got {self.wait_seconds}")
        if not 0 < self.max_delay <= SQS_MAX_VISIBILITY:
            raise ConfigurationError(
                f"max_delay must be between 0 and {SQS_MAX_VISIBILITY} seconds (12 hours, the "
                f"longest SQS can hide a message), got {self.max_delay}"
            )
        if self.claim_check is not None:
            parts = urlsplit(self.claim_check)
            if parts.scheme != "s3" or not parts.netloc:
                raise ConfigurationError(
                    f"claim_check must look like s3://bucket/prefix, got {self.claim_check!r}"
                )


_INTS = {"max_receive_count", "max_message_bytes", "wait_seconds", "claim_check_threshold"}
_INTS |= {"dlq_scan_limit"}
_FLOATS = {"max_delay", "sweep_interval", "prefetch_hold", "pause_check_interval"}
_FLOATS |= {"commit_grace", "dlq_check_interval"}


def _parse(name: str, text: str) -> Any:
    try:
        if name in _INTS:
            return int(text)
        if name in _FLOATS:
            value = float(text)
            if value < 0:
                raise ValueError("must not be negative")
            return value
    except ValueError as exc:
        raise ConfigurationError(f"SQS URL option {name}={text!r}: {exc}") from None
    if name == "create":
        return _bool(name, text)
    if name == "fifo":
        if text.lower() in _TRUE or text.lower() == "all":
            return True
        if text.lower() in _FALSE or text == "":
            return False
        return frozenset(q.strip() for q in text.split(",") if q.strip())
    return text or None if name in ("region", "endpoint_url", "profile", "state_table") else text


def _bool(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigurationError(f"SQS URL option {name} must be true or false, got {text!r}")
