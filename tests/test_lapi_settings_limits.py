"""The LAPI client and watcher the CLI builds get the ``deadline`` and size caps from the settings (a dripping LAPI is
cut), the live-mode cache durations follow one rule (1 to 86400 s) in ``LapiClient`` and in the settings, and
`signals add --to lapi` needs no CAPI machine."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

import test_cli_support as support
from cscapi.cli._runtime import open_lapi_client, open_lapi_watcher
from cscapi.errors import ConfigurationError
from cscapi.lapi import LapiClient
from cscapi.settings import load_settings
from cscapi.sql_storage import SQLStorage
from hostile_server import HostileServer
from test_cli_support import CliEnv

cli_env = support.cli_env


@pytest.mark.parametrize("name", ["bad_ip_cache_duration", "clean_ip_cache_duration"])
@pytest.mark.parametrize("value", [0.5, 0.001, 86401])
def test_cache_durations_one_rule_for_client_and_settings(name: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=f"{name} must be a number of seconds from 1 to 86400"):
        LapiClient("http://127.0.0.1:1/", api_key="k", mode="live", **{name: value})
    with pytest.raises(ConfigurationError, match=name):
        load_settings(env={f"CSCAPI_{name.upper()}": str(value)}, config_path=None, require_file=False)


def test_cache_durations_at_the_bounds_are_accepted() -> None:
    client = LapiClient("http://127.0.0.1:1/", api_key="k", mode="live", bad_ip_cache_duration=1)
    client.close()
    assert client.bad_ip_cache_duration == 1.0
    env = {"CSCAPI_BAD_IP_CACHE_DURATION": "1", "CSCAPI_CLEAN_IP_CACHE_DURATION": "86400"}
    settings = load_settings(env=env, config_path=None, require_file=False)
    assert (settings.bad_ip_cache_duration, settings.clean_ip_cache_duration) == (1.0, 86400.0)


def _lapi_env(url: str, **extra: str) -> dict[str, str]:
    env = {
        "CSCAPI_LAPI_URL": url,
        "CSCAPI_LAPI_API_KEY": "bouncer-key",
        "CSCAPI_LAPI_MACHINE_ID": "watcher",
        "CSCAPI_LAPI_PASSWORD": "watcher-password",
    }
    env.update(extra)
    return env


def test_lapi_client_and_watcher_get_the_configured_limits(tmp_path: Path) -> None:
    env = _lapi_env("http://127.0.0.1:1/", CSCAPI_DEADLINE="7", CSCAPI_MAX_STREAM_BYTES="4096")
    settings = load_settings(env=env, config_path=None, require_file=False)
    with open_lapi_client(settings) as client:
        assert client.settings.deadline == 7.0
        assert client.max_stream_bytes == 4096
    storage = SQLStorage(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        watcher: Any = open_lapi_watcher(settings, storage)
        assert watcher.settings.deadline == 7.0
        watcher.close()
    finally:
        storage.close()
    # left at the CAPI-sized default (600 s), the LAPI classes keep their own 30 s
    default = load_settings(env=_lapi_env("http://127.0.0.1:1/"), config_path=None, require_file=False)
    with open_lapi_client(default) as client:
        assert client.settings.deadline == 30.0


def test_cli_deadline_cuts_a_dripping_lapi(cli_env: CliEnv) -> None:
    body = b'{"new": [], "deleted": []}' + b" " * 4000
    with HostileServer() as srv:
        srv.route("/v1/decisions/stream", lambda c, r: c.drip(200, body, 0.05, {"Content-Type": "application/json"}))
        env = _lapi_env(srv.url, CSCAPI_DEADLINE="1", CSCAPI_MAX_RETRIES="0")
        started = time.monotonic()
        result = cli_env.invoke(["--source", "lapi", "decisions", "refresh", "--json"], env=env)
        elapsed = time.monotonic() - started
    # without the setting, the 30 s LAPI default lets the 200 s drip run far past this bound
    assert result.exit_code != 0, result.output
    assert elapsed < 25, elapsed
    assert "deadline" in result.output.lower() or "deadline" in str(result.exception).lower(), result.output


def test_signals_add_to_lapi_needs_no_capi_machine(cli_env: CliEnv, lapi: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`signals add --to lapi` with no CAPI machine registered queues the signal; `signals push --to lapi` delivers it
    to the real engine as the [source] watcher; `--to capi` still asks for a CAPI machine."""
    machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    monkeypatch.setenv("CSCAPI_LAPI_URL", lapi.base_url)
    monkeypatch.setenv("CSCAPI_LAPI_MACHINE_ID", machine)
    monkeypatch.setenv("CSCAPI_LAPI_PASSWORD", password)
    add = ["signals", "add", "--ip", "203.0.113.71", "--scenario", "crowdsecurity/ssh-bf", "--decision", "ban"]
    result = cli_env.invoke([*add, "--to", "lapi", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["queued"] == 1
    with SQLStorage(f"sqlite:///{cli_env.data_dir / 'cscapi.db'}") as storage:
        assert storage.count_signals(destination="lapi").queued == 1
        assert storage.list_machines() == []
    pushed = cli_env.invoke(["signals", "push", "--to", "lapi", "--json"])
    assert pushed.exit_code == 0, (pushed.output, pushed.exception)
    assert json.loads(pushed.stdout)["sent"] == 1
    alerts = [a for a in lapi.alerts() if a["source"]["value"] == "203.0.113.71"]
    assert [a["scenario"] for a in alerts] == ["crowdsecurity/ssh-bf"]
    capi = cli_env.invoke([*add, "--to", "capi"])
    assert capi.exit_code == 2 and "machines register" in capi.output, capi.output


def test_a_stream_cap_the_settings_accept_is_accepted_by_the_lapi_client() -> None:
    """The settings take any max_stream_bytes >= 1 (as CAPIClientConfig does): the LAPI client used to refuse a value
    under 1,024 only when it was built, after the settings had said yes. Nonsense is refused the same way by both."""
    env = _lapi_env("http://127.0.0.1:1/", CSCAPI_MAX_STREAM_BYTES="512")
    settings = load_settings(env=env, config_path=None, require_file=False)
    with open_lapi_client(settings) as client:
        assert client.max_stream_bytes == 512
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigurationError, match="max_stream_bytes must be an integer >= 1"):
            LapiClient("http://127.0.0.1:1/", api_key="k", max_stream_bytes=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="max_response_bytes must be an integer >= 1"):
            LapiClient("http://127.0.0.1:1/", api_key="k", max_response_bytes=bad)  # type: ignore[arg-type]
