"""Logins of one machine are serialised across threads and processes; concurrent senders never double-send."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest

from cscapi.client import CAPIClient
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal, generate_machine_id_from_key
from test_client_support import SCENARIOS, FakeCAPI, make_config

M1 = generate_machine_id_from_key("concurrent-host", prefix="test")


def test_threads_log_in_once(tmp_path: Path, capi_spec: dict[str, Any]) -> None:
    fake = FakeCAPI(capi_spec=capi_spec, login_delay=0.3)
    storage = SQLStorage(f"sqlite:///{tmp_path / 'threads.db'}")
    CAPIClient(storage, make_config(fake)).register_machine(M1)
    barrier = threading.Barrier(8)
    tokens: list[str | None] = []
    errors: list[BaseException] = []

    def worker() -> None:
        client = CAPIClient(storage, make_config(fake))  # separate clients, one storage: like separate workers
        barrier.wait()
        try:
            tokens.append(client.login(M1).token)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    storage.close()
    assert not errors
    assert fake.count("/v3/watchers/login") == 1
    assert len(tokens) == 8 and len(set(tokens)) == 1


def test_concurrent_senders_never_send_a_signal_twice(tmp_path: Path, capi_spec: dict[str, Any]) -> None:
    fake = FakeCAPI(capi_spec=capi_spec)
    storage = SQLStorage(f"sqlite:///{tmp_path / 'senders.db'}")
    first = CAPIClient(storage, make_config(fake, batch_size=20))
    first.add_signals([create_signal(f"192.0.2.{i % 250}", "crowdsecurity/ssh-bf", machine_id=M1) for i in range(400)])
    first.login(M1)
    totals: list[int] = []

    def sender() -> None:
        client = CAPIClient(storage, make_config(fake, batch_size=20))
        totals.append(int(client.send_signals()))
        client.close()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    first.close()
    storage.close()
    uuids = [s["uuid"] for s in fake.signals]
    assert sum(totals) == 400 and len(uuids) == 400 and len(set(uuids)) == 400


def _login_in_a_process(db_url: str, base_url: str, machine_id: str, queue: Any) -> None:
    storage = SQLStorage(db_url)
    client = CAPIClient(storage, make_config(None, base_url=base_url, scenarios=SCENARIOS))
    try:
        queue.put(client.login(machine_id).token)
    except Exception as exc:  # pragma: no cover - reported to the parent
        queue.put(f"error: {exc!r}")
    finally:
        client.close()
        storage.close()


@pytest.mark.slow
def test_processes_log_in_once(tmp_path: Path) -> None:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    db_url = f"sqlite:///{tmp_path / 'procs.db'}"
    with EmbeddedEmulator(EmulatorConfig(seed=1, community_size=10)) as emu:
        storage = SQLStorage(db_url)
        client = CAPIClient(storage, make_config(None, base_url=emu.base_url))
        client.register_machine(M1)
        client.close()
        storage.close()
        emu.admin.set_fault("login", latency=0.5)  # widen the race window
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_login_in_a_process, args=(db_url, emu.base_url, M1, queue)) for _ in range(3)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        logins = emu.admin.logins(M1)
    assert all(not str(r).startswith("error") for r in results), results
    assert len(set(results)) == 1
    assert len(logins) == 1


def test_waiting_threads_share_a_failed_login_instead_of_retrying_it(tmp_path: Path, capi_spec: dict[str, Any]) -> None:
    from cscapi.errors import ServerError

    fake = FakeCAPI(capi_spec=capi_spec, login_delay=0.1)
    storage = SQLStorage(f"sqlite:///{tmp_path / 'failing.db'}")
    setup = CAPIClient(storage, make_config(fake))
    setup.register_machine(M1)
    setup.close()
    fake.script("/v3/watchers/login", *([503] * 100))
    client = CAPIClient(storage, make_config(fake, retry_delay=0.01, max_retries=2))
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            client.login(M1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    client.close()
    storage.close()
    assert len(errors) == 6 and all(isinstance(e, ServerError) for e in errors)
    assert fake.count("/v3/watchers/login") == 3  # one caller's 1 try + 2 retries; the 5 others shared its error
