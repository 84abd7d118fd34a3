"""`cscapi demo`: the README's main command, through click's runner and from a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import test_cli_support as support
from test_cli_support import CliEnv, assert_user_error

cli_env = support.cli_env
ROOT = Path(__file__).resolve().parent.parent


def test_demo_tells_the_whole_story(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["demo"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for heading in (
        "1. Start a local CAPI emulator",
        "2. Register a machine",
        "3. Detect attacks",
        "4. Share them",
        "5. Pull the decisions",
        "6. Protect",
        "Done in",
    ):
        assert heading in out, heading
    for ip in ("203.0.113.45", "2001:db8:4f3a::17", "198.51.100.77", "2001:db8:beef::66"):
        assert ip in out  # the four detections
    assert "pushed 4 signals" in out and "the emulator received 4" in out
    assert re.search(r"198\.51\.100\.23 +│ ban +│ CAPI", out)
    assert re.search(r"198\.51\.100\.200 +│ ban +│ lists:demo-botnet", out)
    assert re.search(r"192\.0\.2\.10 +│ bypass +│ allowlist:demo-partners", out)
    assert re.search(r"203\.0\.113\.80 +│ bypass +│ clean", out)
    assert "Traceback" not in result.output
    # nothing left behind: no config written, no database in the data directory
    assert not cli_env.config_path.exists() and not cli_env.data_dir.exists()


def test_demo_json(cli_env: CliEnv, tmp_path: Path) -> None:
    result = cli_env.invoke(["demo", "--json", "--data-dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert len(summary["machine_id"]) == 48
    assert summary["signals"] == {"queued": 4, "sent": 4, "batches": 1, "failed_machines": {}, "received_by_capi": 4}
    assert {c["origin"] for c in summary["checks"]} == {c["expected_origin"] for c in summary["checks"]}
    assert summary["refresh"]["lists"]["lists:demo-botnet"]["entries"] == 2
    assert (tmp_path / "demo" / "cscapi.db").exists() and (tmp_path / "demo" / "decisions.db").exists()


def test_demo_against_a_real_capi_asks_first(cli_env: CliEnv) -> None:
    # Non-interactive and without --yes: refused before any network call.
    assert_user_error(cli_env.invoke(["demo", "--target", "dev"]), 2, "--yes", "api.dev.crowdsec.net")


def _readme_demo_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("Run the demo", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = block.strip()
    assert command.endswith("cscapi demo"), command
    return command


@pytest.mark.slow
def test_readme_demo_command_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """The README's first command, verbatim, in a copy of the project with a brand-new venv (pip's cache is reused)."""
    project = tmp_path / "cscapi"
    shutil.copytree(
        ROOT,
        project,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".ci-venv", "*.db", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "bench"
        ),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSCAPI_", "VIRTUAL_ENV", "PYTHON"))}
    env["HOME"] = os.environ.get("HOME", str(tmp_path))  # keep pip's cache
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    command = _readme_demo_command()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (project / ".venv" / "bin" / "cscapi").exists()
    out = done.stdout
    assert "6. Protect" in out and "Done in" in out
    assert re.search(r"198\.51\.100\.200 +│ ban +│ lists:demo-botnet", out), out
    assert "Traceback" not in done.stderr
    # the venv is really fresh: its interpreter is not the one running the tests
    assert str(project / ".venv") != sys.prefix


emulator = support.emulator


def test_demo_against_another_capi_url_reuses_its_machine(cli_env: CliEnv, emulator) -> None:
    """The `--target dev|prod|URL` path, exercised against an emulator on loopback (never a real CAPI in tests)."""
    first = cli_env.invoke(["demo", "--target", emulator.base_url, "--yes", "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["target"] == emulator.base_url and "emulator" not in summary
    assert summary["signals"]["sent"] == 4
    assert {c["expected_origin"] for c in summary["checks"]} == {None}  # no expectations against a real CAPI
    assert (cli_env.data_dir / "demo" / "cscapi.db").exists()  # kept, so the machine is reused
    second = cli_env.invoke(["demo", "--target", emulator.base_url, "--yes", "--json"])
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)
    assert again["machine_id"] == summary["machine_id"]
    assert again["refresh"] == {"skipped": "too soon", "decisions": again["refresh"]["decisions"]}
    human = cli_env.invoke(["demo", "--target", emulator.base_url, "--yes"])
    assert "1. Talk to the real CAPI at" in human.stdout and "reused and logged in" in human.stdout


@pytest.mark.slow  # about 10 s: the client's retries with backoff on the 503s
def test_demo_whose_push_fails_shows_no_check_mark_and_exits_1(cli_env: CliEnv, emulator) -> None:
    emulator.admin.set_fault("signals", error_rate=1.0, error_status=503)
    try:
        result = cli_env.invoke(["demo", "--target", emulator.base_url, "--yes"])
    finally:
        emulator.admin.clear_fault("signals")
    assert_user_error(result, 1, "signals were not sent", "503")
    assert "✗ pushed 0 signals" in result.stdout and "✓ pushed" not in result.stdout
    assert "✗ machine " in result.stdout
    assert "still queued" in result.stderr
    # the rest of the story still ran (decisions pulled, IPs checked)
    assert "Done in" in result.stdout
