"""The no-loss checker: ground truth (job, producer and harness logs) against the engine.

Definitions, per run:

* ``enqueued``: jobs whose enqueue call returned (``ok``). ``unknown`` ones may or may not
  exist; both are fine, but one that exists must then be run like any other.
* ``completed``: jobs the engine holds as completed.
* ``lost``: acknowledged jobs (and stored ``unknown`` ones) whose side effect never finished
  (no ``end`` line) and that are not in the dead-letter queue.
* ``records_missing``: acknowledged jobs the engine no longer knows at all (every chaos
  task keeps its completed jobs), i.e. state the engine forgot.
* ``unexpected``: jobs that ran or are stored although no producer ever tried to enqueue them
  (or was told they were refused).
* ``duplicate_runs``: side effects finished more than once (``end`` lines beyond the first).
* ``runs_after_ack``: runs that started after the engine acknowledged the job's completion
  (or its dead-lettering).
* ``lease_overlaps``: two runs of one job alive at the same moment (a run lasts from its
  ``start`` to its last line, or to its process's death).
* ``double_claims``: one (job, attempt, round) started twice: two workers held one lease.
* ``in_flight_at_kills``: runs on a process at the moment it was killed whose job was not
  yet acknowledged; every duplicate must be one of them.
* ``recovery_*``: seconds from a kill to the next start of each job it interrupted.
* ``dlq_precision`` / ``dlq_recall``: the dead-letter queue against the jobs expected there.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import truth
from conveyor.records import JobRecord, State


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``None`` for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Run:
    """One attempt of one job as the ground truth saw it."""

    job: str
    pid: int
    att: int
    round: int
    start_mono: float
    start_wall: float
    last_mono: float
    last_wall: float = 0.0
    ended: bool = False
    cancelled: bool = False


@dataclass
class Death:
    """A process killed with SIGKILL (by the harness or by itself)."""

    pid: int
    mono: float
    wall: float


@dataclass
class Truth:
    """Everything the logs of one run directory say."""

    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    runs: dict[str, list[Run]] = field(default_factory=lambda: defaultdict(list))
    ends: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    deaths: list[Death] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    harness: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    self_kills: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def known(self) -> set[str]:
        """Jobs some producer may have stored."""
        return self.ok | self.unknown


def load(directory: str | Path) -> Truth:
    """Read every log of a run directory."""
    t = Truth()
    tried: set[str] = set()
    for ev in truth.read(directory, "producer"):
        ids = set(ev.get("ids", []))
        if ev["ev"] == "try":
            tried |= ids
        elif ev["ev"] == "ok":
            t.ok |= ids
        elif ev["ev"] == "failed":
            t.failed |= ids
    t.failed -= t.ok
    t.unknown = tried - t.ok - t.failed
    t.harness = list(truth.read(directory, "harness"))
    t.alerts = list(truth.read(directory, "alerts"))
    for ev in t.harness:
        if ev["ev"] == "kill" and ev.get("sig") == "SIGKILL":
            t.deaths.append(Death(ev["target"], ev["mono"], ev["wall"]))
    open_runs: dict[tuple[int, str, int], Run] = {}
    events = sorted(truth.read(directory, "truth"), key=lambda e: e["mono"])
    t.events = events
    for ev in events:
        kind, job = ev["ev"], ev.get("job", "")
        key = (ev["pid"], job, ev.get("att", 0))
        if kind == "start":
            run = Run(
                job,
                ev["pid"],
                ev.get("att", 0),
                ev.get("round", 0),
                ev["mono"],
                ev["wall"],
                ev["mono"],
            )
            t.runs[job].append(run)
            open_runs[key] = run
            continue
        run_or_none = open_runs.get(key)
        if run_or_none is not None:
            run_or_none.last_mono, run_or_none.last_wall = ev["mono"], ev["wall"]
        if kind == "end":
            t.ends[job] += 1
            if run_or_none is not None:
                run_or_none.ended = True
        elif kind == "cancel" and run_or_none is not None:
            run_or_none.cancelled = True
        elif kind == "kill":
            t.deaths.append(Death(ev["pid"], ev["mono"], ev["wall"]))
            t.self_kills[ev.get("point", "")] += 1
    return t


def _acked_at(record: JobRecord | None) -> float | None:
    if record is None or record.state not in (State.COMPLETED, State.DEAD):
        return None
    return record.finished_at


def check(
    directory: str | Path,
    records: dict[str, JobRecord],
    *,
    scenario: str,
    seed: int,
    engine: str,
    expected_dead: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare a run's ground truth with the engine's final ``records``; one result dict."""
    t = load(directory)
    expected = set(expected_dead)
    dead = {i for i, r in records.items() if r.state is State.DEAD}
    completed = {i for i, r in records.items() if r.state is State.COMPLETED}
    ran = set(t.runs)

    lost = {i for i in t.ok if t.ends[i] == 0 and i not in dead}
    lost |= {i for i in t.unknown if i in records and t.ends[i] == 0 and i not in dead}
    phantom = {i for i in completed if t.ends[i] == 0}
    unexpected = (ran | set(records)) - t.known

    duplicates = sum(max(0, n - 1) for n in t.ends.values())
    after_ack = 0
    for job, runs in t.runs.items():
        acked = _acked_at(records.get(job))
        if acked is not None:
            after_ack += sum(1 for r in runs if r.start_wall > acked)

    death_of: dict[int, Death] = {}
    for d in t.deaths:
        if d.pid not in death_of or d.mono < death_of[d.pid].mono:
            death_of[d.pid] = d
    overlaps = 0
    claims: dict[tuple[str, int, int], int] = defaultdict(int)
    for job, runs in t.runs.items():
        runs.sort(key=lambda r: r.start_mono)
        for r in runs:
            if r.att > 0 and not r.cancelled:  # a released attempt is handed out again
                claims[(job, r.att, r.round)] += 1
        for a, b in itertools.pairwise(runs):
            end = a.last_mono
            death = death_of.get(a.pid)
            if not a.ended and death is not None and death.mono >= a.start_mono:
                end = max(end, death.mono)
            if b.start_mono < end:
                overlaps += 1
    double_claims = sum(n - 1 for n in claims.values() if n > 1)

    in_flight = 0
    unrecovered = 0
    recoveries: list[float] = []
    for death in t.deaths:
        for job, runs in t.runs.items():
            for r in runs:
                if r.pid != death.pid or r.start_mono > death.mono:
                    continue
                acked = _acked_at(records.get(job))
                later = [x.start_mono for x in runs if x.start_mono > death.mono]
                if acked is not None and acked <= death.wall and not later:
                    continue  # acknowledged before the kill: not in flight
                if r.ended and not later:
                    continue  # finished and acknowledged by the dying process in time
                in_flight += 1
                if later:
                    recoveries.append(min(later) - death.mono)
                elif job not in dead:
                    unrecovered += 1

    def ratio(num: int, den: int) -> float:
        return 1.0 if den == 0 else round(num / den, 4)

    def sample(ids: set[str]) -> list[str]:
        return sorted(ids)[:10]

    p50, p99 = percentile(recoveries, 50), percentile(recoveries, 99)
    result: dict[str, Any] = {
        "scenario": scenario,
        "engine": engine,
        "seed": seed,
        "enqueued": len(t.ok),
        "enqueue_unknown": len(t.unknown),
        "enqueue_failed": len(t.failed),
        "completed": len(completed),
        "lost": len(lost),
        "unexpected": len(unexpected),
        "duplicate_runs": duplicates,
        "runs_after_ack": after_ack,
        "lease_overlaps": overlaps,
        "double_claims": double_claims,
        "phantom_completions": len(phantom),
        "records_missing": len(t.ok - set(records)),
        "dead_lettered": len(dead),
        "dlq_precision": ratio(len(dead & expected), len(dead)),
        "dlq_recall": ratio(len(dead & expected), len(expected)),
        "kills": len(t.deaths),
        "kills_by_point": {
            "random": sum(1 for e in t.harness if e["ev"] == "kill" and e["sig"] == "SIGKILL"),
            **dict(sorted(t.self_kills.items())),
        },
        "in_flight_at_kills": in_flight,
        "unrecovered": unrecovered,
        "recovery_p50": None if p50 is None else round(p50, 3),
        "recovery_p99": None if p99 is None else round(p99, 3),
        "recovery_max": round(max(recoveries), 3) if recoveries else None,
    }
    if lost:
        result["lost_sample"] = sample(lost)
    if unexpected:
        result["unexpected_sample"] = sample(unexpected)
    if extra:
        result.update(extra)
    return result
