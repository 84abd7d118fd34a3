"""LapiWatcher against the real CrowdSec 1.4.6 engine (tests/lapi_support.py): a machine registered with `cscli
machines add` pushes the queued signals as alerts; `cscli alerts list` / `cscli decisions list` read them back and the
bouncer side (LapiClient) sees the decisions; failures keep the signals queued."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from cscapi.errors import AuthenticationError, ConfigurationError, TransportError
from cscapi.lapi import AsyncLapiClient, AsyncLapiWatcher, LapiClient, LapiWatcher
from cscapi.lapi.alerts import alert_from_signal
from cscapi.models import QueueCounts
from cscapi.remediation import RemediationEngine
from cscapi.signals import create_signal
from cscapi.sql_storage import SQLStorage
from cscapi.timeutil import utcnow
from test_storage_support import MACHINE_A


@pytest.fixture
def storage(sqlite_url: str) -> Iterator[SQLStorage]:
    with SQLStorage(sqlite_url) as st:
        yield st


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


def _scenario() -> str:
    return f"cscapi-tests/watcher-{secrets.token_hex(4)}"


def _signals(scenario: str) -> list[Any]:
    return [
        create_signal(
            "192.0.2.77",
            scenario,
            machine_id=MACHINE_A,
            decision_type="ban",
            duration="2h",
            context={"target": "login"},
        ),
        create_signal("198.51.100.0/24", scenario, machine_id=MACHINE_A, decision_type="ban", duration="3h"),
        create_signal("203.0.113.9", scenario, machine_id=MACHINE_A, message="a whisper"),  # no decision: an alert only
    ]


def _mine(items: list[dict[str, Any]], scenario: str) -> list[dict[str, Any]]:
    return [a for a in items if a.get("scenario") == scenario]


def _all_alerts(lapi: Any) -> list[dict[str, Any]]:
    """`cscli alerts list -a -o json`: with the alerts carrying no decision (hidden without -a on 1.4.6)."""
    out = lapi.cscli("alerts", "list", "-a", "-l", "0", "-o", "json").stdout.strip()
    found = json.loads(out) if out and out != "null" else []
    assert isinstance(found, list)
    return found


def test_signals_become_alerts_and_decisions_the_bouncer_sees(
    lapi: Any, lapi_bouncer_key: str, storage: SQLStorage, caplog: pytest.LogCaptureFixture
) -> None:
    machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    scenario = _scenario()
    caplog.set_level(logging.DEBUG)
    with LapiWatcher(lapi.base_url, storage, machine_id=machine, password=password, batch_size=2) as watcher:
        assert password not in repr(watcher)
        assert watcher.add_signals(_signals(scenario)) == 3
        assert storage.count_signals() == QueueCounts()  # CAPI's queue untouched
        report = watcher.send_signals()
        assert report == 3 and report.quarantined == 0 and not report.errors
        assert report.batches == 2  # batch_size 2: two POSTs, one login
        assert storage.count_signals(destination="lapi") == QueueCounts(sent=3)
        assert watcher.send_signals() == 0  # exactly once: nothing left
    assert password not in caplog.text

    alerts = _mine(_all_alerts(lapi), scenario)
    assert len(alerts) == 3
    values = sorted(a["source"]["value"] for a in alerts)
    assert values == ["192.0.2.77", "198.51.100.0/24", "203.0.113.9"]
    scopes = {a["source"]["value"]: a["source"]["scope"] for a in alerts}
    assert scopes == {"192.0.2.77": "Ip", "198.51.100.0/24": "Range", "203.0.113.9": "Ip"}
    decisions = [d for a in _mine(lapi.decisions(), scenario) for d in a.get("decisions") or []]
    found = {d["value"]: (d["type"], d["origin"], d["scope"]) for d in decisions}
    assert found == {"192.0.2.77": ("ban", "crowdsec", "Ip"), "198.51.100.0/24": ("ban", "crowdsec", "Range")}
    durations = {d["value"]: d["duration"] for d in decisions}
    assert durations["192.0.2.77"].startswith("1h5")  # our 2h, not the profile's 4h
    assert durations["198.51.100.0/24"].startswith("2h5")

    with LapiClient(lapi.base_url, api_key=lapi_bouncer_key) as client:  # the bouncer side
        engine = RemediationEngine(client)
        engine.refresh_decisions()
        assert engine.get_ip_remediation("192.0.2.77").remediation == "ban"
        assert engine.get_ip_remediation("198.51.100.42").remediation == "ban"
        assert engine.get_ip_remediation("203.0.113.9").remediation != "ban"  # a whisper decides nothing


def test_bad_password_is_a_typed_authentication_error(lapi: Any, storage: SQLStorage) -> None:
    machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    wrong = "not-" + password
    with LapiWatcher(lapi.base_url, storage, machine_id=machine, password=wrong) as watcher:
        with pytest.raises(AuthenticationError) as info:
            watcher.login()
        assert wrong not in str(info.value) and "cscli machines" in (info.value.hint or "")
        watcher.add_signals(_signals(_scenario()))
        report = watcher.send_signals()
        assert report == 0 and isinstance(report.errors[machine], AuthenticationError)
        assert storage.count_signals(destination="lapi") == QueueCounts(queued=3)  # kept for a later try


def test_lapi_down_keeps_the_signals_queued(storage: SQLStorage) -> None:
    with LapiWatcher(_dead_url(), storage, machine_id="m", password="p", max_retries=0) as watcher:
        watcher.add_signals(_signals(_scenario()))
        report = watcher.send_signals()
        assert report == 0 and isinstance(report.errors["m"], TransportError)
    assert storage.count_signals(destination="lapi") == QueueCounts(queued=3)
    assert len(storage.claim_signals(10, 60, destination="lapi")) == 3  # released, not left claimed


def test_token_is_reused_then_renewed_after_a_401(lapi: Any, storage: SQLStorage) -> None:
    machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    scenario = _scenario()
    with LapiWatcher(lapi.base_url, storage, machine_id=machine, password=password) as watcher:
        watcher.login()
        first = watcher._token
        watcher.add_signals(_signals(scenario)[:1])
        assert watcher.send_signals() == 1
        assert watcher._token == first  # reused
        watcher._token = first + "x"  # a token LAPI refuses: one new login, then the POST
        watcher.add_signals(_signals(scenario)[1:2])
        assert watcher.send_signals() == 1
        assert watcher._token not in (None, first + "x")
    assert len(_mine(_all_alerts(lapi), scenario)) == 2


def test_async_watcher_pushes_the_same_alerts(lapi: Any, lapi_bouncer_key: str, storage: SQLStorage) -> None:
    import asyncio

    machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    scenario = _scenario()

    async def main() -> int:
        async with AsyncLapiWatcher(lapi.base_url, storage, machine_id=machine, password=password) as watcher:
            await watcher.add_signals(_signals(scenario))
            return int(await watcher.send_signals())

    assert asyncio.run(main()) == 3
    assert len(_mine(_all_alerts(lapi), scenario)) == 3

    async def bouncer() -> list[Any]:
        async with AsyncLapiClient(lapi.base_url, api_key=lapi_bouncer_key) as client:
            return await client.get_ip_decisions("192.0.2.77")

    assert [d.type for d in asyncio.run(bouncer())] == ["ban"]


def test_alerts_fit_the_lapi_swagger(lapi_spec: dict[str, Any], validate_against: Any) -> None:
    now = utcnow()
    alerts = [alert_from_signal(s, machine_id="m", now=now) for s in _signals("crowdsecurity/x")]
    validate_against(lapi_spec, "AddAlertsRequest", alerts)
    assert [a["remediation"] for a in alerts] == [True, True, False]
    assert alerts[0]["decisions"][0]["duration"] == "2h" and alerts[0]["meta"] == [{"key": "target", "value": "login"}]


def test_a_storage_without_destinations_is_refused() -> None:
    from cscapi.legacy_storage import LegacyStorageAdapter
    from cscapi.storage import IncompatibleStorageError
    from test_legacy_storage import MemoryLegacyStorage

    with pytest.raises(IncompatibleStorageError):
        LapiWatcher("http://127.0.0.1:8080/", LegacyStorageAdapter(MemoryLegacyStorage()), machine_id="m", password="p")
    with pytest.raises(ConfigurationError):
        LapiWatcher("http://127.0.0.1:8080/", object(), machine_id="m")


def test_a_signal_queued_for_both_reaches_capi_and_lapi_exactly_once(lapi: Any, storage: SQLStorage) -> None:
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    scenario = _scenario()
    config = EmulatorConfig(seed=1, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu:
        cfg = CAPIClientConfig(scenarios=[scenario], base_url=emu.base_url, send_metrics_after_login=False)
        with CAPIClient(storage, cfg) as client:
            signals = _signals(scenario)
            assert client.add_signals(signals, destinations="both") == 6
            assert client.add_signals(signals, destinations=("capi", "lapi")) == 0  # same uuids: nothing new
            with LapiWatcher(lapi.base_url, storage, machine_id=machine, password=password) as watcher:
                assert watcher.send_signals() == 3
                assert client.send_signals(prune_after_send=False) == 3
                assert watcher.send_signals() == 0 and client.send_signals() == 0
        received = sorted(str(item["signal"]["uuid"]) for item in emu.state.signals)
    assert received == sorted(str(s.uuid) for s in signals)
    assert len(_mine(_all_alerts(lapi), scenario)) == 3
    assert storage.count_signals() == QueueCounts(sent=3)
    assert storage.count_signals(destination="lapi") == QueueCounts(sent=3)


def test_a_refused_batch_is_bisected_and_only_the_bad_signal_quarantined(storage: SQLStorage) -> None:
    from hostile_server import HostileServer

    bad = "cscapi-tests/refused"
    seen: list[int] = []

    def alerts(conn: Any, request: Any) -> None:
        body = json.loads(request.body)
        seen.append(len(body))
        assert request.headers.get("authorization") == "Bearer T"
        if any(a["scenario"] == bad for a in body):
            conn.json(400, {"message": "invalid alert", "errors": "scenario refused"})
        else:
            conn.json(201, [str(i) for i in range(len(body))])

    with HostileServer() as srv:
        srv.route(
            "/v1/watchers/login",
            lambda c, r: c.json(200, {"code": 200, "token": "T", "expire": "2099-01-01T00:00:00Z"}),
        )
        srv.route("/v1/alerts", alerts)
        signals = [create_signal(f"192.0.2.{i}", "cscapi-tests/ok", machine_id=MACHINE_A) for i in range(1, 8)]
        signals.insert(3, create_signal("192.0.2.100", bad, machine_id=MACHINE_A))
        with LapiWatcher(srv.url, storage, machine_id="m", password="p", batch_size=8) as watcher:
            watcher.add_signals(signals)
            report = watcher.send_signals()
        assert srv.count("/v1/watchers/login") == 1
    assert report == 7 and report.quarantined == 1 and not report.errors
    assert seen == [8, 4, 2, 2, 1, 1, 4]  # bisection down to the one refused alert
    quarantined = storage.list_quarantined(destination="lapi")
    assert [s.scenario for s, _ in quarantined] == [bad] and "400" in quarantined[0][1]
    assert storage.count_signals(destination="lapi") == QueueCounts(sent=7, quarantined=1)


def test_a_slow_lapi_answer_never_outlives_the_claim_lease(storage: SQLStorage) -> None:
    """The POST's deadline ends a tenth of a lease before the claim's lease: a dripped answer is cut, the signals
    released, never left in flight while another sender could claim them."""
    import time

    from hostile_server import HostileServer

    with HostileServer() as srv:
        srv.route(
            "/v1/watchers/login",
            lambda c, r: c.json(200, {"code": 200, "token": "T", "expire": "2099-01-01T00:00:00Z"}),
        )
        srv.route("/v1/alerts", lambda c, r: c.drip(201, b'["1"]' + b" " * 200, 0.5))
        with LapiWatcher(srv.url, storage, machine_id="m", password="p", claim_lease=4.0, max_retries=0) as watcher:
            watcher.add_signals(_signals(_scenario())[:1])
            started = time.monotonic()
            report = watcher.send_signals()
            elapsed = time.monotonic() - started
    assert report == 0 and isinstance(report.errors["m"], TransportError)
    assert elapsed < 4.0  # cut at about 3.6 s (lease 4 s minus a tenth), not after the 100 s drip
    assert storage.count_signals(destination="lapi") == QueueCounts(queued=1)


def test_web_detectors_queue_for_the_configured_destinations(tmp_path: Any, lapi: Any) -> None:
    from cscapi.legacy_storage import LegacyStorageAdapter
    from cscapi.models import Machine
    from cscapi.storage import IncompatibleStorageError
    from cscapi.web.detect import Detectors, failed_login
    from test_legacy_storage import MemoryLegacyStorage
    from test_remediation_support import Clock

    scenario = "acme/login-bf"
    clock = Clock()
    engine = RemediationEngine(None, "memory://", clock=clock)
    with SQLStorage(f"sqlite:///{tmp_path / 'queue.db'}") as queue:
        queue.update_or_create_machine(Machine(machine_id=MACHINE_A, password="p" * 32))
        detectors = Detectors(
            engine,
            [failed_login(scenario, capacity=1, duration=600)],
            signals=queue,
            allowed_scenarios=[scenario],
            failed_login=scenario,
            clock=clock,
            destinations="both",
        )
        for _ in range(2):
            detectors.report_failed_login("192.0.2.201")
        assert detectors.flush()
        assert queue.count_signals() == QueueCounts(queued=1)
        assert queue.count_signals(destination="lapi") == QueueCounts(queued=1)
        machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
        with LapiWatcher(lapi.base_url, queue, machine_id=machine, password=password) as watcher:
            assert watcher.send_signals() == 1
        detectors.close()
    alerts = [a for a in lapi.alerts() if a["source"]["value"] == "192.0.2.201" and a["scenario"] == scenario]
    assert len(alerts) == 1
    with pytest.raises(IncompatibleStorageError):
        Detectors(
            engine,
            [failed_login(scenario)],
            signals=LegacyStorageAdapter(MemoryLegacyStorage()),
            allowed_scenarios=[scenario],
            destinations=("lapi",),
        )
    engine.close()


def test_the_watcher_snippet_of_docs_lapi_md_runs(lapi: Any, tmp_path: Any) -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "lapi.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "LapiWatcher(" in b)
    machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    for old, new in (
        ("http://127.0.0.1:8080/", lapi.base_url),
        ("sqlite:////var/lib/myapp/signals.db", f"sqlite:///{tmp_path / 'signals.db'}"),
        ('"my-python-app"', repr(machine)),
    ):
        assert old in code
        code = code.replace(old, new)
    scope: dict[str, Any] = {"PASSWORD": password, "MACHINE_ID": MACHINE_A}
    exec(compile(code, "docs/lapi.md", "exec"), scope)
    assert scope["report"] == 1 and not scope["report"].errors
    assert [a["scenario"] for a in lapi.alerts() if a["source"]["value"] == "203.0.113.7"][-1:] == ["myapp/login-bf"]


def test_watcher_logs_in_with_a_tls_client_certificate(crowdsec_lapi_tls: Any, storage: SQLStorage) -> None:
    lapi, certs = crowdsec_lapi_tls, crowdsec_lapi_tls.certs
    assert certs.agent is not None and certs.agent_key is not None
    scenario = _scenario()
    options = {"cert": str(certs.agent), "key": str(certs.agent_key), "ca": str(certs.ca)}
    with LapiWatcher(lapi.base_url, storage, **options) as watcher:
        assert watcher.auth == "tls" and watcher.label == "tls"
        watcher.add_signals(_signals(scenario)[:1])
        report = watcher.send_signals()
        assert report == 1, report.errors
    assert len(_mine(_all_alerts(lapi), scenario)) == 1
    stranger = {"cert": str(certs.stranger), "key": str(certs.stranger_key), "ca": str(certs.ca)}
    # an OU LAPI does not accept for agents
    with LapiWatcher(lapi.base_url, storage, **stranger) as watcher, pytest.raises(AuthenticationError):
        watcher.login()


@pytest.mark.parametrize(("expire", "logins"), [("2099-01-01T00:00:00Z", 1), ("2000-01-01T00:00:00Z", 2)])
def test_token_reused_until_it_expires_and_never_logged(
    storage: SQLStorage, caplog: pytest.LogCaptureFixture, expire: str, logins: int
) -> None:
    from hostile_server import HostileServer

    token = "tok-" + secrets.token_hex(16)
    caplog.set_level(logging.DEBUG)
    with HostileServer() as srv:
        srv.route("/v1/watchers/login", lambda c, r: c.json(200, {"code": 200, "token": token, "expire": expire}))
        srv.route("/v1/alerts", lambda c, r: c.json(201, ["1"]))
        with LapiWatcher(srv.url, storage, machine_id="m", password="pw-" + token) as watcher:
            for signal in _signals(_scenario())[:2]:
                watcher.add_signals([signal])
                assert watcher.send_signals() == 1
            assert token not in repr(watcher)
        assert srv.count("/v1/watchers/login") == logins
        assert all(r.headers.get("authorization") == f"Bearer {token}" for r in srv.received if "alerts" in r.path)
    assert token not in caplog.text
