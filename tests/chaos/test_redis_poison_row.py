"""A Redis job whose stored options are not JSON is dead-lettered with the reason; it used to
make every reserve that returned it raise, so the whole queue stopped.

Both engines now read stored options through ``records.load_options``, which turns a
corrupted value into an ``unreadable_options`` note that the worker dead-letters. This test
corrupts one job's options in place with a Lua script, then runs a worker: the five good jobs
complete and the bad one is dead-lettered as OptionsInvalid.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import conveyor
from chaos import tasks
from chaos.redis_faults import Server

CORRUPT = """
local rec = cmsgpack.unpack(redis.call('HGET', KEYS[1], ARGV[1]))
for i, v in pairs(rec) do
  if v == '{}' then rec[i] = '{corrupt' end
end
redis.call('HSET', KEYS[1], ARGV[1], cmsgpack.pack(rec))
return 1
"""


def test_a_corrupted_options_field_does_not_stop_a_redis_queue(tmp_path: Path) -> None:
    server = Server(tmp_path / "redis")
    server.start()
    url = f"{server.url}?prefix=poison"

    async def run() -> tuple[int, int]:
        app = conveyor.App(url, lease_seconds=1)
        app.tasks[tasks.typed.name] = tasks.typed
        try:
            engine = await app.engine()
            jobs = [
                tasks.typed.build(tasks.Typed(n=i, name="x"), job_id=f"j-{i}") for i in range(6)
            ]
            await engine.enqueue(jobs)
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(server.url)
            await client.eval(CORRUPT, 1, "poison:{hostile}:jobs", "j-0")
            await client.aclose()
            worker = conveyor.Worker(app, queues=["hostile"], burst=True, idle_wait=0.01)
            counts = await asyncio.wait_for(worker.run(), 20)
            return counts.completed, counts.dead
        finally:
            await app.close()

    try:
        assert asyncio.run(run()) == (5, 1)
    finally:
        server.kill()
