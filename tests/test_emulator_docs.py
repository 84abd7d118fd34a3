"""docs/emulator.md stays true: its config file, community file and Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cscapi.emulator import EmulatorConfig
from cscapi.emulator.community import load_community_file
from cscapi.emulator.config import load_config_file
from cscapi.emulator.server import build_parser
from cscapi.emulator.state import EmulatorState

DOC = Path(__file__).resolve().parent.parent / "docs" / "emulator.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text("utf-8"), flags=re.S)


def test_toml_config_example_is_valid(tmp_path: Path) -> None:
    (toml,) = blocks("toml")
    path = tmp_path / "emu.toml"
    path.write_text(toml.replace('state_path = "emulator.db"', f'state_path = "{tmp_path / "emu.db"}"'))
    config = EmulatorConfig.from_dict(load_config_file(path))
    state = EmulatorState(config)
    assert len(state.decisions) == 5000 and len(state.blocklists) == 1 and len(state.allowlists) == 1
    assert config.faults["signals"].error_status == 503
    state.close()


def test_community_file_example_loads(tmp_path: Path) -> None:
    text = next(b for b in blocks("text") if "crowdsecurity/http-probing 12h" in b)
    path = tmp_path / "community.txt"
    path.write_text(text)
    assert [d.value for d in load_community_file(path)] == ["192.0.2.1", "198.51.100.0/24", "2001:db8::7"]


def test_every_flag_in_the_table_exists() -> None:
    table_flags = set(re.findall(r"^\| `(--[a-z-]+)", DOC.read_text("utf-8"), flags=re.M))
    parser_flags = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    assert table_flags == parser_flags - {"--help"}


def test_embedded_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (example,) = [b for b in blocks("python") if "with EmbeddedEmulator(config) as emu:" in b]
    exec(compile(example, "docs/emulator.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("http://127.0.0.1:") and "[]" in out


def test_admin_python_calls_exist() -> None:
    from cscapi.emulator import EmulatorAdminClient

    calls = set(re.findall(r"`admin\.([a-z_]+)\(", DOC.read_text("utf-8")))
    assert calls and all(hasattr(EmulatorAdminClient, name) for name in calls), calls
