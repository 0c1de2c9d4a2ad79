"""Error types raised by Conveyor.

Every error carries a message a user can act on: what was wrong, what was
expected and what to do about it.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Base class of every error Conveyor raises."""


class ConfigurationError(ConveyorError):
    """The app, a task or an engine URL is configured in a way that cannot work."""


class PayloadInvalid(ConveyorError):
    """A payload does not match the type the task declares; nothing was stored."""


class PayloadTooLarge(ConveyorError):
    """An encoded payload is larger than the configured limit; nothing was stored."""

    def __init__(self, size: int, limit: int, task: str) -> None:
        self.size = size
        self.limit = limit
        self.task = task
        super().__init__(
            f"payload for task {task!r} is {size:,} bytes, over the limit of {limit:,} bytes. "
            "Pass identifiers (an image id, a storage key) instead of the data itself, "
            "or raise max_payload_bytes on the task or the app."
        )


class UnknownTask(ConveyorError):
    """A job names a task that this app does not define."""


class JobNotFound(ConveyorError):
    """No job with this id exists in the queue (it may have been purged or trimmed)."""


class JobFailed(ConveyorError):
    """Raised by ``Job.result()`` when the job ended in the dead-letter queue."""


class Unrecoverable(ConveyorError):
    """Raise from a task to skip the remaining retries and dead-letter the job at once."""


class JobTimeout(ConveyorError):
    """An attempt ran past its task's timeout and was stopped."""


class EngineUnavailable(ConveyorError):
    """The engine's server cannot be reached or refused the operation."""
