"""Run one attempt of a task function within its timeout.

Coroutines run on the event loop and are cancelled at their timeout; sync functions run in
a thread pool (Python cannot kill a thread: at the timeout the attempt fails and new jobs get
a fresh pool); ``executor="process"`` functions run in child processes that are killed.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from conveyor.errors import JobTimeout
from conveyor.job import Job
from conveyor.worker.process_pool import ProcessPool

if TYPE_CHECKING:
    from conveyor.task import Task, TaskOptions


class Executors:
    """The thread pool and the child processes of one worker."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="conveyor-job")
        self._processes = ProcessPool()

    async def run(
        self, task: Task[Any], options: TaskOptions, job: Job[Any], payload: Any
    ) -> bytes:
        """Call the task's function for ``job``; returns its encoded result.

        Raises :class:`conveyor.JobTimeout` at the timeout, or whatever the function raised.
        """
        arg = job if task.takes_job else payload
        args = (arg,) if (task.takes_job or task.takes_payload) else ()
        timeout = options.timeout
        if options.executor == "process":
            assert job.record is not None
            return await self._processes.run(
                task,
                job.queue,
                job.id,
                job.record.payload,
                timeout,
                job._reporter,  # type: ignore[arg-type]
            )
        try:
            async with asyncio.timeout(timeout):
                if options.executor == "async":
                    value = await task.fn(*args)
                else:
                    loop = asyncio.get_running_loop()
                    value = await loop.run_in_executor(self._threads, lambda: task.fn(*args))
        except TimeoutError:
            how = "cancelled"
            if options.executor == "thread":
                how = "abandoned (its thread may still run until it returns)"
                self._replace_thread_pool()
            raise JobTimeout(
                f"task {task.name} ran past its {timeout:g}s timeout and was {how}"
            ) from None
        return task.codec.encode_result(value)

    def _replace_thread_pool(self) -> None:
        """Give new jobs a fresh pool: Python cannot kill the timed-out thread, and it would
        hold one of the old pool's slots until its function returns."""
        old = self._threads
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="conveyor-job")
        old.shutdown(wait=False)

    async def close(self) -> None:
        """Stop the child processes and let the threads end."""
        await self._processes.close()
        self._threads.shutdown(wait=False, cancel_futures=True)
