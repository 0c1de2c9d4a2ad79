"""Optional HMAC-SHA256 signing of jobs, with key ids so keys can be rotated.

With signing on, every enqueued job carries ``options["sig"] = {"kid": ..., "mac": ...}``,
a MAC over its queue, id, task and payload. Workers verify it before decoding anything; a job
that is unsigned, signed with an unknown key, or tampered with is dead-lettered with the
reason and never run. Rotate by adding the new key, making it ``current``, and removing the
old key once no job signed with it remains.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from conveyor.errors import ConfigurationError, ConveyorError
from conveyor.records import JobRecord, NewJob

MIN_KEY_BYTES = 16


class SignatureInvalid(ConveyorError):
    """A job's signature is missing, made with an unknown key, or does not match."""


@dataclass(frozen=True)
class Signing:
    """Signing keys by id, and the id of the one used for new jobs."""

    keys: Mapping[str, bytes | str]
    current: str

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ConfigurationError(f"signing key id {self.current!r} is not among the keys")
        for kid, key in self.keys.items():
            if len(_bytes(key)) < MIN_KEY_BYTES:
                raise ConfigurationError(
                    f"signing key {kid!r} is shorter than {MIN_KEY_BYTES} bytes; "
                    "use e.g. secrets.token_hex(32)"
                )

    def sign(self, job: NewJob) -> None:
        """Add the signature of ``job`` to its options."""
        mac = self._mac(self.current, job.queue, job.id, job.task, job.payload)
        job.options["sig"] = {"kid": self.current, "mac": mac}

    def verify(self, record: JobRecord) -> None:
        """Raise :class:`SignatureInvalid` unless ``record`` carries a valid signature."""
        sig = record.options.get("sig")
        if not isinstance(sig, dict) or "kid" not in sig or "mac" not in sig:
            raise SignatureInvalid("the job is not signed and this app requires signatures")
        kid = str(sig["kid"])
        if kid not in self.keys:
            raise SignatureInvalid(f"the job is signed with unknown key id {kid!r}")
        expected = self._mac(kid, record.queue, record.id, record.task, record.payload)
        # As bytes: compare_digest raises TypeError on str with non-ASCII characters.
        if not hmac.compare_digest(expected.encode(), str(sig["mac"]).encode()):
            raise SignatureInvalid("the job's signature does not match: it was altered")

    def _mac(self, kid: str, queue: str, job_id: str, task: str, payload: bytes) -> str:
        mac = hmac.new(_bytes(self.keys[kid]), digestmod=hashlib.sha256)
        for part in (queue.encode(), job_id.encode(), task.encode(), payload):
            mac.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguity
            mac.update(part)
        return mac.hexdigest()


def _bytes(key: bytes | str) -> bytes:
    return key if isinstance(key, bytes) else key.encode()
