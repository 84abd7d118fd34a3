"""Every command's --help works, shows an example, and imports nothing heavy (the lazy-loading promise)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import test_cli_support as support
from test_cli_support import CliEnv

cli_env = support.cli_env

COMMANDS = [
    ["init"],
    ["config", "show"],
    ["config", "path"],
    ["machines", "register"],
    ["machines", "list"],
    ["machines", "status"],
    ["machines", "enroll"],
    ["signals", "add"],
    ["signals", "push"],
    ["signals", "list"],
    ["signals", "prune"],
    ["decisions", "refresh"],
    ["decisions", "check"],
    ["decisions", "stats"],
    ["run"],
    ["demo"],
]
HEAVY = ("httpx", "sqlalchemy", "rich", "starlette", "uvicorn", "redis", "psycopg", "cryptography", "tomllib")


def test_root_help_lists_every_command_and_exit_codes(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["--help"])
    assert result.exit_code == 0
    for name in ("init", "config", "machines", "signals", "decisions", "run", "emulator", "demo"):
        assert f"  {name} " in result.stdout
    assert "Exit codes: 0 ok" in result.stdout and "3 CAPI unreachable" in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_each_command_has_help_with_an_example(cli_env: CliEnv, command: list[str]) -> None:
    result = cli_env.invoke([*command, "--help"])
    assert result.exit_code == 0, result.output
    example = result.stdout.split("Example", 1)[1]
    assert command[0] in example and "cscapi " in example


def test_emulator_help_is_the_emulators_own(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["emulator", "--help"])
    assert result.exit_code == 0
    assert "usage: cscapi emulator" in result.stdout.lower() and "--community-size" in result.stdout


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["signals", "add", "--help"], ["decisions", "check", "--help"], ["run", "--help"], ["demo", "--help"]],
)
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    code = (
        "import sys, json\n"
        "from cscapi.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"{argv} imported {loaded}"


def test_version(cli_env: CliEnv) -> None:
    from cscapi import __version__

    result = cli_env.invoke(["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout
