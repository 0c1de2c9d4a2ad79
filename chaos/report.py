"""``python -m chaos.report results.jsonl``: the checker's JSON lines as a Markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = (
    ("scenario", "scenario"),
    ("engine", "engine"),
    ("enqueued", "enqueued"),
    ("completed", "completed"),
    ("lost", "lost"),
    ("unexpected", "unexp."),
    ("duplicate_runs", "dup. runs"),
    ("in_flight_at_kills", "in flight at kills"),
    ("runs_after_ack", "after ack"),
    ("lease_overlaps", "overlaps"),
    ("dead_lettered", "dead"),
    ("dlq_precision", "DLQ prec."),
    ("dlq_recall", "DLQ recall"),
    ("recovery_p50", "rec. p50 s"),
    ("recovery_p99", "rec. p99 s"),
    ("recovery_max", "rec. max s"),
    ("seconds", "run s"),
    ("ok", "ok"),
)


def cell(value: Any) -> str:
    """One table cell."""
    if value is None:
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "**NO**"
    return str(value)


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of results, one row per run."""
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in results:
        lines.append("| " + " | ".join(cell(r.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    """Print the table of every file named on the command line."""
    results = [
        json.loads(line)
        for name in sys.argv[1:]
        for line in Path(name).read_text().splitlines()
        if line.strip()
    ]
    print(table(results))


if __name__ == "__main__":
    main()
