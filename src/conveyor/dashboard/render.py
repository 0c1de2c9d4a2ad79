"""Templates and the small formatting helpers they use. Autoescaping is always on."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
#: Payloads, results and tracebacks longer than this many characters are cut for display.
DISPLAY_LIMIT = 100_000


def environment() -> Environment:
    """The Jinja2 environment of the dashboard: autoescape on, undefined names are errors."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["seg"] = segment
    env.filters["ts"] = timestamp
    env.filters["pct"] = percent
    env.filters["clip"] = clip
    return env


def segment(value: object) -> str:
    """``value`` quoted as one URL path segment (a ``/`` in a job id stays inside it)."""
    return quote(str(value), safe="")


def timestamp(epoch: float | None) -> str:
    """``2024-05-01 12:00:03`` (UTC), or an em dash for no time."""
    if epoch is None:
        return "—"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float | None) -> str:
    """A short human duration: ``45s``, ``12m``, ``3h 05m``, ``2d 4h``; em dash for none."""
    if seconds is None:
        return "—"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def percent(ratio: float | None) -> str:
    """``12.5%``, or an em dash when there is nothing to divide."""
    return "—" if ratio is None else f"{ratio * 100:.1f}%"


def clip(text: str, limit: int = DISPLAY_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit:,} more characters not shown)"


def pretty_json(data: bytes | None) -> str:
    """Stored JSON bytes, indented; bytes that are not JSON are shown as text."""
    if data is None:
        return ""
    text = data.decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def parse_local(value: str) -> float | None:
    """A ``datetime-local`` form value, read as UTC, as epoch seconds (``None`` if empty).

    Raises ``ValueError`` with the offending text when it is not a date and time."""
    value = value.strip()
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date and time like 2024-05-01T12:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
