"""The request deadline and the size caps are settings of the CLI and the agent (TOML, ``CSCAPI_*``), judged by the
same checks as ``CAPIClientConfig``, shown by ``config show`` and handed to the client the commands build."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import test_cli_support as support
from cscapi.cli._runtime import client_config, open_client
from cscapi.client import CAPIClientConfig
from cscapi.errors import ConfigurationError, DeadlineExceededError
from cscapi.settings import load_settings
from cscapi.sql_storage import SQLStorage
from hostile_server import HostileServer
from test_cli_support import CliEnv, assert_user_error

cli_env = support.cli_env
MACHINE = "m" * 48


def test_defaults_are_the_library_s() -> None:
    settings = load_settings(env={}, config_path=None, require_file=False)
    library = CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"])
    for name in ("deadline", "max_stream_bytes", "max_link_bytes"):
        assert settings.values[name] == getattr(library, name), name
        assert settings.source(name) == "default"


def test_env_and_file_set_them_and_the_client_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[capi]\ndeadline = 12.5\nmax_link_bytes = 4096\n")
    env = {"CSCAPI_MAX_STREAM_BYTES": "2048", "CSCAPI_DEADLINE": "7"}
    settings = load_settings(env=env, config_path=path)
    assert (settings.deadline, settings.max_stream_bytes, settings.max_link_bytes) == (7.0, 2048, 4096)
    assert settings.source("deadline") == "env CSCAPI_DEADLINE"  # env beats the file
    assert settings.source("max_link_bytes") == f"file {path}"
    config = client_config(settings)
    assert (config.deadline, config.max_stream_bytes, config.max_link_bytes) == (7.0, 2048, 4096)
    assert config.transport_settings().deadline == 7.0


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("deadline", "0", 0.0),
        ("deadline", "inf", float("inf")),
        ("deadline", "-3", -3.0),
        ("max_stream_bytes", "0", 0),
        ("max_link_bytes", "-1", -1),
    ],
)
def test_bad_values_are_refused_with_the_library_s_message(name: str, raw: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as from_settings:
        load_settings(env={f"CSCAPI_{name.upper()}": raw}, config_path=None, require_file=False)
    with pytest.raises(ConfigurationError) as from_library:
        CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], **{name: value})  # type: ignore[arg-type]
    assert from_settings.value.message == f"{from_library.value.message} (from CSCAPI_{name.upper()})"
    assert from_settings.value.hint == from_library.value.hint


def test_a_non_number_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"max_stream_bytes must be an integer.*CSCAPI_MAX_STREAM_BYTES"):
        load_settings(env={"CSCAPI_MAX_STREAM_BYTES": "lots"}, config_path=None, require_file=False)


def test_config_show_lists_them_with_their_source(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["config", "show", "--json"], env={"CSCAPI_DEADLINE": "42"})
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["settings"]
    assert shown["deadline"] == {"value": 42.0, "source": "env CSCAPI_DEADLINE"}
    assert shown["max_stream_bytes"] == {"value": 256 * 1024 * 1024, "source": "default"}
    assert shown["max_link_bytes"] == {"value": 64 * 1024 * 1024, "source": "default"}
    table = cli_env.invoke(["config", "show"], env={"CSCAPI_DEADLINE": "42"})
    assert table.exit_code == 0, table.output
    assert "deadline" in table.output and "42" in table.output and "CSCAPI_DEADLINE" in table.output
    assert_user_error(cli_env.invoke(["config", "show"], env={"CSCAPI_DEADLINE": "0"}), 2, "deadline")


def test_the_deadline_setting_bounds_a_real_request(tmp_path: Path) -> None:
    """A client built from the settings cuts a dripping answer at the configured deadline, not the default 600 s."""
    with HostileServer() as srv:
        srv.route("/v3/decisions/stream", lambda c, r: c.drip(200, b"{}" + b" " * 5000, 0.05))
        env = {"CSCAPI_TARGET": srv.url, "CSCAPI_DEADLINE": "1", "CSCAPI_MAX_RETRIES": "0"}
        settings = load_settings(env=env, config_path=None, require_file=False)
        storage = SQLStorage(f"sqlite:///{tmp_path / 'q.db'}")
        started = time.monotonic()
        try:
            with (
                open_client(settings, storage, send_metrics_after_login=False) as client,
                pytest.raises(DeadlineExceededError, match="1 s deadline"),
            ):
                client.get_decisions(MACHINE)
        finally:
            storage.close()
    assert time.monotonic() - started < 60  # the drip lasts 250 s
