"""Logging set-up for workers and the CLI: text or JSON lines, job context on every record."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: Job context the worker attaches to its records (``extra=``).
JOB_FIELDS = ("queue", "job_id", "task", "attempt")


class JobContext(logging.Filter):
    """Gives every record the job fields (empty when the record is not about a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Fill missing job fields so formats can always name them."""
        for name in JOB_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, "")
        return True


class TextFormatter(logging.Formatter):
    """``time level logger [queue/job_id task #attempt] message``."""

    def format(self, record: logging.LogRecord) -> str:
        """One human-readable line."""
        base = f"{self.formatTime(record)} {record.levelname:<7} {record.name}"
        job = getattr(record, "job_id", "")
        if job:
            queue, task, attempt = (getattr(record, k, "") for k in ("queue", "task", "attempt"))
            base += f" [{queue}/{job} {task} #{attempt}]"
        line = f"{base} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, "")
            if value != "":
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send ``conveyor.*`` logs to stderr as ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(JobContext())
    root = logging.getLogger("conveyor")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
