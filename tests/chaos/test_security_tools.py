"""Security checks in CI: bandit (medium and high severity) on src/, pip-audit on the
installed environment.

pip-audit asks a vulnerability service about every installed distribution. Where that
service cannot be reached (a sandbox that reaches only a package index), pip-audit still
exits 0 and prints "No known vulnerabilities found" while it audited nothing: every
dependency comes back "not found ... could not be audited". That case, and only that case,
is reported as a skip naming the reason; any vulnerability found fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_bandit_finds_nothing_of_medium_or_high_severity_in_src() -> None:
    out = subprocess.run(
        [str(BIN / "bandit"), "-r", "src", "-ll", "-f", "json", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(out.stdout)
    findings = [
        f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
        for r in report["results"]
    ]
    assert findings == [], "\n".join(findings)
    assert report["metrics"]["_totals"]["loc"] > 0  # it did scan the sources


def test_pip_audit_finds_no_known_vulnerability() -> None:
    out = subprocess.run(
        [str(BIN / "pip-audit"), "-f", "json", "--progress-spinner", "off", "--skip-editable"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        unreachable = ("ConnectionError", "NameResolutionError", "Max retries exceeded")
        if any(marker in out.stderr for marker in unreachable):
            pytest.skip(f"pip-audit cannot reach its vulnerability service: {out.stderr[-300:]}")
        raise AssertionError(
            f"pip-audit failed (exit {out.returncode}): {out.stderr[-2000:]}"
        ) from None
    # Conveyor itself (installed editable) is not on PyPI: nothing to audit there.
    deps = [d for d in report["dependencies"] if "editable" not in d.get("skip_reason", "")]
    vulnerable = [
        f"{d['name']} {d['version']}: {', '.join(v['id'] for v in d['vulns'])}"
        for d in deps
        if d.get("vulns")
    ]
    assert vulnerable == [], "\n".join(vulnerable)
    audited = [d for d in deps if "skip_reason" not in d]
    if not audited:
        reasons = {d["skip_reason"].split(":")[0] for d in deps}
        if reasons == {"Dependency not found on PyPI and could not be audited"}:
            pytest.skip(
                f"pip-audit audited none of {len(deps)} distributions: the vulnerability "
                "service (PyPI's JSON API) is not reachable from this machine"
            )
        raise AssertionError(f"pip-audit audited nothing, for other reasons: {reasons}")
