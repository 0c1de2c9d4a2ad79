"""The demo's fault injection: a storage whose downloads fail a set number of times.

Real storage fails like this now and then (a reset connection, a throttled request); the
demo makes it happen on purpose so that retries with backoff can be watched. The plan is a
JSON file, and the failure counters are files next to it, so every worker process of the
demo agrees on how many failures are left. Nothing here is used outside the demo and tests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from image_pipeline.storage import Storage


@dataclass(frozen=True)
class FaultPlan:
    """Which downloads fail: ``flaky`` maps a storage key to how many times its download
    fails before it succeeds. ``state_dir`` holds the counters."""

    flaky: dict[str, int] = field(default_factory=dict)
    state_dir: Path = Path("faults")

    def save(self, path: Path) -> None:
        """Write the plan as JSON (read by worker processes through ``PIPELINE_FAULTS``)."""
        doc = {"flaky": self.flaky, "state_dir": str(self.state_dir)}
        path.write_text(json.dumps(doc, indent=2))

    @classmethod
    def load(cls, path: Path) -> FaultPlan:
        """Read a plan written by :meth:`save`."""
        doc = json.loads(path.read_text())
        return cls({str(k): int(v) for k, v in doc["flaky"].items()}, Path(doc["state_dir"]))

    def failures_so_far(self, key: str) -> int:
        """How many injected failures the download of ``key`` has had."""
        try:
            return int(self._counter(key).read_text())
        except FileNotFoundError:
            return 0

    def _counter(self, key: str) -> Path:
        return self.state_dir / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".count")

    def take_failure(self, key: str) -> int | None:
        """Count one more failure of ``key`` and return its number, or ``None`` once the
        planned failures are used up. One job runs one attempt at a time (its lease), so the
        read-then-write of a counter never races with itself."""
        planned = self.flaky.get(key, 0)
        done = self.failures_so_far(key)
        if done >= planned:
            return None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._counter(key).write_text(str(done + 1))
        return done + 1


class FlakyStorage:
    """Wraps a storage; ``get`` of a planned key raises ``ConnectionError`` until its
    planned failures are used up. Writes are never affected."""

    def __init__(self, inner: Storage, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan

    def __repr__(self) -> str:
        return f"FlakyStorage({self.inner!r}, {len(self.plan.flaky)} flaky keys)"

    def get(self, key: str) -> bytes:
        """Fail as planned, then download for real."""
        n = self.plan.take_failure(key)
        if n is not None:
            raise ConnectionError(
                f"injected fault {n} of {self.plan.flaky[key]}: "
                f"connection reset while downloading {key}"
            )
        return self.inner.get(key)

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store for real."""
        self.inner.put(key, data, content_type)

    def exists(self, key: str) -> bool:
        """Check for real."""
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        """Delete for real."""
        self.inner.delete(key)

    def location(self, key: str = "") -> str:
        """The wrapped storage's location."""
        return self.inner.location(key)
