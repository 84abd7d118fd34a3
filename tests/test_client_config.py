"""CAPIClientConfig validation, URL selection, repr hygiene, and the real httpx transport on loopback sockets."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.errors import ConfigurationError, TransportError
from cscapi.protocol import DEV_URL, PROD_URL, Request, safe_url
from cscapi.sql_storage import SQLStorage
from cscapi.transport import SyncTransport, TransportSettings
from cscapi.utils import generate_machine_id_from_key

SCEN = ["crowdsecurity/ssh-bf"]


def test_legacy_defaults_and_positional_order() -> None:
    config = CAPIClientConfig(SCEN, False, "mycompany", 2, 5, 1, logging.getLogger("mine"))
    assert (config.prod, config.user_agent_prefix, config.max_retries, config.latency_offset, config.retry_delay) == (
        False,
        "mycompany",
        2,
        5,
        1,
    )
    assert config.logger.name == "mine"
    defaults = CAPIClientConfig(scenarios=SCEN)
    assert (defaults.max_retries, defaults.latency_offset, defaults.retry_delay, defaults.batch_size) == (3, 10, 5, 250)
    assert defaults.verify is True and defaults.send_metrics_after_login is True and defaults.gzip_threshold == 5120
    assert defaults.user_agent.startswith("capi-py-sdk/")


def test_api_root_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSCAPI_BASE_URL", raising=False)
    assert CAPIClientConfig(scenarios=SCEN).api_root == DEV_URL
    assert CAPIClientConfig(scenarios=SCEN, prod=True).api_root == PROD_URL
    assert CAPIClientConfig(scenarios=SCEN, base_url="http://127.0.0.1:8081/v3").api_root == "http://127.0.0.1:8081/"
    monkeypatch.setenv("CSCAPI_BASE_URL", "http://127.0.0.1:9999")
    assert CAPIClientConfig(scenarios=SCEN).api_root == "http://127.0.0.1:9999/"
    assert CAPIClientConfig(scenarios=SCEN, prod=True).api_root == PROD_URL  # an explicit prod=True wins
    assert CAPIClientConfig(scenarios=SCEN, base_url="http://127.0.0.1:1/").api_root == "http://127.0.0.1:1/"
    monkeypatch.setenv("CSCAPI_BASE_URL", "not a url")
    with pytest.raises(ConfigurationError):
        CAPIClientConfig(scenarios=SCEN)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scenarios": []},
        {"scenarios": ["ssh-bf"]},
        {"scenarios": "crowdsecurity/ssh-bf"},
        {"user_agent_prefix": "my company"},
        {"user_agent_prefix": "x" * 65},
        {"max_retries": -1},
        {"max_retries": 100},
        {"max_retries": 1.5},
        {"retry_delay": -1},
        {"latency_offset": "10"},
        {"batch_size": 0},
        {"batch_size": 251},
        {"machine_id_prefix": "UPPER"},
        {"machine_id_prefix": "x" * 17},
        {"verify": "/no/such/ca.pem"},
        {"verify": 3},
        {"api_version": "v2"},
        {"claim_lease": 0},
        {"base_url": "ftp://x/"},
        {"logger": "cscapi"},
        {"timeout": -1},
        {"timeout": 0},
        {"timeout": None},
        {"timeout": "30"},
        {"timeout": True},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": httpx.Timeout(-1.0)},
        {"timeout": httpx.Timeout(10.0, connect=0.0)},
        {"latency_offset": -1},
        {"latency_offset": 1e9},
        {"latency_offset": 3600.5},
        {"latency_offset": float("nan")},
        {"retry_delay": float("inf")},
        {"failing_cooldown": float("nan")},
    ],
)
def test_bad_settings_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    options: dict[str, Any] = {"scenarios": SCEN, "base_url": "http://127.0.0.1:1/"}
    options.update(kwargs)
    with pytest.raises(ConfigurationError) as info:
        CAPIClientConfig(**options)
    assert info.value.message
    if "timeout" in kwargs or "latency_offset" in kwargs:
        assert next(iter(kwargs)) in info.value.message  # the message names the field


@pytest.mark.parametrize("timeout", [0.5, 30, httpx.Timeout(30.0, connect=5.0), httpx.Timeout(None, read=60.0)])
def test_good_timeouts_and_latency_offsets_are_accepted(timeout: Any) -> None:
    config = CAPIClientConfig(scenarios=SCEN, timeout=timeout, latency_offset=3600)
    assert config.transport_settings().client_kwargs()["timeout"] == timeout
    assert CAPIClientConfig(scenarios=SCEN, latency_offset=0).latency_offset == 0


def test_tls_settings(tmp_path: Path) -> None:
    context = ssl.create_default_context()
    config = CAPIClientConfig(scenarios=SCEN, verify=context)
    assert config.transport_settings().client_kwargs()["verify"] is context
    assert "SSLContext" in repr(config)
    assert CAPIClientConfig(scenarios=SCEN, verify=False).transport_settings().client_kwargs()["verify"] is False
    bad_bundle = tmp_path / "ca.pem"
    bad_bundle.write_text("not a certificate")
    settings = CAPIClientConfig(scenarios=SCEN, verify=str(bad_bundle)).transport_settings()
    with pytest.raises(ConfigurationError, match="CA bundle"):
        settings.client_kwargs()


def test_client_refuses_wrong_arguments(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ConfigurationError):
        CAPIClient(storage, {"scenarios": SCEN})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        CAPIClient(object(), CAPIClientConfig(scenarios=SCEN))  # type: ignore[arg-type]
    client = CAPIClient(storage, CAPIClientConfig(scenarios=SCEN, base_url="http://127.0.0.1:1/"))
    assert "127.0.0.1:1" in repr(client)
    client.close()
    storage.close()


def test_safe_url_hides_queries_and_credentials() -> None:
    assert safe_url("http://h/x?sig=secret") == "http://h/x?…"
    assert safe_url("http://user:pw@h:1/x") == "http://***@h:1/x"
    assert safe_url("http://h/x") == "http://h/x"
    assert "secret" not in repr(Request("GET", "http://h/x?sig=secret", "link download"))


# ---- the real transport on loopback sockets ----------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback socket that accepts connections and never answers (for timeouts)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_timeouts_on_a_real_socket_are_retried_then_raised(silent_server: int, tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 't.db'}")
    config = CAPIClientConfig(
        scenarios=SCEN, base_url=f"http://127.0.0.1:{silent_server}/", timeout=0.2, max_retries=1, retry_delay=0.01
    )
    with CAPIClient(storage, config) as client, pytest.raises(TransportError) as info:
        client.download_link(f"http://127.0.0.1:{silent_server}/list?sig=secret")
    storage.close()
    assert "2 tries" in info.value.message and "timeout" in info.value.message
    assert "secret" not in str(info.value)


def test_connection_refused_is_a_transport_error(free_tcp_port: int, tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'r.db'}")
    config = CAPIClientConfig(scenarios=SCEN, base_url=f"http://127.0.0.1:{free_tcp_port}/", retry_delay=0.01)
    machine_id = generate_machine_id_from_key("refused")
    with CAPIClient(storage, config) as client, pytest.raises(TransportError) as info:
        client.register_machine(machine_id)
    stored = storage.get_machine_by_id(machine_id)
    storage.close()
    assert "register" in info.value.message and "4 tries" in info.value.message and info.value.hint
    assert stored is not None and stored.password and not stored.registered  # kept for the next attempt


def test_transport_reuses_one_connection_pool() -> None:
    transport = SyncTransport(TransportSettings(user_agent="ua"))
    assert transport.client is transport.client
    transport.close()


@pytest.mark.parametrize("client_class", ["sync", "async"])
def test_clients_refuse_wrong_storage_or_config(client_class: str, tmp_path: Path) -> None:
    from cscapi.aio import AsyncCAPIClient

    cls: Any = CAPIClient if client_class == "sync" else AsyncCAPIClient
    storage = SQLStorage(f"sqlite:///{tmp_path / 'c.db'}")
    config = CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url="http://127.0.0.1:9/")
    with pytest.raises(ConfigurationError, match="CAPIClientConfig"):
        cls(storage, {"scenarios": ["crowdsecurity/ssh-bf"]})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="StorageInterface"):
        cls("sqlite:///c.db", config)  # type: ignore[arg-type]
    storage.close()


# ---- one validator per setting, every layer (issue 10 item 2) -----------------------------------------------------


@pytest.mark.parametrize("prefix", ["my+app", "my app", "my/app", "my(app)", "app;x", "caf\u00e9", "x" * 65, "a\tb"])
def test_user_agent_prefix_is_judged_the_same_by_the_client_config_and_the_cli_settings(prefix: str) -> None:
    """The CLI/agent settings accepted ``my+app`` (and ``(``, ``;``, non-ASCII) that CAPIClientConfig refused: the
    prefix is the start of a User-Agent product token, so both now apply the one rule and say the same thing."""
    from cscapi.settings import load_settings

    with pytest.raises(ConfigurationError) as by_client:
        CAPIClientConfig(SCEN, user_agent_prefix=prefix)
    with pytest.raises(ConfigurationError) as by_settings:
        load_settings(env={"CSCAPI_USER_AGENT_PREFIX": prefix, "HOME": "/nonexistent"})
    assert "user_agent_prefix" in by_client.value.message
    assert by_settings.value.message.startswith(by_client.value.message)  # plus "(from CSCAPI_USER_AGENT_PREFIX)"


@pytest.mark.parametrize("prefix", ["myapp", "my.app_v2-beta", "x" * 64, ""])
def test_a_good_user_agent_prefix_is_accepted_by_every_layer(prefix: str) -> None:
    from cscapi.settings import load_settings

    config = CAPIClientConfig(SCEN, user_agent_prefix=prefix)
    assert config.user_agent.startswith(f"{prefix}-capi-py-sdk/" if prefix else "capi-py-sdk/")
    settings = load_settings(env={"CSCAPI_USER_AGENT_PREFIX": prefix, "HOME": "/nonexistent"})
    assert settings.user_agent_prefix == prefix


@pytest.mark.parametrize("size", [251, 5000, 0, True, 2.0])
def test_a_batch_size_outside_1_to_250_is_refused_by_every_config_naming_the_limit(size: object) -> None:
    """One behaviour for ``batch_size`` as a setting: CAPIClientConfig, AgentConfig and the CLI settings all refuse
    it with a ConfigurationError naming 250 (AgentConfig and the settings had their own copies of the rule)."""
    from cscapi.agent import AgentConfig
    from cscapi.settings import load_settings

    messages = []
    for build in (
        lambda: CAPIClientConfig(SCEN, batch_size=size),
        lambda: AgentConfig(batch_size=size),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigurationError) as exc:
            build()
        messages.append(exc.value.message)
    assert messages[0] == messages[1]
    assert "250" in messages[0] and "batch_size" in messages[0]
    if isinstance(size, int) and not isinstance(size, bool):
        with pytest.raises(ConfigurationError, match="250"):
            load_settings(env={"CSCAPI_BATCH_SIZE": str(size), "HOME": "/nonexistent"})


@pytest.mark.parametrize("size", [0, 251, 5000])
def test_the_cli_settings_refuse_a_batch_size_with_the_one_rule_s_message(size: int) -> None:
    """The ``batch_size`` Setting had its own 1-250 bounds, so the CLI said "between 1 and 250" before the shared
    check ran: now its message is CAPIClientConfig's (plus where the value came from)."""
    from cscapi.settings import load_settings

    with pytest.raises(ConfigurationError) as by_client:
        CAPIClientConfig(SCEN, batch_size=size)
    with pytest.raises(ConfigurationError) as by_settings:
        load_settings(env={"CSCAPI_BATCH_SIZE": str(size), "HOME": "/nonexistent"})
    assert by_settings.value.message.startswith(by_client.value.message.rstrip("."))


def test_the_limits_every_layer_uses_are_the_protocol_module_s() -> None:
    """The URLs and limits have one home, ``cscapi.limits``; the legacy and public names are the same values."""
    import cscapi.client
    import cscapi.limits
    import cscapi.settings
    from cscapi._core import MAX_BATCH_SIZE
    from cscapi.agent import MIN_REFRESH_SECONDS, AgentConfig

    assert (PROD_URL, DEV_URL) == (cscapi.limits.PROD_URL, cscapi.limits.DEV_URL)
    assert (cscapi.settings.CAPI_PROD_URL, cscapi.settings.CAPI_DEV_URL) == (PROD_URL, DEV_URL)
    assert cscapi.client.CAPI_BASE_URL == PROD_URL + "v3" and cscapi.client.CAPI_BASE_DEV_URL == DEV_URL + "v3"
    assert MAX_BATCH_SIZE == cscapi.limits.MAX_BATCH == CAPIClientConfig(SCEN).batch_size == 250
    assert MIN_REFRESH_SECONDS == cscapi.settings.MIN_REFRESH_INTERVAL == cscapi.limits.MIN_REFRESH_INTERVAL == 5400
    assert AgentConfig().refresh_interval == cscapi.settings.load_settings(env={"HOME": "/x"}).refresh_interval


def test_old_import_paths_of_the_config_and_the_settings_still_work() -> None:
    """``cscapi.client.CAPIClientConfig`` is ``cscapi._config``'s class; ``cscapi.config`` IS ``cscapi.settings``."""
    import cscapi._config
    import cscapi.aio
    import cscapi.config
    import cscapi.settings
    from cscapi.client import BASE_URL_ENV, MAX_LATENCY_OFFSET, SIGNAL_BATCH_LIMIT
    from cscapi.config import MIN_REFRESH_INTERVAL, SETTINGS, Settings, load_settings

    assert CAPIClientConfig is cscapi._config.CAPIClientConfig
    assert cscapi.config is cscapi.settings
    assert (load_settings, Settings, SETTINGS) == (
        cscapi.settings.load_settings,
        cscapi.settings.Settings,
        cscapi.settings.SETTINGS,
    )
    assert (BASE_URL_ENV, MAX_LATENCY_OFFSET, SIGNAL_BATCH_LIMIT, MIN_REFRESH_INTERVAL) == (
        "CSCAPI_BASE_URL",
        3600.0,
        5000,
        5400,
    )


@pytest.mark.parametrize(("raw", "ok"), [("0.05", True), ("900", True), ("0", False), ("-1", False), ("inf", False)])
def test_timeout_is_judged_the_same_by_the_client_config_and_the_cli_settings(raw: str, ok: bool) -> None:
    """The CLI refused 0.05 and 900 (its own 0.1-600 range) that CAPIClientConfig takes: one rule, a positive
    finite number of seconds (each request is cut at ``deadline`` anyway)."""
    from cscapi.settings import load_settings

    env = {"CSCAPI_TIMEOUT": raw, "HOME": "/nonexistent"}
    if ok:
        assert load_settings(env=env).timeout == CAPIClientConfig(SCEN, timeout=float(raw)).timeout == float(raw)
        return
    with pytest.raises(ConfigurationError) as by_client:
        CAPIClientConfig(SCEN, timeout=float(raw))
    with pytest.raises(ConfigurationError) as by_settings:
        load_settings(env=env)
    assert by_settings.value.message.startswith(by_client.value.message.rstrip("."))
