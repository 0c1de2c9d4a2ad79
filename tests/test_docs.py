"""The Python examples in docs/guide.md run as written, in order, in a fresh directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"


def test_guide_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: object
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__guide__"}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "greater than 0" in out
    assert "thumbs/cat.webp" in out
    assert (
        "dead: o-1 [(1, 'ConnectionError'), (2, 'ConnectionError'), (3, 'ConnectionError')]" in out
    )
    assert "['o-1'] 1" in out
    assert "charged" in out
