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


class _WatchedStorage(SQLStorage):
    """A real SQLStorage that notes which threads asked for the login lock, and makes the lock's winner wait (after
    its lock is committed) until ``waiters`` threads have asked: every waiter has then started its login."""

    def __init__(self, url: str, waiters: int) -> None:
        super().__init__(url)
        self.askers: set[int] = set()
        self.all_asked = threading.Event()
        self._waiters = waiters
        self._guard = threading.Lock()
        self.armed = False  # set once the set-up is done: only the workers' calls count

    def acquire_login_lock(self, machine_id: str, holder: str, ttl_seconds: float) -> bool:
        acquired = super().acquire_login_lock(machine_id, holder, ttl_seconds)
        if not self.armed:
            return acquired
        with self._guard:
            self.askers.add(threading.get_ident())
            if len(self.askers) >= self._waiters:
                self.all_asked.set()
        if acquired and not self.all_asked.is_set():
            assert self.all_asked.wait(timeout=60), "the other threads never asked for the login lock"
        return acquired


def test_waiting_threads_share_a_failed_login_instead_of_retrying_it(tmp_path: Path, capi_spec: dict[str, Any]) -> None:
    """The design: a caller that started waiting for the login lock before another caller's login failed shares that
    failure instead of trying again. The lock's winner is held until all 6 threads wait, so all of them started
    before the failure (no timing accident: a thread scheduled late used to try a login of its own)."""
    from cscapi.errors import ServerError

    fake = FakeCAPI(capi_spec=capi_spec)
    storage = _WatchedStorage(f"sqlite:///{tmp_path / 'failing.db'}", waiters=6)
    setup = CAPIClient(storage, make_config(fake))
    setup.register_machine(M1)
    setup.close()
    fake.script("/v3/watchers/login", *([503] * 100))
    client = CAPIClient(storage, make_config(fake, retry_delay=0.01, max_retries=2))
    storage.armed = True
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
        t.join(timeout=120)
    client.close()
    storage.close()
    assert storage.all_asked.is_set()
    assert len(errors) == 6 and all(isinstance(e, ServerError) for e in errors)
    assert fake.count("/v3/watchers/login") == 3  # one caller's 1 try + 2 retries; the 5 others shared its error


def test_threads_refused_the_same_stale_token_log_in_once(tmp_path: Path) -> None:
    """6 threads sharing one client get a 401 on the same revoked token at once: ONE fresh login serves them all
    (the others find the stored token already replaced), not one login per caller."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    config = EmulatorConfig(seed=1, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu:
        storage = SQLStorage(f"sqlite:///{tmp_path / 'stale.db'}")
        client = CAPIClient(storage, make_config(None, base_url=emu.base_url, send_metrics_after_login=False))
        client.register_machine(M1)
        first = client.login(M1).token
        assert len(emu.admin.logins(M1)) == 1
        assert emu.admin.expire_tokens(M1) == 1
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def worker() -> None:
            barrier.wait()
            try:
                client.send_metrics(M1)  # sends the stored (revoked) token: 401, then a login, then a retry
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        logins = emu.admin.logins(M1)
        metrics = emu.admin.metrics(M1)
        requests = emu.admin.requests()
        machine = storage.get_machine_by_id(M1)
        client.close()
        storage.close()
    assert not errors, errors
    assert len(logins) == 2  # the first one, then exactly one for the 6 refused callers
    assert machine is not None and machine.token not in (None, first)
    assert len(metrics) == 6  # each caller's request went through once, with the fresh token
    assert requests["metrics"]["401"] == 6  # every caller was refused first
