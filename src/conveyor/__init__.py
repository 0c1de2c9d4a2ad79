"""Conveyor: typed background jobs and message queues with one API over SQLite, Redis and SQS.

Quick start::

    import conveyor
    from pydantic import BaseModel

    app = conveyor.App()                       # ./conveyor.db; or "redis://...", "sqs://..."

    class Email(BaseModel):
        to: str

    @app.task(retries=3, backoff=conveyor.Backoff.schedule(60, 300, 1800), timeout=30)
    async def send_email(job: conveyor.Job[Email]) -> None:
        ...

    await send_email.enqueue(Email(to="a@example.com"), job_id="welcome-42")

Run workers with ``conveyor worker myapp:app``.
"""

from conveyor import testing
from conveyor.alerts import Alert, Alerts, CallableSink, LogSink, WebhookSink
from conveyor.app import App
from conveyor.backoff import Backoff
from conveyor.clock import ManualClock, SystemClock
from conveyor.dlq import DeadFilter, DeadLetters
from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    EngineUnavailable,
    JobFailed,
    JobNotFound,
    JobTimeout,
    PayloadInvalid,
    PayloadTooLarge,
    UnknownTask,
    Unrecoverable,
)
from conveyor.job import Job
from conveyor.records import Attempt, LogLine, Outcome, State
from conveyor.signing import SignatureInvalid, Signing
from conveyor.task import Enqueue, Keep, Task, TaskOptions
from conveyor.worker import Worker

__all__ = [
    "Alert",
    "Alerts",
    "App",
    "Attempt",
    "Backoff",
    "CallableSink",
    "ConfigurationError",
    "ConveyorError",
    "DeadFilter",
    "DeadLetters",
    "EngineUnavailable",
    "Enqueue",
    "Job",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "Keep",
    "LogLine",
    "LogSink",
    "ManualClock",
    "Outcome",
    "PayloadInvalid",
    "PayloadTooLarge",
    "SignatureInvalid",
    "Signing",
    "State",
    "SystemClock",
    "Task",
    "TaskOptions",
    "UnknownTask",
    "Unrecoverable",
    "WebhookSink",
    "Worker",
    "testing",
]

__version__ = "0.1.0"
