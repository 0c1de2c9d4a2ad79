"""The scenario registry: names, engines, sizes, and the promise each run must keep."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos import crashes
from chaos.targets import MotoServer, Target, sqlite_target, sqs_target

ENGINES = ("sqlite", "redis", "sqs")
#: SQS (on moto) runs the scenarios that do not need to stop or fake its server.
WITH_SQS = ("sqlite", "redis", "sqs")
NO_SQS = ("sqlite", "redis")
Runner = Callable[[Target, Path, int, bool], Awaitable[dict[str, Any]]]
Verdict = Callable[[dict[str, Any]], list[str]]


@dataclass(frozen=True)
class Scenario:
    """A runnable scenario and the checks its result must pass."""

    run: Runner
    verdict: Verdict
    engines: tuple[str, ...] = NO_SQS


def _no_loss(r: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("lost", "unexpected", "runs_after_ack", "lease_overlaps", "double_claims",
                "phantom_completions", "worker_crashes", "unrecovered"):  # fmt: skip
        if r.get(key):
            problems.append(f"{key}={r[key]}")
    if not r.get("settled", True):
        problems.append("did not settle in time")
    return problems


def _crash_verdict(r: dict[str, Any]) -> list[str]:
    problems = _no_loss(r)
    if r["duplicate_runs"] > r["in_flight_at_kills"]:
        problems.append(f"duplicates {r['duplicate_runs']} > in flight {r['in_flight_at_kills']}")
    if r["recovery_max"] is not None and r["recovery_max"] > r["recovery_bound"]:
        problems.append(f"recovery_max {r['recovery_max']} > bound {r['recovery_bound']}")
    if r["dead_lettered"]:
        problems.append(f"dead_lettered={r['dead_lettered']}")
    if r.get("integrity_failures"):
        problems.append(f"integrity_failures={r['integrity_failures']}")
    return problems


def _procs_verdict(r: dict[str, Any]) -> list[str]:
    """As for crashes, but with no bound on recovery: processes here also die on their own
    (just before a COMMIT), so at times no worker is up and recovery waits for a restart."""
    problems = _crash_verdict(r)
    return [p for p in problems if not p.startswith("recovery_max")]


def _drain_verdict(r: dict[str, Any]) -> list[str]:
    problems = _no_loss(r)
    if r["duplicate_runs"]:
        problems.append(f"duplicate_runs={r['duplicate_runs']}")
    if r["exit_nonzero"]:
        problems.append(f"exit_nonzero={r['exit_nonzero']}")
    if r["drain_seconds_max"] > r["grace"] + 2.0:
        problems.append(f"a drain took {r['drain_seconds_max']}s, grace {r['grace']}s")
    if r["hurry_seconds_max"] > 2.0:
        problems.append(f"a hurried drain took {r['hurry_seconds_max']}s")
    return problems


async def _crashes(target: Target, d: Path, seed: int, full: bool) -> dict[str, Any]:
    if target.engine == "sqs":
        size = crashes.CRASH_SQS_FULL if full else crashes.CRASH_SQS_CI
    else:
        size = crashes.CRASH_FULL if full else crashes.CRASH_CI
    return await crashes.crash_run(target, d, seed, size, scenario="crashes")


async def _sqlite_procs(target: Target, d: Path, seed: int, full: bool) -> dict[str, Any]:
    size = crashes.SQLITE_FULL if full else crashes.SQLITE_CI
    return await crashes.crash_run(
        target, d, seed, size, scenario="sqlite-procs", kill_producers=True
    )


async def _drain(target: Target, d: Path, seed: int, full: bool) -> dict[str, Any]:
    size = crashes.DRAIN_FULL if full else crashes.DRAIN_CI
    return await crashes.drain_run(target, d, seed, size)


def _redis_verdict(r: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("lost", "records_missing", "unexpected", "runs_after_ack", "worker_crashes",
                "unrecovered"):  # fmt: skip
        if r.get(key):
            problems.append(f"{key}={r[key]}")
    if not r.get("settled", True):
        problems.append("did not settle in time")
    if r["client_call_max_seconds"] > CLIENT_CALL_BOUND:
        problems.append(f"a client call took {r['client_call_max_seconds']}s")
    return problems


def _control_verdict(r: dict[str, Any]) -> list[str]:
    """Snapshot-only persistence must lose acknowledged jobs: the checker must see it."""
    return [] if r["lost"] > 0 else ["the snapshot-only control lost nothing: checker blind?"]


#: Worst case of one enqueue call with socket_timeout=1: the first try and redis-py's 3
#: retries (1 s each) plus their backoff (at most 1 s each), plus connecting.
CLIENT_CALL_BOUND = 10.0


def _redis(fault: str, persistence: str = "none") -> Runner:
    async def run(target: Target, d: Path, seed: int, full: bool) -> dict[str, Any]:
        from chaos import redis_faults

        size = redis_faults.FAULT_FULL if full else redis_faults.FAULT_CI
        return await redis_faults.fault_run(d, seed, size, fault, persistence)

    return run


def _fates_verdict(r: dict[str, Any]) -> list[str]:
    problems = _no_loss(r)
    if r["dlq_precision"] != 1.0 or r["dlq_recall"] != 1.0:
        problems.append(f"dlq precision {r['dlq_precision']} recall {r['dlq_recall']}")
    for key in ("attempt_count_mismatches", "failure_log_mismatches", "backoff_out_of_bounds",
                "retries_started_early", "alerts_unaccounted", "dedup_violations",
                "dlq_after_redrive", "redriven_not_run_once", "redriven_not_completed",
                "duplicate_runs", "dead_letter_hooks_missing"):  # fmt: skip
        if r[key]:
            problems.append(f"{key}={r[key]}")
    if r["redriven"] != r["dead_lettered"]:
        problems.append(f"redrove {r['redriven']} of {r['dead_lettered']} dead jobs")
    return problems


async def _fates(target: Target, d: Path, seed: int, full: bool) -> dict[str, Any]:
    from chaos import fates

    return await fates.fates_run(target, d, seed, fates.FATES_FULL if full else fates.FATES_CI)


def _timeouts_verdict(r: dict[str, Any]) -> list[str]:
    problems = _no_loss(r)
    if r["stopped_after_timeout_max"] > 1.0:
        problems.append(f"a job ran {r['stopped_after_timeout_max']}s past its timeout")
    for key in ("ticks_after_failure", "not_timed_out"):
        if r[key]:
            problems.append(f"{key}={r[key]}")
    return problems


def _hostile_verdict(r: dict[str, Any]) -> list[str]:
    problems = _no_loss(r)
    if r["code_executed"]:
        problems.append("a payload executed code")
    if r["hostile_not_dead_lettered_once"]:
        problems.append(f"{r['hostile_not_dead_lettered_once']} hostile jobs not dead once")
    if r["dlq_precision"] != 1.0 or r["dlq_recall"] != 1.0:
        problems.append(f"dlq precision {r['dlq_precision']} recall {r['dlq_recall']}")
    return problems


async def _timeouts(target: Target, d: Path, seed: int, full: bool) -> dict[str, Any]:
    from chaos import inputs

    size = inputs.TIMEOUT_FULL if full else inputs.TIMEOUT_CI
    return await inputs.timeouts_run(target, d, seed, size)


async def _hostile(target: Target, d: Path, seed: int, full: bool) -> dict[str, Any]:
    from chaos import inputs

    return await inputs.hostile_run(target, d, seed, full)


SCENARIOS: dict[str, Scenario] = {
    "crashes": Scenario(_crashes, _crash_verdict, WITH_SQS),
    "drain": Scenario(_drain, _drain_verdict),
    "retries-dlq": Scenario(_fates, _fates_verdict, WITH_SQS),
    "timeouts": Scenario(_timeouts, _timeouts_verdict, engines=("sqlite",)),
    "hostile": Scenario(_hostile, _hostile_verdict, WITH_SQS),
    "sqlite-procs": Scenario(_sqlite_procs, _procs_verdict, engines=("sqlite",)),
    "redis-kill-always": Scenario(_redis("kill", "always"), _redis_verdict, ("redis",)),
    "redis-kill-everysec": Scenario(_redis("kill", "everysec"), _redis_verdict, ("redis",)),
    "redis-kill-snapshot": Scenario(_redis("kill", "snapshot"), _control_verdict, ("redis",)),
    "redis-proxy": Scenario(_redis("proxy"), _redis_verdict, ("redis",)),
    "redis-pause": Scenario(_redis("pause"), _redis_verdict, ("redis",)),
}


async def run_scenario(name: str, engine: str, seed: int, full: bool, base: Path) -> dict[str, Any]:
    """Run one scenario on one engine in a fresh directory; the checker's result plus
    ``ok``, ``problems`` and ``seconds``."""
    directory = base / f"{name}-{engine}-{seed}"
    directory.mkdir(parents=True, exist_ok=True)
    scenario = SCENARIOS[name]
    started = time.monotonic()
    if engine == "sqlite":
        result = await scenario.run(sqlite_target(directory), directory, seed, full)
    elif name.startswith("redis-"):  # brings its own servers
        result = await scenario.run(Target("redis", ""), directory, seed, full)
    elif engine == "sqs":
        moto = MotoServer().start()
        try:
            result = await scenario.run(sqs_target(moto.endpoint), directory, seed, full)
        finally:
            moto.stop()
    else:
        from chaos import redis_faults

        async with redis_faults.target(directory) as target:
            result = await scenario.run(target, directory, seed, full)
    problems = scenario.verdict(result)
    result["size"] = "full" if full else "ci"
    result["seconds"] = round(time.monotonic() - started, 1)
    result["ok"] = not problems
    result["problems"] = problems
    return result
