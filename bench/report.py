"""Turns a results document into Markdown: tables with ratios to Conveyor, and the targets.

Every ratio is *peer ÷ Conveyor* on the same measurement: for rates a ratio below 1 means
Conveyor is faster; for latency, CPU, commands and memory a ratio above 1 means Conveyor
spends less.
"""

from __future__ import annotations

from typing import Any

TIMES = "\u00d7"  # the multiplication sign
NONE = "\u2013"  # an en dash: not measured

Doc = dict[str, Any]

REDIS_TARGETS = [
    "conveyor-redis",
    "huey",
    "taskiq",
    "dramatiq",
    "saq",
    "arq",
    "streaq",
    "bullmq",
    "rq",
    "celery",
]
SQLITE_TARGETS = ["conveyor-sqlite", "huey-sqlite"]

#: (column title, path in a target's result, higher is better, number format)
COLUMNS: list[tuple[str, tuple[str, ...], bool, str]] = [
    ("enqueue 1/call sync /s", ("enqueue", "single_sync", "rate", "median"), True, "{:,.0f}"),
    ("enqueue 1/call await /s", ("enqueue", "single_async", "rate", "median"), True, "{:,.0f}"),
    (
        "enqueue 64 async producers /s",
        ("enqueue", "concurrent_async", "rate", "median"),
        True,
        "{:,.0f}",
    ),
    ("bulk enqueue /s", ("enqueue", "bulk", "rate", "median"), True, "{:,.0f}"),
    ("drain, 1 process /s", ("drain_1", "rate", "median"), True, "{:,.0f}"),
    ("drain, 2 processes /s", ("drain_2", "rate", "median"), True, "{:,.0f}"),
    ("idle latency p50 ms", ("latency", "p50_ms", "median"), False, "{:.2f}"),
    ("idle latency p99 ms", ("latency", "p99_ms", "median"), False, "{:.2f}"),
    ("worker CPU µs/job", ("drain_1", "cpu_us_per_job", "median"), False, "{:.0f}"),
    ("Redis commands/job", ("drain_1", "redis_commands_per_job", "median"), False, "{:.1f}"),
    ("worker peak RSS MB", ("drain_1", "peak_rss_mb", "median"), False, "{:.0f}"),
]


def get(doc: Doc | None, path: tuple[str, ...]) -> float | None:
    """The number at ``path`` in ``doc``, or ``None``."""
    node: Any = doc
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def cell(value: float | None, base: float | None, fmt: str, is_base: bool) -> str:
    """``value (ratio x)``, or a dash when not measured."""
    if value is None:
        return NONE
    text = fmt.format(value)
    if is_base or base is None or base == 0:
        return text
    return f"{text} ({value / base:.2f}{TIMES})"


def table(doc: Doc, names: list[str], base_name: str) -> str:
    """One table: a row per target, a column per measurement, ratios to ``base_name``."""
    results = doc["targets"]
    base = results.get(base_name)
    shown = [c for c in COLUMNS if any(get(results.get(n), c[1]) is not None for n in names)]
    lines = [
        "| library | " + " | ".join(c[0] for c in shown) + " |",
        "|---|" + "---:|" * len(shown),
    ]
    for name in names:
        res = results.get(name)
        if res is None:
            continue
        label = f"**{name}**" if name == base_name else name
        if res.get("errors") and "info" not in res:
            lines.append(f"| {label} | " + " | ".join("not run" for _ in shown) + " |")
            continue
        cells = [cell(get(res, c[1]), get(base, c[1]), c[3], name == base_name) for c in shown]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread(doc: Doc, names: list[str]) -> str:
    """Median, min and max of every repeated measurement, for the record."""
    lines = [
        "| library | measurement | median | min | max | runs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in names:
        res = doc["targets"].get(name) or {}
        for title, path, _, fmt in COLUMNS:
            summary_path = path[:-1]
            node: Any = res
            for key in summary_path:
                node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict) or "median" not in node:
                continue
            lines.append(
                f"| {name} | {title} | {fmt.format(node['median'])} | {fmt.format(node['min'])} "
                f"| {fmt.format(node['max'])} | {len(node['runs'])} |"
            )
    return "\n".join(lines)


def fastest(doc: Doc, names: list[str], *paths: tuple[str, ...]) -> tuple[float | None, str]:
    """The best peer value over ``paths`` (e.g. sync or awaited single calls) and its name."""
    best: tuple[float | None, str] = (None, "")
    for name in names:
        for path in paths:
            value = get(doc["targets"].get(name), path)
            if value is not None and (best[0] is None or value > best[0]):
                best = (value, name)
    return best


def targets(doc: Doc) -> str:
    """The issue's targets, measured against this run's peers."""
    r = doc["targets"]
    peers = [n for n in REDIS_TARGETS if n != "conveyor-redis"]
    rows: list[tuple[str, str, str, bool | None]] = []

    def add(what: str, goal: str, value: float | None, ok: bool | None, fmt: str) -> None:
        rows.append((what, goal, NONE if value is None else fmt.format(value), ok))

    cr, cs = r.get("conveyor-redis"), r.get("conveyor-sqlite")
    for procs, floor in ((1, 6000), (2, 16000)):
        path = (f"drain_{procs}", "rate", "median")
        mine = get(cr, path)
        best, who = fastest(doc, peers, path)
        goal = max(floor, 1.5 * best) if best else floor
        add(
            f"Redis drain, {procs} process(es), jobs/s",
            f"≥ 1.5 {TIMES} fastest peer ({who} {best or 0:,.0f}) and ≥ {floor:,}",
            mine,
            None if mine is None else mine >= goal,
            "{:,.0f}",
        )
    single = ("enqueue", "single_sync", "rate", "median")
    single_async = ("enqueue", "single_async", "rate", "median")
    best, who = fastest(doc, peers, single, single_async)
    mine = get(cr, single)
    add(
        "Redis enqueue, one sync call per job, /s",
        f"≥ 1.2 {TIMES} fastest peer ({who} {best or 0:,.0f})",
        mine,
        None if mine is None or best is None else mine >= 1.2 * best,
        "{:,.0f}",
    )
    mine = get(cr, ("enqueue", "concurrent_async", "rate", "median"))
    add(
        "Redis enqueue, 64 concurrent async producers, /s",
        "≥ 30,000",
        mine,
        None if mine is None else mine >= 30_000,
        "{:,.0f}",
    )
    bulk = ("enqueue", "bulk", "rate", "median")
    best, who = fastest(doc, peers, bulk)
    mine = get(cr, bulk)
    add(
        "Redis bulk enqueue, /s",
        f"≥ 3 {TIMES} fastest peer ({who} {best or 0:,.0f})",
        mine,
        None if mine is None or best is None else mine >= 3 * best,
        "{:,.0f}",
    )
    p50 = get(cr, ("latency", "p50_ms", "median"))
    p99 = get(cr, ("latency", "p99_ms", "median"))
    add("Redis idle latency p50, ms", "≤ 1.0", p50, None if p50 is None else p50 <= 1.0, "{:.2f}")
    add("Redis idle latency p99, ms", "≤ 1.5", p99, None if p99 is None else p99 <= 1.5, "{:.2f}")
    huey = r.get("huey-sqlite")
    for title, path, factor in (
        ("SQLite drain, 1 process, jobs/s", ("drain_1", "rate", "median"), 3.0),
        ("SQLite drain, 2 processes, jobs/s", ("drain_2", "rate", "median"), 3.0),
        ("SQLite enqueue, one sync call per job, /s", single, 2.5),
    ):
        mine, theirs = get(cs, path), get(huey, path)
        add(
            title,
            f"≥ {factor} {TIMES} Huey SQLite ({theirs or 0:,.0f})",
            mine,
            None if mine is None or theirs is None else mine >= factor * theirs,
            "{:,.0f}",
        )
    mine = get(cs, bulk)
    add(
        "SQLite bulk enqueue, /s",
        "≥ 100,000",
        mine,
        None if mine is None else mine >= 1e5,
        "{:,.0f}",
    )
    for name in ("conveyor-redis", "conveyor-sqlite"):
        rss = get(r.get(name), ("drain_1", "peak_rss_mb", "median"))
        add(
            f"{name} worker peak RSS, 10k jobs queued, MB",
            "< 100",
            rss,
            None if rss is None else rss < 100,
            "{:.0f}",
        )
    lines = ["| target | goal | measured | met |", "|---|---|---:|:---:|"]
    for what, goal, value, ok in rows:
        mark = NONE if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {what} | {goal} | {value} | {mark} |")
    return "\n".join(lines)


def raw_section(doc: Doc) -> str:
    """Reference limits."""
    raw = doc.get("raw") or {}
    lines = ["| reference | median /s | min | max |", "|---|---:|---:|---:|"]
    for group in ("redis_py", "sqlite"):
        for name, s in (raw.get(group) or {}).items():
            lines.append(
                f"| {group}: {name.replace('_', ' ')} | {s['median']:,.0f} | {s['min']:,.0f} "
                f"| {s['max']:,.0f} |"
            )
    bench = raw.get("redis_benchmark") or {}
    for run, tests in bench.items():
        for test, rps in tests.items():
            lines.append(f"| redis-benchmark {run.replace('_', ' ')}: {test} | {rps:,.0f} | | |")
    return "\n".join(lines)


def configs(doc: Doc) -> str:
    """How each library was configured, with its version, or why it did not run."""
    lines = ["| library | version | configuration |", "|---|---|---|"]
    for name in REDIS_TARGETS + SQLITE_TARGETS:
        res = doc["targets"].get(name)
        if res is None:
            continue
        info = res.get("info") or {}
        config = info.get("config", "")
        errors = res.get("errors") or {}
        if errors:
            config += " — **failed here:** " + "; ".join(
                f"{k}: {v.strip().splitlines()[-1][:200] if v.strip() else '?'}"
                for k, v in errors.items()
            )
        lines.append(f"| {name} | {info.get('version', '?')} | {config} |")
    return "\n".join(lines)


def render(doc: Doc) -> str:
    """The whole Markdown report."""
    m = doc["machine"]
    head = (
        f"# Benchmark results, {doc['date']}\n\n"
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['kernel']}, Python {m['python']}, "
        f"Redis {m['redis']}. Load average at start {m['load_start']}, at end "
        f"{m.get('load_end', '?')} (the machine is shared; see the notes). Whole run: "
        f"{doc.get('seconds', 0) / 60:.1f} min. Medians of {doc['settings']['reps']} runs; "
        "ratios in brackets are *peer ÷ Conveyor* (for rates < 1 means Conveyor is faster; "
        "for latency, CPU, commands and memory > 1 means Conveyor spends less).\n"
    )
    return "\n".join(
        [
            head,
            "## Redis\n",
            table(doc, REDIS_TARGETS, "conveyor-redis"),
            "\n## SQLite\n",
            table(doc, SQLITE_TARGETS, "conveyor-sqlite"),
            "\n## Targets (issue 6)\n",
            targets(doc),
            "\n## Reference limits on this machine\n",
            raw_section(doc),
            "\n## Configurations\n",
            configs(doc),
            "\n## Spread of the repeated measurements\n",
            spread(doc, REDIS_TARGETS + SQLITE_TARGETS),
            *(rerun_section(r) for r in doc.get("reruns") or []),
            "",
        ]
    )


def rerun_section(rerun: Doc) -> str:
    """A later re-measurement of some targets: its own tables, ratios within the re-run."""
    sub: Doc = {"targets": rerun["targets"]}
    names = list(rerun["targets"])
    load = ", ".join(f"{x:.2f}" for x in rerun["load_start"])
    end = ", ".join(f"{x:.2f}" for x in rerun.get("load_end", []))
    return "\n".join(
        [
            f"\n## Re-run of {', '.join(names)}, {rerun['date']}\n",
            f"Same harness and machine, load average {load} at its start ({end} at its end); "
            "ratios are within the re-run.\n",
            table(sub, [n for n in REDIS_TARGETS if n in names], "conveyor-redis"),
            "",
            table(sub, [n for n in SQLITE_TARGETS if n in names], "conveyor-sqlite"),
            "\n### Targets, by the re-run\n",
            targets(sub),
            "\n### Spread\n",
            spread(sub, [n for n in REDIS_TARGETS + SQLITE_TARGETS if n in names]),
        ]
    )
