"""The worker runtime: fetch, run with timeouts, heartbeat leases, settle, shut down gracefully."""

from conveyor.worker.runner import Worker

__all__ = ["Worker"]
