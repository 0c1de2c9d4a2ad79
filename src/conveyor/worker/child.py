"""The child process of the ``process`` executor.

Reads one JSON request per line on stdin, runs the task function, answers with JSON lines on
the original stdout (progress, log, then the outcome). The task's own prints go to stderr.
No pickle: the function is found by module and attribute, the payload is JSON.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import traceback
from types import ModuleType
from typing import Any, TextIO

from conveyor.errors import Unrecoverable
from conveyor.job import Job
from conveyor.task import Task
from conveyor.worker.errors import error_type


def main() -> None:
    """Serve requests until stdin closes."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # the task's prints must not corrupt the protocol stream
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if line.strip():
            _write(protocol, _serve(json.loads(line), protocol))


def _serve(request: dict[str, Any], protocol: TextIO) -> dict[str, Any]:
    try:
        task = getattr(_module(request), request["attr"])
        if not isinstance(task, Task):
            raise TypeError(f"{request['module']}.{request['attr']} is not a conveyor task")
        payload = task.codec.decode_payload(request["payload"].encode())
        # The timeout covers the function, not this process's first import of its module.
        _write(protocol, {"type": "started"})

        def report(progress: float | None, log: str | None) -> None:
            _write(protocol, {"type": "report", "progress": progress, "log": log})

        arg: Any = payload
        if task.takes_job:
            arg = Job(
                task.app,
                request["queue"],
                request["job_id"],
                task=task.name,
                payload=payload,
                sync_reporter=report,
            )
        result = task.fn(arg) if task.takes_payload or task.takes_job else task.fn()
        return {"type": "result", "ok": True, "result": task.codec.encode_result(result).decode()}
    except Exception as exc:
        return {
            "type": "result",
            "ok": False,
            "error_type": error_type(exc),
            "message": str(exc) or repr(exc),
            "traceback": "".join(traceback.format_exception(exc)),
            "unrecoverable": isinstance(exc, Unrecoverable),
        }


def _module(request: dict[str, Any]) -> ModuleType:
    """Import the task's module; a ``__main__`` script is loaded from its path, once."""
    path = request.get("path")
    if path is None:
        return importlib.import_module(request["module"])
    name = "__conveyor_main__"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the task's script {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _write(stream: TextIO, message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


if __name__ == "__main__":
    main()
