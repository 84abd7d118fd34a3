"""The CI dependency audit (.ci/audit.py): a vulnerable resolved version fails, an unreachable database skips aloud."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

AUDIT = ROOT / ".ci" / "audit.py"


def _fake_auditor(tmp_path: Path, report: object, exit_code: int = 0) -> Path:
    """A stand-in for the pip-audit executable that prints ``report`` as its JSON answer."""
    script = tmp_path / "pip-audit"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nprint({json.dumps(json.dumps(report))})\nsys.exit({exit_code})\n"
    )
    script.chmod(0o755)
    return script


def _run(auditor: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(AUDIT), str(auditor), str(tmp_path)], capture_output=True, text=True, timeout=60
    )


def test_a_vulnerable_version_fails_and_is_named(tmp_path: Path) -> None:
    report = {
        "dependencies": [
            {
                "name": "pymysql",
                "version": "1.1.0",
                "vulns": [{"id": "GHSA-v9hf-5j83-6xpp", "fix_versions": ["1.1.1"]}],
            },
            {"name": "httpx", "version": "0.28.1", "vulns": []},
            {"name": "cscapi", "version": "1.0.0a1", "skip_reason": "not found"},
        ]
    }
    run = _run(_fake_auditor(tmp_path, report, exit_code=1), tmp_path)
    assert run.returncode == 1
    assert "VULNERABLE pymysql 1.1.0: GHSA-v9hf-5j83-6xpp (fixed in 1.1.1)" in run.stdout
    assert "2 packages checked, 0 not answered, 1 vulnerable" in run.stdout


def test_clean_dependencies_pass(tmp_path: Path) -> None:
    report = {"dependencies": [{"name": "httpx", "version": "0.28.1", "vulns": []}]}
    run = _run(_fake_auditor(tmp_path, report), tmp_path)
    assert run.returncode == 0
    assert "1 packages checked, 0 not answered, 0 vulnerable" in run.stdout


def test_an_unreachable_database_skips_with_a_message(tmp_path: Path) -> None:
    report = {"dependencies": [{"name": "httpx", "version": "0.28.1", "skip_reason": "Dependency not found on PyPI"}]}
    run = _run(_fake_auditor(tmp_path, report, exit_code=0), tmp_path)
    assert run.returncode == 0
    assert "dependency audit skipped" in run.stdout


def test_garbage_output_skips_with_a_message(tmp_path: Path) -> None:
    script = tmp_path / "pip-audit"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('not json'); sys.stderr.write('offline\\n')\n")
    script.chmod(0o755)
    run = _run(script, tmp_path)
    assert run.returncode == 0
    assert "dependency audit skipped" in run.stdout
