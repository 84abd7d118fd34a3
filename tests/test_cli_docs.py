"""The CLI's documentation stays true: every error class, setting, command and exit code is documented."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import cscapi.errors
from cscapi.cli import COMMANDS
from cscapi.cli._exit import MEANINGS, code_for
from cscapi.settings import SETTINGS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _instance(cls: type) -> cscapi.errors.CAPIError:
    if cls is cscapi.errors.LoginBannedError:
        return cls("x", until=datetime.now(timezone.utc))
    if cls is cscapi.errors.MachineCoolingDownError:
        return cls("x", until=datetime.now(timezone.utc), reason="503")
    if cls is cscapi.errors.RefreshTooSoonError:
        return cls("x", next_allowed_at=datetime.now(timezone.utc))
    if cls.__name__ == "ResponseTooLargeError":
        return cls("x", limit="max_response_bytes", max_bytes=1)
    return cls("x")


def test_every_error_class_is_documented_with_its_exit_code() -> None:
    text = (DOCS / "errors.md").read_text()
    tree = {
        line.strip("│├└─ ").split()[0]: line.split("exit")[1].split()[0]
        for line in text.split("```")[3].splitlines()
        if "exit" in line
    }
    for name in cscapi.errors.__all__:
        assert f"## `{name}`" in text, name
        assert tree[name] == str(code_for(_instance(getattr(cscapi.errors, name)))), name


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    for spec in SETTINGS:
        assert f"| `{spec.name}` |" in text and f"`{spec.env}`" in text, spec.name


def test_readme_and_ci_run_the_same_test_command() -> None:
    """.ci/run runs exactly the README's "Run the tests" command (what CI checks is what users are told to run)."""
    root = DOCS.parent
    readme = (root / "README.md").read_text()
    command = readme.split("Run the tests", 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip()
    ci_lines = [line.strip() for line in (root / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines, command


def test_every_command_and_exit_code_is_in_cli_md() -> None:
    text = (DOCS / "cli.md").read_text()
    for name in COMMANDS:
        assert f"## `cscapi {name}" in text, name
    for code in MEANINGS:
        assert f"| {code} |" in text, code
