"""The agent (`cscapi.agent.Agent`): its jobs against a real emulator and SQLite, scheduling, locks, health, bans."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cscapi.agent import MIN_REFRESH_SECONDS, Agent, AgentConfig, AgentLock
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit
from cscapi.errors import AlreadyRunningError, ConfigurationError
from cscapi.remediation import RemediationEngine
from cscapi.signals import create_signal
from cscapi.sql_storage import SQLStorage
from cscapi.timeutil import utcnow

SCENARIOS = ["crowdsecurity/ssh-bf"]


@pytest.fixture(scope="module")
def emu() -> Iterator[EmbeddedEmulator]:
    config = EmulatorConfig(seed=3, community_size=30, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emulator:
        yield emulator


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLStorage]:
    store = SQLStorage(f"sqlite:///{tmp_path / 'q.db'}")
    yield store
    store.close()


@pytest.fixture
def client(emu: EmbeddedEmulator, storage: SQLStorage) -> Iterator[CAPIClient]:
    with CAPIClient(storage, CAPIClientConfig(scenarios=SCENARIOS, base_url=emu.base_url, max_retries=0)) as c:
        yield c


class DripServer:
    """A hostile CAPI on loopback: answers every request with headers announcing 1 MB, then one byte a second.

    A per-read timeout never fires on it: only a total deadline (or abandoning the call) ends a request.
    """

    def __init__(self) -> None:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/"
        self.requests = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.requests += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: Any) -> None:
        try:
            conn.settimeout(5)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            while not self._stop.wait(1.0):
                conn.sendall(b" ")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def drip() -> Iterator[DripServer]:
    server = DripServer()
    yield server
    server.close()


@contextlib.contextmanager
def running(agent: Agent) -> Iterator[threading.Thread]:
    """Run the agent in a daemon thread; always stopped and joined, so a failing test never leaves it running."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            agent.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-agent", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        agent.stop()
        thread.join(timeout=agent.config.stop_timeout + 5)
        assert not thread.is_alive(), "the agent did not stop within stop_timeout"


def wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` passes (False); each call counts once."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def queue(client: CAPIClient, machine_id: str, *ips: str) -> None:
    client.add_signals([create_signal(ip, "crowdsecurity/ssh-bf", None, machine_id) for ip in ips])


def test_config_bounds() -> None:
    AgentConfig()  # the defaults are valid
    for kwargs in (
        {"push_interval": 5},
        {"push_interval": 601},
        {"refresh_interval": 3600},
        {"refresh_interval": 6000, "refresh_jitter": 900},
        {"batch_size": 251},
        {"health_port": 70000},
    ):
        with pytest.raises(ConfigurationError):
            AgentConfig(**kwargs)  # type: ignore[arg-type]


def test_refresh_delay_has_jitter_and_never_goes_under_the_minimum(client: CAPIClient) -> None:
    agent = Agent(client, None, config=AgentConfig(refresh_interval=5700, refresh_jitter=300), rng=random.Random(1))
    delays = [agent.next_refresh_delay() for _ in range(500)]
    assert min(delays) >= MIN_REFRESH_SECONDS
    assert max(delays) <= 6000
    assert len({round(d) for d in delays}) > 100  # really random, not a constant


def test_push_once_sends_the_queue(client: CAPIClient, emu: EmbeddedEmulator, storage: SQLStorage) -> None:
    machine_id = client.register_machine().machine_id
    queue(client, machine_id, "203.0.113.1", "203.0.113.2", "2001:db8::5")
    agent = Agent(client, None, machine_id=machine_id)
    result = agent.push_once()
    assert result["sent"] == 3 and result["failed_machines"] == {}
    received = {r["signal"]["source"]["value"] for r in emu.admin.signals(machine_id=machine_id)}
    assert received == {"203.0.113.1", "203.0.113.2", "2001:db8::5"}
    counts = storage.count_signals()
    assert counts.sent == 3 and counts.queued == 0  # kept for `signals list`, pruned later by the prune job
    assert agent.prune_once() == {"pruned": 0}
    agent.config.keep_sent = 0
    assert agent.prune_once() == {"pruned": 3}


def test_run_once_does_every_job(client: CAPIClient, emu: EmbeddedEmulator, tmp_path: Path) -> None:
    machine_id = client.register_machine().machine_id
    queue(client, machine_id, "203.0.113.9")
    engine = RemediationEngine(client, store=f"sqlite:///{tmp_path / 'd.db'}", machine_id=machine_id)
    try:
        agent = Agent(client, engine, machine_id=machine_id)
        health = agent.run_once()
        assert health["status"] == "ok"
        assert health["jobs"]["push"]["last_result"]["sent"] == 1
        # seed 3: the community decisions of the scenarios the machine declared (the emulator tailors the list)
        assert health["jobs"]["refresh"]["last_result"]["decisions"] == 13
        assert health["jobs"]["metrics"]["last_result"] == {"usage_metrics": True}
        assert emu.admin.metrics(machine_id=machine_id)
        assert engine.get_ip_remediation(emu.admin.decisions()[0]["value"]).remediation == "ban"
        # a second refresh right away: too soon; rescheduled at CAPI's next allowed time, not counted as a failure
        agent._run_job(agent.jobs["refresh"])
        job = agent.jobs["refresh"]
        assert job.last_error is None and job.failures == 0
        assert job.due - agent.clock() > 3600
    finally:
        engine.close()


def test_loop_stops_gracefully_and_releases_the_lock(client: CAPIClient, storage: SQLStorage, tmp_path: Path) -> None:
    machine_id = client.register_machine().machine_id
    queue(client, machine_id, "203.0.113.3")
    uri = f"sqlite:///{tmp_path / 'q.db'}"
    agent = Agent(
        client,
        None,
        machine_id=machine_id,
        lock=AgentLock(storage, uri),
        config=AgentConfig(push_metrics=False),
    )
    with running(agent):
        assert wait_for(lambda: agent.jobs["push"].runs > 0 and agent.running_job is None)
        # while it runs, nobody else may run on this storage
        with pytest.raises(AlreadyRunningError):
            AgentLock(storage, uri).acquire()
    assert storage.count_signals().sent == 1
    other = AgentLock(storage, uri)
    other.acquire()  # released on stop
    other.release()


def test_login_ban_pauses_capi_calls(client: CAPIClient, storage: SQLStorage, caplog) -> None:
    machine_id = client.register_machine().machine_id
    queue(client, machine_id, "203.0.113.4")
    machine = storage.get_machine_by_id(machine_id)
    assert machine is not None
    machine.token = None
    machine.login_banned_until = utcnow() + timedelta(minutes=30)
    storage.update_or_create_machine(machine)
    agent = Agent(client, None, machine_id=machine_id)
    with caplog.at_level(logging.INFO, logger="cscapi.agent"):
        agent._run_job(agent.jobs["push"])
    assert agent.banned_until is not None
    assert agent.health()["status"] in ("banned", "stopped")
    assert agent.jobs["push"].due - agent.clock() > 25 * 60
    assert "login banned" in caplog.text
    # while banned, another due job is postponed, not run
    agent.jobs["metrics"].due = agent.clock()
    agent._run_job(agent.jobs["metrics"])
    assert agent.jobs["metrics"].runs == 0
    assert storage.count_signals().queued == 1


def test_unreachable_capi_is_logged_and_retried(storage: SQLStorage, caplog) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = CAPIClientConfig(scenarios=SCENARIOS, base_url=f"http://127.0.0.1:{port}/", max_retries=0, timeout=2)
    with CAPIClient(storage, config) as client:
        agent = Agent(client, None, machine_id="a" * 48)
        with caplog.at_level(logging.INFO, logger="cscapi.agent"):
            agent._run_job(agent.jobs["metrics"])
        job = agent.jobs["metrics"]
        assert job.failures == 1 and job.last_error
        assert 0 < job.due - agent.clock() <= 600
        assert "metrics failed" in caplog.text
        assert agent.health()["jobs"]["metrics"]["last_error"]


def test_health_endpoint_serves_json_on_loopback(client: CAPIClient) -> None:
    from test_cli_support import unreachable_url

    port = int(unreachable_url().rsplit(":", 1)[1].strip("/"))
    machine_id = client.register_machine().machine_id
    agent = Agent(client, None, machine_id=machine_id, config=AgentConfig(health_port=port, push_metrics=False))
    with running(agent):
        body = None
        deadline = time.monotonic() + 10
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    body = json.loads(response.read())
                    assert response.status == 200
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        assert body is not None and body["status"] == "ok" and body["machine_id"] == machine_id
        assert set(body["jobs"]) == {"push", "prune"}
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=2)
        assert info.value.code == 404
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.mark.postgres
def test_database_lease_gives_one_agent_per_shared_storage(postgres_url: str) -> None:
    storage = SQLStorage(postgres_url)
    try:
        first = AgentLock(storage, postgres_url, ttl_seconds=30)
        assert first.kind == "database lease"
        first.acquire()
        second = AgentLock(storage, postgres_url, ttl_seconds=30)
        with pytest.raises(AlreadyRunningError):
            second.acquire()
        first._lease_until = time.monotonic()  # due for renewal: renewing keeps it
        first.renew()
        with pytest.raises(AlreadyRunningError):
            second.acquire()
        first.release()
        second.acquire()
        second.release()
    finally:
        storage.close()


def test_rate_limit_waits_for_retry_after(client: CAPIClient, emu: EmbeddedEmulator) -> None:
    machine_id = client.register_machine().machine_id
    emu.admin.set_fault("metrics", rate_limit_rate=1.0, retry_after=900)
    try:
        agent = Agent(client, None, machine_id=machine_id)
        agent._run_job(agent.jobs["metrics"])
        job = agent.jobs["metrics"]
        assert job.failures == 1
        assert job.due - agent.clock() >= 890  # the server's Retry-After, not the default retry delay
    finally:
        emu.admin.clear_fault("metrics")


def test_failed_refreshes_back_off(client: CAPIClient, emu: EmbeddedEmulator, tmp_path: Path) -> None:
    machine_id = client.register_machine().machine_id
    engine = RemediationEngine(client, store=f"sqlite:///{tmp_path / 'd.db'}", machine_id=machine_id)
    emu.admin.set_fault("decisions_stream", error_rate=1.0, error_status=503)
    try:
        agent = Agent(client, engine, machine_id=machine_id)
        waits = []
        for _ in range(3):
            agent._run_job(agent.jobs["refresh"])
            waits.append(agent.jobs["refresh"].due - agent.clock())
        assert agent.jobs["refresh"].failures == 3
        assert 290 < waits[0] <= 300 and 590 < waits[1] <= 600 and 1190 < waits[2] <= 1200
        assert agent.health()["jobs"]["refresh"]["last_error"]
    finally:
        emu.admin.clear_fault("decisions_stream")
        engine.close()


@pytest.mark.postgres
def test_database_lease_survives_a_short_outage_not_a_long_one(postgres_url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(postgres_url).database
    admin = create_engine(make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    storage = SQLStorage(postgres_url)
    lock = AgentLock(storage, postgres_url, ttl_seconds=60)
    try:
        lock.acquire()
        with admin.connect() as conn:  # the database goes away: no new connections, current ones killed
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        lock._lease_until = time.monotonic() + 10  # due for renewal, still valid for 10 s
        lock.renew()  # no error: the lease still holds
        lock._lease_until = time.monotonic() - 1  # the outage outlived the lease
        with pytest.raises(AlreadyRunningError, match="ran out while the database was unreachable"):
            lock.renew()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        storage.close()


def test_an_unexpected_error_in_a_job_does_not_stop_the_agent(client: CAPIClient, caplog) -> None:
    class BrokenEngine:  # a component failing in a way no cscapi error describes
        def refresh_decisions(self) -> None:
            raise KeyError("boom")

    machine_id = client.register_machine().machine_id
    agent = Agent(client, BrokenEngine(), machine_id=machine_id)
    with caplog.at_level(logging.ERROR, logger="cscapi.agent"):
        agent._run_job(agent.jobs["refresh"])
    job = agent.jobs["refresh"]
    assert job.failures == 1 and job.last_error == "KeyError: 'boom'"
    assert "please report this bug" in caplog.text and "Traceback" in caplog.text
    assert agent.health()["jobs"]["refresh"]["last_error"]
    agent._run_job(agent.jobs["push"])  # the other jobs go on
    assert agent.jobs["push"].last_error is None


def test_health_reports_an_unreadable_decision_store(client: CAPIClient) -> None:
    machine_id = client.register_machine().machine_id
    # Redis down at start: the agent's engine (not strict) serves nothing yet, and the agent's health says so
    engine = RemediationEngine(client, store="redis://127.0.0.1:1/0?password=AGENTPW9", machine_id=machine_id)
    try:
        agent = Agent(client, engine, machine_id=machine_id)
        report = agent.health()
        assert report["status"] == "stopped"  # not running yet; the store's state is reported all the same
        store = report["decision_store"]
        assert store["healthy"] is False and store["version"] is None
        assert "127.0.0.1:1" in store["last_sync_error"]
        agent._running = True  # what run() sets: the status a probe sees while the agent runs
        assert agent.health()["status"] == "degraded"
        line = agent.health_line()
        assert "status=degraded" in line and "decision_store=unreadable" in line
        assert "AGENTPW9" not in json.dumps(report) and "AGENTPW9" not in line
    finally:
        engine.close()


def test_health_of_a_readable_store_is_ok(client: CAPIClient, tmp_path: Path) -> None:
    machine_id = client.register_machine().machine_id
    engine = RemediationEngine(client, store=f"sqlite:///{tmp_path / 'd.db'}", machine_id=machine_id)
    try:
        agent = Agent(client, engine, machine_id=machine_id)
        agent._running = True
        report = agent.health()
        assert report["decision_store"] == {"healthy": True, "lost": False, "version": None, "last_sync_error": None}
        assert report["status"] == "ok"
    finally:
        engine.close()


# ---- faults: a hung job, a lapsed lease, a lost decision store, idle health clients ---------------------------


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def lease_storage(request: pytest.FixtureRequest) -> Iterator[tuple[SQLStorage, str]]:
    url = str(request.getfixturevalue(f"{request.param}_url"))
    storage = SQLStorage(url)
    yield storage, url
    storage.close()


def test_renew_notices_a_takeover_after_the_lease_lapsed(lease_storage: tuple[SQLStorage, str]) -> None:
    storage, url = lease_storage
    first = AgentLock(storage, url, ttl_seconds=0.5, lease=True)
    second = AgentLock(storage, url, ttl_seconds=30, lease=True)
    first.acquire()
    try:
        with pytest.raises(AlreadyRunningError):
            second.acquire()
        # first stalls past its lease: second takes the storage over
        assert wait_for(lambda: _try_acquire(second), timeout=10)
        with pytest.raises(AlreadyRunningError, match="took over"):
            first.renew()
        second._lease_until = time.monotonic()  # due: renewing keeps it, twice within a second too
        second.renew()
        second._lease_until = time.monotonic()
        second.renew()
        first.release()  # must not remove the lease second now holds
        with pytest.raises(AlreadyRunningError):
            AgentLock(storage, url, ttl_seconds=30, lease=True).acquire()
    finally:
        second.release()
        first.release()


def _try_acquire(lock: AgentLock) -> bool:
    try:
        lock.acquire()
    except AlreadyRunningError:
        return False
    return True


@pytest.mark.postgres
def test_a_hung_job_never_lets_a_second_agent_in_and_stop_is_bounded(
    postgres_url: str, drip: DripServer, emu: EmbeddedEmulator
) -> None:
    """The lease is renewed by its own thread while a job hangs on a server dripping a byte a second; stop() returns
    within stop_timeout, abandoning the job, and releases the lease."""
    storage = SQLStorage(postgres_url)
    other_storage = SQLStorage(postgres_url)
    with CAPIClient(storage, CAPIClientConfig(scenarios=SCENARIOS, base_url=emu.base_url, max_retries=0)) as c:
        machine_id = c.register_machine().machine_id  # registered for real; then CAPI turns into a drip
    hung = CAPIClient(storage, CAPIClientConfig(scenarios=SCENARIOS, base_url=drip.base_url, max_retries=0))
    lock = AgentLock(storage, postgres_url, ttl_seconds=2.0)  # renewed at half-life: 1 s of slack under load
    config = AgentConfig(push_metrics=True, stop_timeout=5, stall_after=1)
    agent = Agent(hung, None, machine_id=machine_id, lock=lock, config=config)
    try:
        with running(agent) as thread:
            assert wait_for(lambda: drip.requests > 0 and agent.running_job is not None)
            started = time.monotonic()
            while time.monotonic() - started < 5:  # two and a half lease lifetimes
                with pytest.raises(AlreadyRunningError):
                    AgentLock(other_storage, postgres_url, ttl_seconds=2.0).acquire()
                time.sleep(0.2)
            health = agent.health()
            assert health["status"] == "degraded" and health["running"]["job"] in ("push", "metrics")
            assert any("longer than stall_after" in r for r in health["reasons"]), health["reasons"]
            stop_at = time.monotonic()
            agent.stop()
            thread.join(timeout=config.stop_timeout + 5)
            assert not thread.is_alive()
            assert time.monotonic() - stop_at <= config.stop_timeout + 2  # margin for a loaded machine
        assert agent.abandoned in ("push", "metrics")
        other = AgentLock(other_storage, postgres_url, ttl_seconds=30)
        other.acquire()  # released at stop, not after the ttl
        other.release()
    finally:
        hung.close()
        other_storage.close()
        storage.close()


def test_a_lost_decision_store_is_pulled_again_at_once_then_not_before_the_minimum(
    client: CAPIClient, redis_url: str, redis_prefix: str
) -> None:
    import redis

    machine_id = client.register_machine().machine_id
    engine = RemediationEngine(
        client, store=redis_url, key_prefix=redis_prefix, machine_id=machine_id, sync_interval_ms=50
    )
    agent = Agent(client, engine, machine_id=machine_id, config=AgentConfig(push_metrics=False, repull_min_interval=60))
    r = redis.Redis.from_url(redis_url)

    def lose() -> None:  # what a Redis restart without data does to this prefix (never FLUSHDB: a shared server)
        keys = list(r.scan_iter(match=redis_prefix + "*"))
        if keys:
            r.delete(*keys)

    try:
        with running(agent):
            assert wait_for(lambda: agent.jobs["refresh"].runs == 1 and engine.version is not None)
            first = engine.version
            lose()
            assert wait_for(lambda: agent.repulls == 1)
            assert wait_for(lambda: agent.jobs["refresh"].runs == 2 and engine.healthy)
            assert engine.version != first and not engine.store_lost
            lose()  # lost again within repull_min_interval: no second pull, but it shows
            assert wait_for(lambda: engine.store_lost)
            health = agent.health()
            assert health["status"] == "degraded" and health["decision_store"]["lost"]
            assert any("lost its decisions" in reason for reason in health["reasons"])
            time.sleep(2.5)  # the loop looks every second: it would have pulled by now
            assert agent.repulls == 1 and agent.jobs["refresh"].runs == 2
    finally:
        r.close()
        engine.close()


def test_health_endpoint_stays_bounded_under_idle_sockets(client: CAPIClient, free_tcp_port: int) -> None:
    import socket

    machine_id = client.register_machine().machine_id
    agent = Agent(
        client, None, machine_id=machine_id, config=AgentConfig(health_port=free_tcp_port, push_metrics=False)
    )
    idle: list[socket.socket] = []
    try:
        with running(agent):
            assert wait_for(lambda: agent.health_server is not None)
            before = threading.active_count()
            for _ in range(300):
                idle.append(socket.create_connection(("127.0.0.1", free_tcp_port), timeout=5))
            idle[0].sendall(b"GET /hea")  # a slow client, never finishing its request
            with urllib.request.urlopen(f"http://127.0.0.1:{free_tcp_port}/health", timeout=10) as response:
                assert response.status == 200 and json.loads(response.read())["machine_id"] == machine_id
            # a job's worker thread or the emulator's, at most; not one per socket (the old server made 300)
            assert threading.active_count() <= before + 10
            server = agent.health_server
            assert server is not None and server.open_connections <= server.max_connections
    finally:
        for sock in idle:
            sock.close()


def test_health_endpoint_drops_slow_clients_and_caps_connections() -> None:
    import socket

    from cscapi.agent import HealthServer

    server = HealthServer(lambda: {"status": "ok"}, 0, max_connections=8, client_timeout=0.5)
    socks: list[socket.socket] = []
    try:
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        socks.append(slow)
        slow.sendall(b"GET /health HTTP/1.1\r\n")  # and never the end of its headers
        assert slow.recv(1) == b""  # closed by the server after client_timeout, not held forever
        for _ in range(20):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        assert wait_for(lambda: server.open_connections > 0)
        assert server.open_connections <= 8
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
        big = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        socks.append(big)
        big.sendall(b"GET /" + b"a" * 10000)
        assert b" 431 " in big.recv(200)  # an oversized request is refused, not buffered without end
    finally:
        for sock in socks:
            sock.close()
        server.close()
