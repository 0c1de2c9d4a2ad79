"""Child processes for CPU-bound sync tasks, so a timeout can really stop them (SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor.errors import ConveyorError, JobTimeout, Unrecoverable
from conveyor.task import Task

#: Largest protocol line from a child (a result plus its JSON framing).
MAX_LINE_BYTES = 64 * 1024 * 1024
#: How long a child may take to import the task's module before the job's own timeout starts.
STARTUP_TIMEOUT = 60.0


class ChildFailed(ConveyorError):
    """The task raised in its child process; carries the child's error type and traceback."""

    def __init__(self, error_type: str, message: str, traceback: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.child_traceback = traceback


class ChildUnrecoverable(ChildFailed, Unrecoverable):
    """The task raised ``conveyor.Unrecoverable`` in its child process."""


class ChildDied(ConveyorError):
    """The child process exited while running a job (crash, OOM kill, os._exit)."""


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class ProcessPool:
    """Reusable child processes, one job at a time each, spawned on demand."""

    def __init__(self) -> None:
        self._idle: list[_Child] = []
        self._all: set[_Child] = set()

    async def run(
        self,
        task: Task[Any],
        queue: str,
        job_id: str,
        payload: bytes,
        timeout: float,
        report: Callable[[float | None, str | None], Awaitable[None]],
    ) -> bytes:
        """Run ``task`` on ``payload`` in a child; returns the encoded result.

        On timeout or cancellation the child is killed (and replaced on next use).
        """
        child = self._idle.pop() if self._idle else await self._spawn()
        request = {
            "module": task.fn.__module__,
            "attr": task.__name__,
            "queue": queue,
            "job_id": job_id,
            "payload": payload.decode(),
        }
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if request["module"] == "__main__" and main_file:
            request["path"] = os.path.abspath(main_file)  # a script: the child loads it by path
        healthy = False
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT) as deadline:
                await self._send(child, request)
                result = await self._exchange(child, report, deadline, timeout)
            healthy = True
            return result
        except TimeoutError:
            raise JobTimeout(
                f"task {task.name} ran past its {timeout:g}s timeout; its process was killed"
            ) from None
        except ChildFailed:
            healthy = True
            raise
        finally:
            if healthy:
                self._idle.append(child)
            else:
                await self._discard(child)

    async def _send(self, child: _Child, request: dict[str, Any]) -> None:
        assert child.proc.stdin is not None
        child.proc.stdin.write(json.dumps(request).encode() + b"\n")
        await child.proc.stdin.drain()

    async def _exchange(
        self,
        child: _Child,
        report: Callable[[float | None, str | None], Awaitable[None]],
        deadline: asyncio.Timeout,
        timeout: float,
    ) -> bytes:
        assert child.proc.stdout is not None
        while True:
            line = await child.proc.stdout.readline()
            if not line:
                code = await child.proc.wait()
                raise ChildDied(f"the task's child process died with exit code {code}")
            message = json.loads(line)
            if message["type"] == "started":
                deadline.reschedule(asyncio.get_running_loop().time() + timeout)
                continue
            if message["type"] == "report":
                await report(message["progress"], message["log"])
                continue
            if message["ok"]:
                return str(message["result"]).encode()
            cls = ChildUnrecoverable if message["unrecoverable"] else ChildFailed
            raise cls(message["error_type"], message["message"], message["traceback"])

    async def _spawn(self) -> _Child:
        env = dict(os.environ)
        # The child must import the same task modules as this process.
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "conveyor.worker.child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=MAX_LINE_BYTES,
        )
        child = _Child(proc)
        self._all.add(child)
        return child

    async def _discard(self, child: _Child) -> None:
        child.kill()
        self._all.discard(child)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(child.proc.wait(), 5)

    async def close(self) -> None:
        """Stop every child."""
        for child in list(self._all):
            if child.proc.stdin is not None:
                child.proc.stdin.close()
            await self._discard(child)
        self._idle.clear()
