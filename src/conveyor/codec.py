"""Payload and result encoding: JSON only, validated by the task's declared types at both ends."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from conveyor.errors import PayloadInvalid, PayloadTooLarge

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024


class Codec:
    """Validates and encodes one task's payloads and results.

    The payload type may be anything pydantic validates: a model, a dataclass, a TypedDict,
    a primitive. Encoding happens at enqueue (so a bad payload is refused before anything is
    stored) and decoding validates again in the worker.
    """

    def __init__(self, task: str, payload_type: Any, result_type: Any) -> None:
        self.task = task
        self.payload_type = payload_type
        self._payload = TypeAdapter(payload_type)
        self._result = TypeAdapter(result_type)

    def encode_payload(self, value: Any, limit: int | None) -> bytes:
        """Validate ``value`` and return its JSON bytes; raise a clear error if it is bad."""
        try:
            validated = self._payload.validate_python(value)
            data = self._payload.dump_json(validated)
        except ValidationError as exc:
            raise PayloadInvalid(
                f"payload for task {self.task!r} does not match {_type_name(self.payload_type)}: "
                f"{_summary(exc)}"
            ) from exc
        except (TypeError, ValueError) as exc:  # e.g. a value that is not JSON-able
            raise PayloadInvalid(
                f"payload for task {self.task!r} cannot be encoded: {exc}"
            ) from exc
        if limit is not None and len(data) > limit:
            raise PayloadTooLarge(len(data), limit, self.task)
        return data

    def decode_payload(self, data: bytes) -> Any:
        """Parse and validate stored payload bytes; raises :class:`PayloadInvalid`."""
        try:
            return self._payload.validate_json(data)
        except ValidationError as exc:
            raise PayloadInvalid(
                f"stored payload for task {self.task!r} is not a valid "
                f"{_type_name(self.payload_type)}: {_summary(exc)}"
            ) from exc

    def encode_result(self, value: Any) -> bytes:
        """JSON bytes of a task's return value."""
        return self._result.dump_json(value)

    def decode_result(self, data: bytes | None) -> Any:
        """The return value stored by :meth:`encode_result` (``None`` if there was none)."""
        if data is None:
            return None
        return self._result.validate_json(data)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _summary(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        problems.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")
