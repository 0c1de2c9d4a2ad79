"""An alert sink that appends alerts to a JSON-lines file, so that every worker process's
alerts end up in one place the demo (or ``tail -f``) can read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import conveyor


class JsonLinesSink:
    """Append each alert as one JSON line to ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"JsonLinesSink({str(self.path)!r})"

    async def send(self, alert: conveyor.Alert) -> None:
        """Append the alert. One ``write`` on an ``O_APPEND`` file: lines from several
        processes never interleave."""
        line = (json.dumps(alert.to_dict()) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def read_alerts(path: Path) -> list[conveyor.Alert]:
    """The alerts a :class:`JsonLinesSink` wrote (none if the file does not exist)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [conveyor.Alert(**json.loads(line)) for line in lines if line.strip()]
