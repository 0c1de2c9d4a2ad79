"""Coverage-guided fuzzing of the worker's decode path with atheris (optional).

``pip install atheris`` then ``python -m chaos.fuzz_decode -atheris_runs=200000``. Feeds
arbitrary bytes to the ``chaos.typed`` task's payload decoder and to a signed job's
verification: anything but a decoded payload, ``PayloadInvalid`` or ``SignatureInvalid`` is
a crash, which atheris reports with the input that caused it. The hypothesis fuzzer in
tests/chaos/test_hostile_input.py covers the same path in CI without atheris.
"""

from __future__ import annotations

import contextlib
import sys

import conveyor
from chaos import tasks
from conveyor.records import JobRecord, State

SIGNING = conveyor.Signing({"k1": "0123456789abcdef0123456789abcdef"}, current="k1")


def one_input(data: bytes) -> None:
    """Decode ``data`` as a payload and verify it as a signed job's payload."""
    with contextlib.suppress(conveyor.PayloadInvalid):
        tasks.typed.codec.decode_payload(data)
    split = len(data) // 2
    record = JobRecord(
        "hostile", "j", tasks.typed.name, data[:split], State.ACTIVE,
        options={"sig": {"kid": "k1", "mac": data[split:].decode(errors="replace")}},
    )  # fmt: skip
    with contextlib.suppress(conveyor.SignatureInvalid):
        SIGNING.verify(record)


def main() -> None:
    """Run atheris on :func:`one_input`."""
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        sys.exit(2)
    atheris.instrument_all()  # coverage guidance over every loaded module
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
