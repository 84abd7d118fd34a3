"""The project's own CAPIClient / AsyncCAPIClient against the emulator: every endpoint a client uses, and faults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit, create_app
from cscapi.emulator.community import ALL_SCENARIOS
from cscapi.errors import AuthenticationError
from cscapi.models import EnrollStatus
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal, generate_machine_id_from_key

SCENARIOS = sorted(ALL_SCENARIOS)  # the community list is tailored to the login's scenarios: declare them all
M1 = generate_machine_id_from_key("emulator-client-host-1")
M2 = generate_machine_id_from_key("emulator-client-host-2")


@pytest.fixture(scope="module")
def emu() -> Iterator[EmbeddedEmulator]:
    cfg = EmulatorConfig(
        seed=11, community_size=300, attachment_keys=["goodkey"], login_rate_limit=LoginRateLimit(enabled=False)
    )
    with EmbeddedEmulator(cfg) as running:
        yield running


@pytest.fixture
def fresh(emu: EmbeddedEmulator) -> Iterator[EmbeddedEmulator]:
    emu.admin.reset()
    yield emu
    emu.admin.clear_faults()
    assert emu.state.internal_errors == 0


def make_client(tmp_path: Path, base_url: str, **overrides: Any) -> CAPIClient:
    options: dict[str, Any] = {"scenarios": SCENARIOS, "base_url": base_url, "retry_delay": 0.01, "max_backoff": 0.05}
    options.update(overrides)
    return CAPIClient(SQLStorage(f"sqlite:///{tmp_path / 'client.db'}"), CAPIClientConfig(**options))


def test_signals_reach_the_emulator_valid_and_once(
    fresh: EmbeddedEmulator, tmp_path: Path, capi_spec: dict[str, Any], validate_against: Any
) -> None:
    with make_client(tmp_path, fresh.base_url) as client:
        signals = [
            create_signal(f"192.0.2.{i}", "crowdsecurity/ssh-bf", machine_id=M1, decision_type="ban", duration="4h")
            for i in range(1, 31)
        ]
        signals += [create_signal("198.51.100.7", "crowdsecurity/http-probing", machine_id=M2)]
        assert client.add_signals(signals) == 31
        report = client.send_signals()
        assert int(report) == 31
        assert client.send_signals() == 0  # nothing sent twice
    received = fresh.admin.signals()
    assert len(received) == 31
    assert len(fresh.admin.signals(machine_id=M1)) == 30
    assert [s["signal"]["source"]["value"] for s in fresh.admin.signals(scenario="crowdsecurity/http-probing")] == [
        "198.51.100.7"
    ]
    for rec in received:
        validate_against(capi_spec, "AddSignalsRequestItem", rec["signal"])
    machine = fresh.admin.machine(M1)
    assert machine["scenarios"] == sorted(SCENARIOS)
    assert machine["login_count"] == 1


def test_decisions_stream_deltas_and_links(fresh: EmbeddedEmulator, tmp_path: Path) -> None:
    with make_client(tmp_path, fresh.base_url) as client:
        first = client.get_decisions(M1, startup=True)
        assert len(first.new) == 300
        assert {d.scope for d in first.new} == {"ip", "range"}
        assert all(d.duration > 0 for d in first.new)
        assert first.deleted == []
        fresh.admin.add_decision("203.0.113.99", scenario="crowdsecurity/http-probing", duration="3h")
        gone = first.new[0].value
        fresh.admin.delete_decisions([gone])
        fresh.admin.publish_blocklist("crowdsec/tor-exit", ["192.0.2.44", "2001:db8::44"], duration="12h")
        fresh.admin.publish_allowlist("office", ["203.0.113.1"], description="office")
        delta = client.get_decisions(M1)
        (added,) = delta.new
        assert (added.value, added.scenario) == ("203.0.113.99", "crowdsecurity/http-probing")
        assert 3 * 3600 - 5 <= added.duration <= 3 * 3600
        assert [d.value for d in delta.deleted] == [gone]
        (bl,) = delta.blocklists
        assert (bl.name, bl.remediation, bl.duration) == ("crowdsec/tor-exit", "ban", 12 * 3600.0)
        download = client.download_link(bl.url)
        assert download.status_code == 200 and download.text.splitlines() == ["192.0.2.44", "2001:db8::44"]
        again = client.download_link(bl.url, if_modified_since=download.last_modified)
        assert again.not_modified
        (al,) = delta.allowlists
        assert al.name == "office"
        assert '"203.0.113.1"' in client.download_link(al.url).text
        without = client.get_decisions(M1, community_pull=False, additional_pull=False)
        assert without.new == [] and without.blocklists == []


def test_enroll_outcomes(fresh: EmbeddedEmulator, tmp_path: Path) -> None:
    with make_client(tmp_path, fresh.base_url) as client:
        client.register_machine(M1)
        fresh.admin.only_listed_attachment_keys(True)  # (any well-formed key is accepted by default)
        (bad,) = client.enroll_machines([M1], "web", "wrongkey", ["t"])
        assert bad.status == EnrollStatus.FAILED
        (ok,) = client.enroll_machines([M1], "web", "goodkey", ["t"])
        assert ok.status == EnrollStatus.ENROLLED
        (again,) = client.enroll_machines([M1], "web", "goodkey", ["t"])
        assert again.status == EnrollStatus.ALREADY_ENROLLED
        assert client.login(M1, force=True).organization_id == fresh.admin.machine(M1)["organization_id"]
    assert fresh.admin.enrollments()[0]["tags"] == ["t"]


def test_metrics_usage_metrics_and_deleted_decisions(fresh: EmbeddedEmulator, tmp_path: Path) -> None:
    usage = {
        "remediation_components": [
            {"version": "1.0", "utc_startup_timestamp": 1_800_000_000, "name": "x", "type": "cscapi"}
        ]
    }
    with make_client(tmp_path, fresh.base_url) as client:
        client.send_metrics(M1)
        client.push_usage_metrics(M1, usage)
        client.delete_decisions(M1, ["11111111-1111-4111-8111-111111111111"])
    assert len(fresh.admin.metrics(M1)) == 2  # the one sent after the login, and send_metrics'
    assert fresh.admin.usage_metrics(M1)[0]["body"] == usage
    assert fresh.admin.deleted_decisions_received(M1)[0]["body"] == ["11111111-1111-4111-8111-111111111111"]


def test_client_rides_out_5xx_429_and_dropped_connections(fresh: EmbeddedEmulator, tmp_path: Path) -> None:
    with make_client(tmp_path, fresh.base_url, max_retries=3) as client:
        client.login(M1)
        client.add_signals([create_signal("192.0.2.1", "crowdsecurity/ssh-bf", machine_id=M1)])
        fresh.admin.set_fault("signals", error_rate=1.0, error_status=503, remaining=1)
        assert int(client.send_signals()) == 1
        fresh.admin.set_fault("decisions_stream", rate_limit_rate=1.0, retry_after=0, remaining=1)
        assert len(client.get_decisions(M1, startup=True).new) == 300
        fresh.admin.set_fault("decisions_stream", drop_rate=1.0, remaining=1)
        assert len(client.get_decisions(M1, startup=True).new) == 300
    counts = fresh.admin.requests()
    assert counts["signals"] == {"503": 1, "200": 1}
    assert counts["decisions_stream"] == {"429": 1, "0": 1, "200": 2}


def test_client_logs_in_again_after_401(fresh: EmbeddedEmulator, tmp_path: Path) -> None:
    with make_client(tmp_path, fresh.base_url) as client:
        client.login(M1)
        fresh.admin.expire_tokens(M1)
        assert len(client.get_decisions(M1, startup=True).new) == 300
    assert fresh.admin.machine(M1)["login_count"] == 2


def test_client_sees_the_login_ban(tmp_path: Path) -> None:
    cfg = EmulatorConfig(community_size=0, login_rate_limit=LoginRateLimit(threshold=1))
    with EmbeddedEmulator(cfg) as emu, make_client(tmp_path, emu.base_url) as client:
        client.login(M1)
        with pytest.raises(AuthenticationError) as info:
            client.login(M1, force=True)
        assert info.value.status_code == 403


@pytest.mark.anyio
async def test_async_client_in_process(anyio_backend: str, tmp_path: Path) -> None:
    app = create_app(EmulatorConfig(seed=2, community_size=50, login_rate_limit=LoginRateLimit(enabled=False)))
    transport = httpx.ASGITransport(app=app)
    config = CAPIClientConfig(
        scenarios=SCENARIOS, base_url="http://emulator.test/", async_transport=transport, retry_delay=0.01
    )
    storage = SQLStorage(f"sqlite:///{tmp_path / 'async.db'}")
    async with AsyncCAPIClient(storage, config) as client:
        await client.add_signals([create_signal("192.0.2.9", "crowdsecurity/ssh-bf", machine_id=M1)])
        assert int(await client.send_signals()) == 1
        stream = await client.get_decisions(M1, startup=True)
        assert len(stream.new) == 50
    storage.close()
    state = app.state.emulator
    assert [r["signal"]["source"]["value"] for r in state.query_signals(M1)] == ["192.0.2.9"]
    assert state.internal_errors == 0


def test_client_recovers_from_tokens_that_expire_early(fresh: EmbeddedEmulator, tmp_path: Path) -> None:
    import time

    fresh.admin.set_fault("login", token_lifetime=0.3)
    with make_client(tmp_path, fresh.base_url) as client:
        client.login(M1)
        time.sleep(0.4)
        fresh.admin.clear_fault("login")
        assert len(client.get_decisions(M1, startup=True).new) == 300  # 401, fresh login, retried
    assert fresh.admin.requests()["decisions_stream"] == {"401": 1, "200": 1}
    assert fresh.admin.machine(M1)["login_count"] == 2


def test_client_retries_after_a_timeout_caused_by_latency(fresh: EmbeddedEmulator, tmp_path: Path) -> None:
    with make_client(tmp_path, fresh.base_url, timeout=0.5) as client:
        client.login(M1)
        fresh.admin.set_fault("decisions_stream", latency=1.0, remaining=1)
        assert len(client.get_decisions(M1, startup=True).new) == 300


def test_client_wrong_password_is_an_authentication_error(fresh: EmbeddedEmulator, tmp_path: Path) -> None:
    with make_client(tmp_path, fresh.base_url) as client:
        client.register_machine(M1)
        r = httpx.post(fresh.base_url + "v3/watchers/reset", json={"machine_id": M1, "password": "changed-elsewhere"})
        assert r.status_code == 200
        with pytest.raises(AuthenticationError) as info:
            client.login(M1, force=True)
        assert info.value.status_code == 403
