"""Load SQL files of named queries (``-- name: foo`` headers), once per file."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split ``text`` into ``{name: sql}`` at each ``-- name:`` header."""
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@cache
def load(package: str, filename: str) -> dict[str, str]:
    """The named queries of ``filename`` in ``package``, read from disk once."""
    return parse(resources.files(package).joinpath(filename).read_text(encoding="utf-8"))


@cache
def script(package: str, filename: str) -> str:
    """The whole text of ``filename`` in ``package`` (a schema applied as one script)."""
    return resources.files(package).joinpath(filename).read_text(encoding="utf-8")
