"""A producer process: enqueues ``chaos.work`` jobs and logs every call's outcome.

``python -m chaos.producer --first 0 --count 1000 --seed 7 --rate 200``. Each batch is logged
as ``try`` before the call and ``ok`` / ``failed`` / ``unknown`` after it: ``unknown`` when the
call raised in a way that leaves it open whether the jobs were stored (a lost connection, a
timeout). Unknown batches are retried with the same job ids, which enqueue treats as the
same jobs, so a retry can never duplicate work.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import conveyor
from chaos import tasks
from chaos.truth import TruthLog

#: Retries of a batch whose outcome is unknown before the producer gives up on it.
MAX_TRIES = 20
RETRY_PAUSE = 0.2


def job_id(n: int) -> str:
    """The id of job number ``n`` (the checker and producers agree on it)."""
    return f"w-{n:08d}"


async def produce(
    first: int,
    count: int,
    seed: int,
    rate: float,
    batch: int,
    kill_fraction: float,
    ms_max: float = 40.0,
    until: float | None = None,
) -> None:
    """Enqueue jobs ``first .. first+count-1`` at about ``rate`` jobs a second, stopping
    early at wall time ``until``."""
    log = TruthLog(tasks.DIRECTORY, "producer")
    rng = random.Random(seed)
    started = time.monotonic()
    done = 0
    # A fixed number of chosen-point kills, alternating the two points, at seeded positions.
    points = ("after_end", "after_start")
    chosen = round(count * kill_fraction) if kill_fraction > 0 else 0
    killers = {
        first + n: points[i % 2] for i, n in enumerate(rng.sample(range(count), min(chosen, count)))
    }
    try:
        for start in range(first, first + count, batch):
            if until is not None and time.time() >= until:
                break
            numbers = range(start, min(start + batch, first + count))
            items = []
            for n in numbers:
                kill = killers.get(n, "")
                work = tasks.Work(ms=rng.uniform(ms_max / 20, ms_max), kill=kill)  # type: ignore[arg-type]
                items.append(conveyor.Enqueue(work, job_id=job_id(n)))
            ids = [job_id(n) for n in numbers]
            for _ in range(MAX_TRIES):
                log.write("try", ids=ids)
                try:
                    await tasks.work.enqueue_many(items)
                except (conveyor.PayloadInvalid, conveyor.ConfigurationError) as exc:
                    log.write("failed", ids=ids, error=repr(exc)[:300])
                    break
                except Exception as exc:
                    log.write("unknown", ids=ids, error=repr(exc)[:300])
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                log.write("ok", ids=ids)
                break
            done += len(ids)
            ahead = done / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await tasks.app.close()


def main() -> None:
    """Parse arguments and produce."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=200.0, help="jobs per second")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--kill-fraction", type=float, default=0.0)
    parser.add_argument("--ms-max", type=float, default=40.0, help="longest job, in ms")
    parser.add_argument("--until", type=float, default=None, help="stop at this wall time")
    a = parser.parse_args()
    asyncio.run(
        produce(a.first, a.count, a.seed, a.rate, a.batch, a.kill_fraction, a.ms_max, a.until)
    )


if __name__ == "__main__":
    main()
