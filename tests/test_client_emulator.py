"""Full client flows against the real emulator over loopback HTTP, sync and async.

register -> login -> signals -> decisions stream -> links -> enroll, plus the emulator's faults (5xx, 429, dropped
connections, tokens revoked early) and its login rate limit (403 ban).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient
from cscapi.errors import AuthenticationError, LoginBannedError
from cscapi.models import EnrollStatus
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal, generate_machine_id_from_key
from test_client_support import SCENARIOS, make_config

M1 = generate_machine_id_from_key("emu-1", prefix="emu")
M2 = generate_machine_id_from_key("emu-2", prefix="emu")


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    # the community list is tailored to the scenarios a login declares: generate it from the ones the client sends;
    # only the listed attachment key is accepted (the emulator accepts any well-formed key by default)
    config = EmulatorConfig(
        seed=7,
        community_size=200,
        attachment_keys=("goodkey123",),
        only_listed_attachment_keys=True,
        community_scenarios=SCENARIOS,
    )
    with EmbeddedEmulator(config) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_emulator(emu: Any) -> None:
    emu.admin.reset()


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLStorage]:
    store = SQLStorage(f"sqlite:///{tmp_path / 'emu.db'}")
    yield store
    store.close()


def batch(n: int, machine_id: str, start: int = 0) -> list[Any]:
    return [
        create_signal(
            f"2001:db8::{start + i:x}" if i % 2 else f"192.0.2.{(start + i) % 250}",
            "crowdsecurity/ssh-bf",
            machine_id=machine_id,
            decision_type="ban" if i % 3 else None,
            context={"i": str(i)},
        )
        for i in range(n)
    ]


def test_full_flow_sync(emu: Any, storage: SQLStorage) -> None:
    emu.admin.publish_blocklist("tor-exits", ["198.51.100.1", "198.51.100.2"], duration="12h")
    emu.admin.publish_allowlist("partners", ["203.0.113.5"], description="friends")
    with CAPIClient(storage, make_config(None, base_url=emu.base_url, user_agent_prefix="emutest")) as client:
        assert client.add_signals(batch(300, M1) + batch(20, M2, start=300)) == 320
        report = client.send_signals()
        assert report == 320 and report.batches == 3  # 250 + 50 for M1, 20 for M2
        assert len(emu.admin.signals(machine_id=M1)) == 300 and len(emu.admin.signals(machine_id=M2)) == 20

        stream = client.get_decisions(M1, startup=True)
        assert len(stream.new) == 200 and stream.skipped == 0
        assert all(d.duration > 0 and d.scope in ("ip", "range") for d in stream.new)
        (blocklist,) = stream.blocklists
        assert blocklist.name == "tor-exits" and blocklist.duration == 12 * 3600
        (allowlist,) = stream.allowlists
        assert allowlist.name == "partners"

        got = client.download_link(blocklist.url)
        assert set(got.text.split()) == {"198.51.100.1", "198.51.100.2"}
        if got.last_modified:
            assert client.download_link(blocklist.url, if_modified_since=got.last_modified).not_modified
        allowed = client.download_link(allowlist.url)
        assert "203.0.113.5" in allowed.text

        outcomes = client.enroll_machines([M1, M2], "emu-box", "goodkey123", ["ci"])
        assert all(o.ok for o in outcomes)
        (bad,) = client.enroll_machines([M1], "emu-box", "wrongkey", [])
        assert bad.status == EnrollStatus.FAILED and bad.reason
    assert len(emu.admin.logins(M1)) == 1 and len(emu.admin.logins(M2)) == 1
    assert emu.admin.metrics(machine_id=M1)  # metrics went after the login


@pytest.mark.anyio
async def test_full_flow_async(emu: Any, storage: SQLStorage) -> None:
    async with AsyncCAPIClient(storage, make_config(None, base_url=emu.base_url)) as client:
        assert await client.add_signals(batch(260, M1)) == 260
        assert await client.send_signals() == 260
        stream = await client.get_decisions(M1, startup=True)
        assert len(stream.new) == 200
        outcomes = await client.enroll_machines([M1], "emu-box", "goodkey123", [])
        assert outcomes[0].ok
        await client.send_metrics(M1)
    assert len(emu.admin.signals(machine_id=M1)) == 260
    assert len(emu.admin.logins(M1)) == 1


def test_faults_are_survived(emu: Any, storage: SQLStorage) -> None:
    config = make_config(None, base_url=emu.base_url, retry_delay=0.01, max_retry_after=0.05)
    with CAPIClient(storage, config) as client:
        client.login(M1)
        emu.admin.set_fault("signals", error_rate=1.0, error_status=503, remaining=2)
        client.add_signals(batch(10, M1))
        assert client.send_signals() == 10
        emu.admin.set_fault("signals", rate_limit_rate=1.0, retry_after=1, remaining=1)
        client.add_signals(batch(5, M1, start=50))
        assert client.send_signals() == 5
        emu.admin.set_fault("decisions_stream", drop_rate=1.0, remaining=2)
        assert len(client.get_decisions(M1).new) == 200
        emu.admin.expire_tokens(M1)  # the token dies before its exp: one 401, one fresh login, one retry
        client.add_signals(batch(3, M1, start=80))
        assert client.send_signals() == 3
    assert len(emu.admin.signals(machine_id=M1)) == 18
    assert len(emu.admin.logins(M1)) == 2


def test_persistent_failure_is_bounded(emu: Any, storage: SQLStorage) -> None:
    config = make_config(None, base_url=emu.base_url, retry_delay=0.01)
    with CAPIClient(storage, config) as client:
        client.login(M1)
        emu.admin.set_fault("signals", error_rate=1.0, error_status=500)
        client.add_signals(batch(5, M1))
        report = client.send_signals()
        assert report == 0 and M1 in report.failed_machines
    assert emu.admin.requests()["signals"]["500"] == 4  # 1 try + 3 retries, then the machine cools down
    assert storage.count_signals(M1).queued == 5


def test_login_rate_limit_ban_is_respected(emu: Any, storage: SQLStorage) -> None:
    with CAPIClient(storage, make_config(None, base_url=emu.base_url)) as client:
        client.register_machine(M1)
        for _ in range(5):
            client.login(M1, force=True)  # hammering logins, as restart loops do
        with pytest.raises(LoginBannedError):
            client.login(M1, force=True)
        attempts = emu.admin.requests()["login"]
        with pytest.raises(LoginBannedError):
            client.get_decisions(M1)  # no request at all while banned
        assert emu.admin.requests()["login"] == attempts


@pytest.mark.anyio
async def test_faults_are_survived_async(emu: Any, storage: SQLStorage) -> None:
    config = make_config(None, base_url=emu.base_url, retry_delay=0.01, max_retry_after=0.05)
    async with AsyncCAPIClient(storage, config) as client:
        await client.login(M2)
        emu.admin.set_fault("signals", error_rate=1.0, error_status=502, remaining=1)
        emu.admin.set_fault("decisions_stream", drop_rate=1.0, remaining=1)
        await client.add_signals(batch(7, M2))
        assert await client.send_signals() == 7
        assert len((await client.get_decisions(M2)).new) == 200
        emu.admin.expire_tokens(M2)
        assert len((await client.get_decisions(M2, startup=True)).new) == 200  # startup: the full list again
    assert len(emu.admin.logins(M2)) == 2


def test_alternating_sends_and_scenario_pulls_never_reach_the_login_rate_limit(emu: Any, storage: SQLStorage) -> None:
    # The emulator enforces CAPI's login rate limit (5 logins in 50 minutes, then a 1 h ban).
    with CAPIClient(storage, make_config(None, base_url=emu.base_url)) as client:
        for i in range(10):
            client.add_signals(batch(1, M1, start=i))
            report = client.send_signals()
            assert report == 1 and not report.failed_machines
            client.get_decisions(main_machine_id=M1, scenarios=["crowdsecurity/ssh-bf"])
    assert len(emu.admin.logins(M1)) == 1
    assert emu.admin.machine(M1)["login_banned_until"] is None


def test_a_machine_the_emulator_forgot_is_registered_again_not_banned(emu: Any, storage: SQLStorage) -> None:
    with CAPIClient(storage, make_config(None, base_url=emu.base_url)) as client:
        machine = client.register_machine(M1)
        client.login(M1)
        emu.admin.reset()  # an in-memory emulator restarted: it answers 403 "invalid machine_id or password"
        again = client.login(M1, force=True)
        assert again.token and again.password == machine.password
        assert [m["machine_id"] for m in emu.admin.machines()] == [M1]
        stored = storage.get_machine_by_id(M1)
        assert stored is not None and stored.login_banned_until is None and not stored.is_failing
        emu.admin.reset()  # and when the stored token dies with it: 401, login refused, registered again, sent
        client.add_signals(batch(3, M1))
        report = client.send_signals()
        assert report == 3 and not report.failed_machines
    assert len(emu.admin.signals(machine_id=M1)) == 3 and len(emu.admin.logins(M1)) == 1


def test_an_id_registered_elsewhere_is_refused_not_banned(emu: Any, storage: SQLStorage, tmp_path: Path) -> None:
    other = SQLStorage(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        with CAPIClient(other, make_config(None, base_url=emu.base_url)) as theirs:
            theirs.register_machine(M2)  # another host holds M2 with its own password
        with CAPIClient(storage, make_config(None, base_url=emu.base_url)) as client:
            with pytest.raises(AuthenticationError, match="another password") as info:
                client.register_machine(M2)
            assert not isinstance(info.value, LoginBannedError)
            logins = emu.admin.requests()["login"]
            with pytest.raises(AuthenticationError) as again:
                client.get_decisions(M2)  # in the cool-down: no request, no tight loop of failed logins
            assert not isinstance(again.value, LoginBannedError)
            assert emu.admin.requests()["login"] == logins
            stored = storage.get_machine_by_id(M2)
            assert stored is not None and stored.login_banned_until is None and not stored.registered
        assert emu.admin.machine(M2)["login_banned_until"] is None
    finally:
        other.close()
