"""The remediation engine end to end: the real client (sync and async) against the real emulator over loopback HTTP.

Startup then delta pulls, ``deleted``, blocklists answered 200 / 304 / failing, allowlists, and the usage metrics
the emulator receives (validated against the LAPI swagger's ``AllMetrics``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.remediation import CLEAN, AsyncRemediationEngine, ListStatus, Remediation, RemediationEngine
from cscapi.sql_storage import SQLStorage
from cscapi.utils import generate_machine_id_from_key

MACHINE = generate_machine_id_from_key("remediation-emulator-test")
SCENARIOS = ["crowdsecurity/ssh-bf", "crowdsecurity/http-probing"]


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    # the community list is tailored to the scenarios a login declares: generate it from the ones the client sends
    with EmbeddedEmulator(EmulatorConfig(seed=3, community_size=300, community_scenarios=SCENARIOS)) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(emu: Any) -> None:
    emu.admin.reset()


def config(emu: Any) -> CAPIClientConfig:
    return CAPIClientConfig(scenarios=SCENARIOS, base_url=emu.base_url, retry_delay=0.01, max_retries=1)


@pytest.fixture
def client(emu: Any, tmp_path: Path) -> Iterator[CAPIClient]:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'signals.db'}")
    with CAPIClient(storage, config(emu)) as c:
        yield c
    storage.close()


def test_startup_then_delta_and_deleted(emu: Any, client: CAPIClient) -> None:
    engine = RemediationEngine(client, machine_id=MACHINE)
    first = engine.refresh_decisions()
    assert first.startup and first.new == 300 and first.skipped == 0
    community = emu.admin.decisions()
    for item in community[:20]:
        value = item["value"]
        probe = value.split("/")[0] if "/" in value else value
        assert engine.get_ip_remediation(probe).remediation == "ban", item
        assert engine.get_ip_remediation(probe).origin == "CAPI"

    emu.admin.add_decision("192.0.2.250", duration="4h")
    emu.admin.add_decision("2001:db8:ffff::/48", scope="range", duration="4h")
    delta = engine.refresh_decisions(force=True)
    assert not delta.startup and delta.new == 2  # the two added, nothing else changed
    assert engine.get_ip_remediation("192.0.2.250") == Remediation("ban", "CAPI")
    assert engine.get_ip_remediation("2001:0db8:ffff:0000::1").remediation == "ban"
    assert engine.get_ip_remediation("::ffff:192.0.2.250").remediation == "ban"

    emu.admin.delete_decisions(["192.0.2.250"])
    gone = engine.refresh_decisions(force=True)
    assert not gone.startup and gone.deleted == 1
    assert engine.get_ip_remediation("192.0.2.250") == CLEAN
    assert engine.get_ip_remediation("2001:db8:ffff::1").remediation == "ban"

    engine.clear_cache()
    again = engine.refresh_decisions(force=True)
    assert again.startup and engine.get_ip_remediation("2001:db8:ffff::1").remediation == "ban"
    engine.close()


def test_blocklists_200_304_and_failure(emu: Any, client: CAPIClient) -> None:
    emu.admin.publish_blocklist("tor-exits", ["198.51.100.1", "198.51.100.2", "2001:db8:1::/64"], duration="12h")
    emu.admin.publish_blocklist("scanners", ["203.0.113.9"], remediation="captcha", duration="24h")
    engine = RemediationEngine(client, machine_id=MACHINE)
    report = engine.refresh_decisions()
    assert report.lists["lists:tor-exits"].status == ListStatus.DOWNLOADED
    assert report.lists["lists:tor-exits"].entries == 3
    assert report.lists["lists:scanners"].status == ListStatus.DOWNLOADED
    assert engine.get_ip_remediation("198.51.100.2") == Remediation("ban", "lists:tor-exits")
    assert engine.get_ip_remediation("2001:db8:1::42") == Remediation("ban", "lists:tor-exits")
    assert engine.get_ip_remediation("203.0.113.9") == Remediation("captcha", "lists:scanners")

    unchanged = engine.refresh_decisions(force=True)
    assert unchanged.lists["lists:tor-exits"].status == ListStatus.NOT_MODIFIED
    assert engine.get_ip_remediation("198.51.100.2").origin == "lists:tor-exits"

    emu.admin.publish_blocklist("tor-exits", ["198.51.100.1"], duration="12h")  # .2 removed from the list
    # the first download of this refresh fails (and its one retry): that list keeps its content, the other updates
    emu.admin.set_fault("blocklist_download", error_rate=1.0, error_status=503, remaining=2)
    failed = engine.refresh_decisions(force=True)
    (failed_origin,) = [k for k, v in failed.lists.items() if v.status == ListStatus.FAILED]
    assert "503" in (failed.lists[failed_origin].reason or "")
    assert "?" not in (failed.lists[failed_origin].reason or "")  # the signed query string is never shown
    assert engine.get_ip_remediation("203.0.113.9").origin == "lists:scanners"  # kept (304 or previous content)
    if failed_origin == "lists:tor-exits":
        assert engine.get_ip_remediation("198.51.100.2").origin == "lists:tor-exits"  # previous content kept
    else:
        assert engine.get_ip_remediation("198.51.100.2") == CLEAN  # the other list's 200 replaced its membership

    emu.admin.clear_faults()
    engine.refresh_decisions(force=True)
    assert engine.get_ip_remediation("198.51.100.2") == CLEAN  # the 200 replaced the membership
    assert engine.get_ip_remediation("198.51.100.1").origin == "lists:tor-exits"

    emu.admin.remove_blocklist("scanners")
    dropped = engine.refresh_decisions(force=True)
    assert "lists:scanners" in dropped.removed_lists
    assert engine.get_ip_remediation("203.0.113.9") == CLEAN
    engine.close()


def test_allowlist_beats_decisions_and_removal_stops_it(emu: Any, client: CAPIClient) -> None:
    emu.admin.add_decision("192.0.2.200", duration="4h")
    emu.admin.publish_blocklist("mine", ["192.0.2.201"])
    emu.admin.publish_allowlist("partners", ["192.0.2.200", {"value": "192.0.2.201"}, "10.0.0.0/8"])
    engine = RemediationEngine(client, machine_id=MACHINE)
    engine.refresh_decisions()
    assert engine.get_ip_remediation("192.0.2.200") == Remediation("bypass", "allowlist:partners")
    assert engine.get_ip_remediation("192.0.2.201") == Remediation("bypass", "allowlist:partners")
    emu.admin.publish_allowlist("partners", ["10.0.0.0/8"])
    engine.refresh_decisions(force=True)
    assert engine.get_ip_remediation("192.0.2.200") == Remediation("ban", "CAPI")
    assert engine.get_ip_remediation("192.0.2.201") == Remediation("ban", "lists:mine")
    engine.close()


def test_usage_metrics_reach_the_emulator(emu: Any, client: CAPIClient, lapi_spec: Any, validate_against: Any) -> None:
    engine = RemediationEngine(client, machine_id=MACHINE)
    engine.refresh_decisions()
    engine.update_metrics_origins_count("CAPI", "ban", 3)
    engine.update_metrics_origins_count("clean", "bypass", 10)
    payload = engine.push_usage_metrics()
    validate_against(lapi_spec, "AllMetrics", payload)
    received = emu.admin.usage_metrics()
    assert received, "the emulator received no usage metrics"
    assert engine.get_origins_count() == {}
    engine.close()


@pytest.mark.anyio
async def test_async_engine_against_the_emulator(emu: Any, tmp_path: Path) -> None:
    emu.admin.publish_blocklist("tor-exits", ["198.51.100.7"])
    storage = SQLStorage(f"sqlite:///{tmp_path / 'signals.db'}")
    async with AsyncCAPIClient(storage, config(emu)) as aclient:
        engine = AsyncRemediationEngine(aclient, machine_id=MACHINE)
        report = await engine.refresh_decisions()
        assert report.startup and report.new == 300
        assert engine.get_ip_remediation("198.51.100.7") == Remediation("ban", "lists:tor-exits")
        emu.admin.add_decision("192.0.2.99")
        delta = await engine.refresh_decisions(force=True)
        assert not delta.startup and engine.get_ip_remediation("192.0.2.99").remediation == "ban"
        engine.update_metrics_origins_count("lists:tor-exits", "ban")
        await engine.push_usage_metrics()
        assert engine.get_origins_count() == {}
        await engine.aclose()
    storage.close()
