"""Each quick start in examples/ runs (against its embedded emulator) and prints what the README says it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "share_signals.py": [
        "queued 2, sent 2 in 1 request(s)",
        "the emulator received: ['2001:db8::bad:1', '203.0.113.45']",
    ],
    "protect.py": [
        "203.0.113.99    ban      CAPI",
        "198.51.100.7    ban      lists:example-list",
        "192.0.2.1       bypass   clean",
    ],
    "run_agent.py": ["pushed 1 signal(s); decisions cached: 1000"],
    "web_fastapi.py": [
        "203.0.113.99    403  ban wall",
        "198.51.100.7    401  captcha wall",
        '192.0.2.1       200  {"hello"',
    ],
    "web_flask.py": ["203.0.113.99    403  ban wall", "198.51.100.7    401  captcha wall", "200  hello from Flask"],
    "web_django.py": [
        "System check identified no issues",
        "203.0.113.99    403  ban wall",
        "198.51.100.7    401  captcha wall",
        "192.0.2.1       200  hello from Django",
        "lists:suspects",
    ],
    "run_emulator.py": [
        "allowlists ['office']",
        "signals sent: 1; the emulator answered {'503': 1, '200': 1}",
        "enrollment: enrolled",
    ],
}


def test_every_example_is_tested() -> None:
    found = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSCAPI_") and k != "CAPI_URL"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120, env=env, cwd=EXAMPLES
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in EXPECTED[name]:
        assert line in done.stdout, (line, done.stdout)
    assert "Traceback" not in done.stderr


def _run(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CSCAPI_") and k != "CAPI_URL"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        cwd=EXAMPLES,
    )


def test_protect_runs_twice_on_the_same_files(tmp_path: Path) -> None:
    """Quick start 2 run again within CAPI's 1 h 30: the stored decisions are served, no RefreshTooSoonError."""
    first = _run("protect.py", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run("protect.py", "--data-dir", str(tmp_path))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Traceback" not in second.stderr and "RefreshTooSoonError" not in second.stderr
    assert "serving the stored decisions" in second.stdout
    for line in EXPECTED["protect.py"]:
        assert line in second.stdout, (line, second.stdout)


def test_examples_read_cscapi_base_url() -> None:
    """One name for the CAPI URL: the examples honour CSCAPI_BASE_URL, as the library and the CLI do."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    with EmbeddedEmulator(EmulatorConfig(seed=3)) as emu:
        done = _run("share_signals.py", env={"CSCAPI_BASE_URL": emu.base_url})
        assert done.returncode == 0, done.stderr[-3000:]
        assert "queued 2, sent 2" in done.stdout
        values = sorted(r["signal"]["source"]["value"] for r in emu.admin.signals())
        assert values == ["2001:db8::bad:1", "203.0.113.45"]
