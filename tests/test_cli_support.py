"""Helpers for the CLI tests: an isolated environment (HOME, XDG dirs, no CSCAPI_* variables) and a runner.

Not a test module (it holds no tests); the CLI test modules import its fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cscapi.cli import cli


@dataclass
class CliEnv:
    """Where an isolated CLI invocation keeps its files."""

    home: Path
    config_path: Path
    data_dir: Path
    runner: CliRunner

    def invoke(self, args: Sequence[str], *, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        return self.runner.invoke(cli, list(args), env=env, input=input, catch_exceptions=True, prog_name="cscapi")


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliEnv]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    for key in list(os.environ):
        if key.startswith("CSCAPI_") and not key.startswith("CSCAPI_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("NO_COLOR", raising=False)
    yield CliEnv(
        home=home,
        config_path=home / ".config" / "cscapi" / "config.toml",
        data_dir=home / ".local" / "share" / "cscapi",
        runner=CliRunner(),
    )


def assert_user_error(result: Result, code: int, *fragments: str) -> str:
    """A user error: exit ``code``, exactly one line on stderr starting with ``error:``, no traceback anywhere."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def emulator() -> Iterator[object]:
    """A real CAPI emulator on a free loopback port, shared by a module's tests (no login rate limit)."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    config = EmulatorConfig(seed=7, community_size=40, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu:
        yield emu


@pytest.fixture
def capi_env(cli_env: CliEnv, emulator: object, monkeypatch: pytest.MonkeyPatch) -> CliEnv:
    """``cli_env`` pointed at the emulator with scenarios configured through the environment."""
    monkeypatch.setenv("CSCAPI_TARGET", emulator.base_url)  # type: ignore[attr-defined]
    monkeypatch.setenv("CSCAPI_SCENARIOS", "crowdsecurity/ssh-bf,crowdsecurity/http-probing")
    return cli_env


def unreachable_url() -> str:
    """A loopback URL where nothing listens (a port bound then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
