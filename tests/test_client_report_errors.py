"""``SendReport.errors``: the typed error that stopped each machine, sync and async, against the real emulator.

Covers a failing CAPI (5xx, 429 after the retries), an unreachable one (a closed loopback port), refused credentials,
a login ban, and the machines whose queued signals were not tried because they wait out an earlier failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient
from cscapi.errors import (
    AuthenticationError,
    LoginBannedError,
    MachineCoolingDownError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from cscapi.models import Machine, SendReport
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal, generate_machine_id_from_key
from test_client_support import make_config

M1 = generate_machine_id_from_key("report-1", prefix="rep")
M2 = generate_machine_id_from_key("report-2", prefix="rep")


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    with EmbeddedEmulator(EmulatorConfig(seed=3, community_size=10)) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_emulator(emu: Any) -> None:
    emu.admin.reset()


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLStorage]:
    store = SQLStorage(f"sqlite:///{tmp_path / 'report.db'}")
    yield store
    store.close()


def signals(machine_id: str, n: int = 2) -> list[Any]:
    return [create_signal(f"192.0.2.{i + 1}", "crowdsecurity/ssh-bf", machine_id=machine_id) for i in range(n)]


def config(base_url: str, **overrides: Any) -> Any:
    return make_config(None, base_url=base_url, retry_delay=0.01, max_retry_after=0.05, max_retries=1, **overrides)


def test_server_error_then_cooling_down_sync(emu: Any, storage: SQLStorage) -> None:
    with CAPIClient(storage, config(emu.base_url)) as client:
        client.add_signals(signals(M1) + signals(M2))
        client.login(M2)
        emu.admin.set_fault("signals", error_rate=1.0, error_status=503)
        report = client.send_signals()
        assert report == 0
        assert set(report.errors) == {M1, M2} == set(report.failed_machines)
        for machine_id in (M1, M2):
            error = report.errors[machine_id]
            assert isinstance(error, ServerError) and error.status_code == 503
            assert report.failed_machines[machine_id] == error.message  # the message field is unchanged
        # the next call does not try them: they wait out the cool-down, a distinct typed case
        emu.admin.clear_faults()
        again = client.send_signals()
        assert again == 0 and again.failed_machines == {}  # failed_machines keeps its meaning: tried and failed
        assert set(again.errors) == {M1, M2}
        held = again.errors[M1]
        assert isinstance(held, MachineCoolingDownError) and not isinstance(held, ServerError)
        stored = storage.get_machine_by_id(M1)
        assert stored is not None and held.until == stored.failing_until
        assert "503" in held.reason or "failing" in held.reason.lower()
        assert storage.count_signals().queued == 4  # nothing lost


def test_unreachable_capi_is_a_transport_error(emu: Any, storage: SQLStorage, free_tcp_port: int) -> None:
    with CAPIClient(storage, config(emu.base_url)) as client:
        client.login(M1)  # a valid token is stored: the failure shows at the POST
        client.add_signals(signals(M1))
    with CAPIClient(storage, config(f"http://127.0.0.1:{free_tcp_port}/", timeout=2)) as client:
        report = client.send_signals()
    assert isinstance(report.errors[M1], TransportError)
    assert report.failed_machines[M1] == report.errors[M1].message


def test_rate_limited_after_the_retries(emu: Any, storage: SQLStorage) -> None:
    with CAPIClient(storage, config(emu.base_url)) as client:
        client.login(M1)
        client.add_signals(signals(M1))
        emu.admin.set_fault("signals", rate_limit_rate=1.0, retry_after=1)
        report = client.send_signals()
    assert isinstance(report.errors[M1], RateLimitedError)


def test_refused_credentials_then_held_as_authentication_error(tmp_path: Path, emu: Any, storage: SQLStorage) -> None:
    other = SQLStorage(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        with CAPIClient(other, config(emu.base_url)) as theirs:
            theirs.register_machine(M1)  # CAPI knows M1 with another host's password
    finally:
        other.close()
    # this storage holds M1 with a password CAPI never saw: its logins are refused
    storage.update_or_create_machine(Machine(machine_id=M1, password="not-the-password-0123456789", registered=True))
    with CAPIClient(storage, config(emu.base_url)) as client:
        client.add_signals(signals(M1))
        report = client.send_signals()
        assert isinstance(report.errors[M1], AuthenticationError)
        assert not isinstance(report.errors[M1], LoginBannedError)
        logins = emu.admin.requests()["login"]
        again = client.send_signals()  # the refused login's cool-down: no new login, the same typed cause
        assert isinstance(again.errors[M1], AuthenticationError)
        assert not isinstance(again.errors[M1], MachineCoolingDownError)
        assert emu.admin.requests()["login"] == logins


def test_login_ban_is_typed_and_kept_while_it_holds(emu: Any, storage: SQLStorage) -> None:
    with CAPIClient(storage, config(emu.base_url)) as client:
        client.register_machine(M1)
        for _ in range(5):
            client.login(M1, force=True)  # a restart loop: the emulator's 6th login is banned
        with pytest.raises(LoginBannedError):
            client.login(M1, force=True)
        client.add_signals(signals(M1))
        report = client.send_signals()
    error = report.errors[M1]
    assert isinstance(error, LoginBannedError) and error.until > error.until.replace(year=2000)
    assert storage.count_signals(M1).queued == 2


def test_report_equality_compares_errors_by_type_and_text() -> None:
    a = SendReport(sent=1, errors={M1: ServerError("CAPI answered 503.", status_code=503)})
    b = SendReport(sent=1, errors={M1: ServerError("CAPI answered 503.", status_code=503)})
    c = SendReport(sent=1, errors={M1: TransportError("CAPI answered 503.")})
    assert a == b and a != c and a == 1 and int(a) == 1
    assert SendReport(sent=2) == SendReport(sent=2)  # reports without errors compare as before


@pytest.mark.anyio
async def test_async_report_carries_typed_errors(emu: Any, storage: SQLStorage) -> None:
    async with AsyncCAPIClient(storage, config(emu.base_url)) as client:
        await client.add_signals(signals(M1))
        await client.login(M1)
        emu.admin.set_fault("signals", error_rate=1.0, error_status=502)
        report = await client.send_signals()
        assert isinstance(report.errors[M1], ServerError) and report.errors[M1].status_code == 502
        emu.admin.clear_faults()
        again = await client.send_signals()
        assert isinstance(again.errors[M1], MachineCoolingDownError) and again.failed_machines == {}
    assert storage.count_signals(M1).queued == 2
