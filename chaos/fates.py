"""Scenario 5: retries and the dead-letter queue, exactly.

Every job's fate follows its id (``f-<fate>-<n>``): it succeeds, fails N times then
succeeds, always fails, raises ``Unrecoverable``, or runs past its timeout. The DLQ must
hold exactly the jobs born to die, every attempt count and failure log must be the one the
fate implies, every retry must wait within ``Backoff.bounds``, a redrive must empty the DLQ
and run each job once more, and alerts must add up to the dead-letter arrivals.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conveyor
from chaos import checker, tasks
from chaos.harness import Fleet, all_records, wait_settled, worker_crashes
from chaos.targets import Target
from chaos.truth import TruthLog
from conveyor.records import JobRecord, Outcome, State

QUEUE = "fates"
WEIGHTS = {
    "normal": 40,
    "flaky1": 10,
    "flaky2": 10,
    "flaky3": 10,
    "always": 10,
    "unrecoverable": 10,
    "timeout": 10,
}
#: The alert de-duplication window of the workers in this scenario.
DEDUP_WINDOW = 1.0
#: Workers check alert windows this often (the worker's maintenance interval).
MAINTENANCE = 5.0
ERROR_TYPE = {
    "error": "chaos.tasks.PlannedFailure",
    "unrecoverable": "conveyor.errors.Unrecoverable",
    "timeout": "conveyor.errors.JobTimeout",
}


@dataclass(frozen=True)
class FateSize:
    """How big a fates run is."""

    jobs: int
    workers: int = 2
    concurrency: int = 10


FATES_CI = FateSize(jobs=350)
FATES_FULL = FateSize(jobs=10_000, concurrency=20)


def expected(job_id: str) -> tuple[int, list[tuple[Outcome, str]]]:
    """The attempts a job must take and its failure log (outcome, error type)."""
    fate = tasks.fate_of(job_id)
    tries = tasks.FATE_RETRIES + 1
    if fate == "normal":
        return 1, []
    if fate.startswith("flaky"):
        n = int(fate[-1])
        return n + 1, [(Outcome.ERROR, ERROR_TYPE["error"])] * n
    if fate == "always":
        return tries, [(Outcome.ERROR, ERROR_TYPE["error"])] * tries
    if fate == "unrecoverable":
        return 1, [(Outcome.UNRECOVERABLE, ERROR_TYPE["unrecoverable"])]
    return tries, [(Outcome.TIMEOUT, ERROR_TYPE["timeout"])] * tries


def exactness(
    records: dict[str, JobRecord], starts: dict[tuple[str, int], float]
) -> dict[str, Any]:
    """Attempt counts, failure logs and backoff delays against each job's fate."""
    wrong_attempts = wrong_logs = out_of_bounds = early = 0
    lateness: list[float] = []
    for job_id, r in records.items():
        attempts, log = expected(job_id)
        if r.attempts != attempts:
            wrong_attempts += 1
        got = [(a.outcome, a.error_type) for a in r.failures]
        numbers = [a.number for a in r.failures]
        messages_ok = all(
            a.outcome is Outcome.TIMEOUT
            or a.message == f"planned failure of {job_id} attempt {a.number}"
            for a in r.failures
        )
        if got != log or numbers != list(range(1, len(log) + 1)) or not messages_ok:
            wrong_logs += 1
        for a in r.failures:
            if a.retry_at is None:
                continue
            lo, hi = tasks.FATE_BACKOFF.bounds(a.number)
            delay = a.retry_at - (a.ended_at or 0.0)
            if not lo - 1e-6 <= delay <= hi + 1e-6:
                out_of_bounds += 1
            started = starts.get((job_id, a.number + 1))
            if started is not None:
                if started < a.retry_at - 1e-3:
                    early += 1
                lateness.append(started - a.retry_at)
    p99 = checker.percentile(lateness, 99)
    return {
        "attempt_count_mismatches": wrong_attempts,
        "failure_log_mismatches": wrong_logs,
        "backoff_out_of_bounds": out_of_bounds,
        "retries_started_early": early,
        "retries_checked": len(lateness),
        "retry_lateness_p99": None if p99 is None else round(p99, 3),
    }


def alert_accounting(directory: Path) -> dict[str, Any]:
    """Alerts against dead-letter arrivals, per worker process (each de-duplicates alone)."""
    t = checker.load(directory)
    arrivals: dict[int, int] = defaultdict(int)
    for ev in t.events:
        if ev["ev"] == "dead":
            arrivals[ev["pid"]] += 1
    counted: dict[int, int] = defaultdict(int)
    immediate: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    summaries = 0
    for ev in t.alerts:
        if ev["kind"] != "dead_letter":
            continue
        counted[ev["pid"]] += ev["count"]
        if ev["job"]:  # the first of a window names its job; summaries do not
            immediate[(ev["pid"], ev["queue"], ev["error_type"])].append(ev["at"])
        else:
            summaries += 1
    violations = 0
    for times in immediate.values():
        times.sort()
        violations += sum(1 for a, b in itertools.pairwise(times) if b - a < DEDUP_WINDOW)
    return {
        "dead_letter_arrivals": sum(arrivals.values()),
        "alerts_messages": sum(len(v) for v in immediate.values()) + summaries,
        "alerts_counted": sum(counted.values()),
        "alerts_unaccounted": sum(abs(arrivals[p] - counted[p]) for p in arrivals | counted),
        "dedup_violations": violations,
    }


async def fates_run(target: Target, directory: Path, seed: int, size: FateSize) -> dict[str, Any]:
    """Run the fated jobs, check the DLQ and every failure log, redrive, check again."""
    rng = random.Random(seed)
    names, weights = list(WEIGHTS), list(WEIGHTS.values())
    ids = [f"f-{rng.choices(names, weights)[0]}-{n:06d}" for n in range(size.jobs)]
    env = {"CHAOS_DEDUP": str(DEDUP_WINDOW)}
    fleet = Fleet(target.url, directory, [QUEUE], 5.0, concurrency=size.concurrency, env=env)
    app = conveyor.App(target.url)
    log = TruthLog(directory, "producer")
    try:
        engine = await app.engine()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            log.write("try", ids=chunk)
            await engine.enqueue([tasks.fated.build(n, job_id=i) for n, i in enumerate(chunk)])
            log.write("ok", ids=chunk)
        fleet.start(size.workers)
        settled = await wait_settled(app, QUEUE, fleet, timeout=60 + size.jobs / 20)
        first = await all_records(app, QUEUE)
        dead_before = {i for i, r in first.items() if r.state is State.DEAD}
        redriven = await app.dlq.redrive(QUEUE)
        settled_again = await wait_settled(app, QUEUE, fleet, timeout=60 + size.jobs / 50)
        final = await all_records(app, QUEUE)
        # Let every worker's maintenance send the summaries of its closed alert windows.
        await asyncio.sleep(MAINTENANCE + DEDUP_WINDOW + 0.5)
        await fleet.stop()
    finally:
        await app.close()
    expected_dead = {i for i in ids if tasks.fate_of(i) in tasks.DEAD_FATES}
    common: dict[str, Any] = {"scenario": "retries-dlq", "seed": seed, "engine": target.engine}
    result = checker.check(directory, final, expected_dead=expected_dead, **common)
    # The DLQ is judged as it stood before the redrive.
    before = checker.check(directory, first, expected_dead=expected_dead, **common)
    for key in ("dead_lettered", "dlq_precision", "dlq_recall"):
        result[key] = before[key]
    t = checker.load(directory)
    starts = {(j, r.att): r.start_wall for j, runs in t.runs.items() for r in runs if r.round == 0}
    round_two: dict[str, int] = defaultdict(int)
    for job, runs in t.runs.items():
        round_two[job] = sum(1 for r in runs if r.round == 1)
    result.update(exactness(first, starts))
    result.update(alert_accounting(directory))
    # Every job the engine dead-lettered must have reached its on_dead_letter hook once.
    result["dead_letter_hooks_missing"] = result["dead_lettered"] - result["dead_letter_arrivals"]
    result.update(
        {
            "settled": settled and settled_again,
            "redriven": redriven,
            "dlq_after_redrive": sum(1 for r in final.values() if r.state is State.DEAD),
            "redriven_not_run_once": sum(1 for j in dead_before if round_two[j] != 1),
            "redriven_not_completed": sum(
                1 for j in dead_before if final[j].state is not State.COMPLETED
            ),
            "worker_crashes": worker_crashes(fleet.stderr_text()),
        }
    )
    return result
