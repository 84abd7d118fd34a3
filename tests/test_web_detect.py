"""cscapi.web.detect: leaky buckets per (IP, scenario) in memory and in the shared store (SQLite, Redis), local
decisions every worker applies (kept by a CAPI refresh, expiring by themselves), signals queued in the SQL queue without
blocking the request, a full buffer counted and logged, fork safety, and the ASGI/WSGI 404 hook."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.errors import ConfigurationError
from cscapi.models import Machine
from cscapi.remediation import CLEAN, Remediation, RemediationEngine
from cscapi.sql_storage import SQLStorage
from cscapi.web import Bouncer, Request
from cscapi.web.asgi import BouncerMiddleware as AsgiMiddleware
from cscapi.web.detect import Detectors, Scenario, failed_login, http_probing
from cscapi.web.wsgi import BouncerMiddleware as WsgiMiddleware
from test_remediation_support import Clock, FakeSource, decision, stream

LOGIN = "acme/login-bf"
PROBE = "acme/http-probing"
LOCAL_BAN = Remediation("ban", "local")


MACHINE = "a" * 48


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SQLStorage]:
    """The durable signal queue, holding the agent's machine (the detectors queue under it)."""
    storage = SQLStorage(f"sqlite:///{tmp_path / 'queue.db'}")
    storage.update_or_create_machine(Machine(machine_id=MACHINE, password="p" * 32))
    yield storage
    storage.close() if hasattr(storage, "close") else None


def queued(storage: SQLStorage) -> list[Any]:
    return list(storage.get_signals(1000))


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'decisions.db'}", {}
    return request.getfixturevalue("redis_url"), {"key_prefix": request.getfixturevalue("redis_prefix")}


def test_scenarios_are_validated_at_construction(queue: SQLStorage) -> None:
    engine = RemediationEngine(None, "memory://")
    client = CAPIClient(queue, CAPIClientConfig(scenarios=[LOGIN]))
    Detectors(engine, [failed_login(LOGIN)], signals=client)  # read from the client's config
    with pytest.raises(ConfigurationError, match="not in the client's scenarios"):
        Detectors(engine, [failed_login(LOGIN), http_probing(PROBE)], signals=client)
    with pytest.raises(ConfigurationError, match="allowed_scenarios"):
        Detectors(engine, [failed_login(LOGIN)], signals=queue)  # a bare storage: say which names are yours
    with pytest.raises(ConfigurationError, match="capacity"):
        Scenario("x", capacity=-1)
    with pytest.raises(ConfigurationError, match="duration"):
        Scenario("x", duration=0)
    with pytest.raises(ConfigurationError, match="not one of the scenarios"):
        Detectors(engine, [failed_login(LOGIN)], failed_login="other")
    with pytest.raises(ConfigurationError, match="shared store"):
        Detectors(engine, [failed_login(LOGIN)], buckets="shared")
    for bad in ("m1", "x" * 47 + "!", 48):  # every signal would be dropped at run time: refused now
        with pytest.raises(ConfigurationError, match="48 letters or digits"):
            Detectors(engine, [failed_login(LOGIN)], machine_id=bad)  # type: ignore[arg-type]
    assert Detectors(engine, [failed_login(LOGIN)], machine_id="a" * 48).machine_id == "a" * 48
    with pytest.raises(ConfigurationError, match="unknown scenario"):
        Detectors(engine, [failed_login(LOGIN)]).report("1.2.3.4", "nope")
    engine.close()


def test_memory_bucket_overflows_remediates_at_once_and_queues_a_signal(queue: SQLStorage) -> None:
    clock = Clock()
    engine = RemediationEngine(None, "memory://", clock=clock)
    detectors = Detectors(
        engine,
        [failed_login(LOGIN, capacity=3, leak_speed=10, duration=600)],
        signals=queue,
        allowed_scenarios=[LOGIN],
        failed_login=LOGIN,
        clock=clock,
    )
    bouncer = Bouncer(engine, secret_key="k" * 32, detectors=detectors)
    assert [bouncer.report_failed_login("1.2.3.4") for _ in range(3)] == [False] * 3
    clock.advance(20)  # two events leaked away
    assert [bouncer.report_failed_login("1.2.3.4") for _ in range(2)] == [False, False]
    assert bouncer.report_failed_login("1.2.3.4") is True  # the 4th in the bucket
    assert engine.get_ip_remediation("1.2.3.4") == LOCAL_BAN  # the next request: no flush needed
    assert engine.get_ip_remediation("::ffff:1.2.3.4") == LOCAL_BAN
    assert engine.get_ip_remediation("1.2.3.5") is CLEAN
    assert bouncer.report_failed_login("1.2.3.4") is False  # blackholed
    assert detectors.flush()
    (signal,) = queued(queue)
    assert signal.scenario == LOGIN and signal.source.value == "1.2.3.4" and signal.machine_id == MACHINE
    assert signal.decisions is not None and signal.decisions[0].type == "ban"
    assert detectors.counters.overflows == 1 and detectors.counters.signals_queued == 1
    clock.advance(601)
    assert engine.get_ip_remediation("1.2.3.4") is CLEAN  # expired by itself
    detectors.close()
    engine.close()


def test_shared_buckets_count_across_workers_and_the_decision_reaches_every_worker(
    shared_store: tuple[str, dict[str, Any]], queue: SQLStorage
) -> None:
    uri, kw = shared_store
    src = FakeSource()
    src.streams += [stream([decision("9.9.9.9")]), stream([decision("8.8.8.8")])]
    agent = RemediationEngine(src, uri, sync_interval_ms=0, **kw)
    agent.refresh_decisions()
    a = RemediationEngine(None, uri, sync_interval_ms=0, **kw)
    b = RemediationEngine(None, uri, sync_interval_ms=0, **kw)
    scenario = failed_login(LOGIN, capacity=5, leak_speed=3600, duration=3600)
    da = Detectors(a, [scenario], signals=queue, allowed_scenarios=[LOGIN], failed_login=LOGIN)
    db = Detectors(b, [scenario], signals=queue, allowed_scenarios=[LOGIN], failed_login=LOGIN)
    assert da.buckets == "shared"
    try:
        for _ in range(3):
            da.report_failed_login("203.0.113.7")
            db.report_failed_login("203.0.113.7")
        assert da.flush() and db.flush()
        assert da.counters.overflows + db.counters.overflows == 1  # 6 events in one bucket of capacity 5
        for engine in (a, b, agent):
            engine.sync()
            assert engine.get_ip_remediation("203.0.113.7") == LOCAL_BAN
            assert engine.get_ip_remediation("9.9.9.9") == Remediation("ban", "CAPI")
        agent.refresh_decisions(force=True)  # CAPI's state is replaced; the local decision stays
        for engine in (a, b):
            engine.sync()
            assert engine.get_ip_remediation("203.0.113.7") == LOCAL_BAN
            assert engine.get_ip_remediation("8.8.8.8") == Remediation("ban", "CAPI")
        (signal,) = queued(queue)
        assert signal.scenario == LOGIN and signal.source.value == "203.0.113.7"
        agent.clear_cache()  # forgets every decision, the local ones too
        b.sync()
        assert b.get_ip_remediation("203.0.113.7") is CLEAN
    finally:
        for d in (da, db):
            d.close()
        for engine in (a, b, agent):
            engine.close()


def test_local_decisions_expire_in_every_worker(shared_store: tuple[str, dict[str, Any]]) -> None:
    uri, kw = shared_store
    clock = Clock()
    a = RemediationEngine(None, uri, sync_interval_ms=0, clock=clock, **kw)
    b = RemediationEngine(None, uri, sync_interval_ms=0, clock=clock, **kw)
    try:
        a.add_local_decision("2001:db8::1", "captcha", 60, LOGIN)
        b.sync()
        assert b.get_ip_remediation("2001:db8::1") is CLEAN  # not written yet (the sync thread is off here)
        assert a.write_local_decisions() == 1
        b.sync()
        assert b.get_ip_remediation("2001:db8:0::1") == Remediation("captcha", "local")
        clock.advance(61)
        assert b.get_ip_remediation("2001:db8::1") is CLEAN
        b.sync()
        assert b.local_decisions() == {}
    finally:
        a.close()
        b.close()


def test_a_local_decision_never_weakens_a_capi_one() -> None:
    src = FakeSource()
    src.streams.append(stream([decision("1.2.3.4")]))
    engine = RemediationEngine(src, "memory://")
    engine.refresh_decisions()
    engine.add_local_decision("1.2.3.4", "captcha", 60)
    assert engine.get_ip_remediation("1.2.3.4") == Remediation("ban", "CAPI")
    engine.close()


class _BlockingSink:
    """A signal queue that blocks until released (a slow database), recording what it got."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.got: list[Any] = []

    def add_signals(self, signals: Any) -> int:
        self.entered.set()
        assert self.release.wait(120)
        self.got += list(signals)
        return len(signals)


def test_a_full_buffer_drops_counts_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    engine = RemediationEngine(None, "memory://")
    sink = _BlockingSink()
    scenario = Scenario(PROBE, capacity=0, blackhole=0, decision_type=None)
    detectors = Detectors(
        engine, [scenario], signals=sink, allowed_scenarios=[PROBE], buffer_size=4, machine_id=MACHINE
    )
    try:
        start = time.monotonic()
        detectors.report("10.0.0.1", PROBE)  # overflows: the worker takes it and blocks in the sink
        assert sink.entered.wait(60)
        while detectors._buffer:
            assert time.monotonic() - start < 60
            time.sleep(0.01)
        with caplog.at_level(logging.WARNING, logger="cscapi.web.detect"):
            for i in range(10):
                detectors.report(f"10.0.1.{i}", PROBE)
        assert detectors.counters.dropped == 6
        assert "buffer full" in caplog.text
        sink.release.set()
        assert detectors.flush()
        assert len(sink.got) == 5  # the first, then the 4 the buffer held
    finally:
        sink.release.set()
        detectors.close()
        engine.close()


def test_a_forked_child_reports_on_its_own(tmp_path: Path, queue: SQLStorage) -> None:
    engine = RemediationEngine(None, f"sqlite:///{tmp_path / 'd.db'}", sync_interval_ms=0)
    scenario = Scenario(PROBE, capacity=0, blackhole=0, decision_type=None)
    detectors = Detectors(engine, [scenario], signals=queue, allowed_scenarios=[PROBE], buckets="memory")
    detectors.report("10.0.0.1", PROBE)
    assert detectors.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            detectors.report("10.0.0.2", PROBE)
            ok = detectors.flush() and detectors._thread is not None and detectors._thread.is_alive()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(s.source.value for s in queued(queue)) == ["10.0.0.1", "10.0.0.2"]
    detectors.close()
    engine.close()


def _app_404_asgi() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = 404 if scope["path"].startswith("/wp-") else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def _asgi_get(mw: Any, path: str, ip: str) -> int:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [], "client": (ip, 5000)}
    asyncio.run(mw(scope, receive, send))
    return int(sent[0]["status"])


def test_404_bursts_through_the_asgi_and_wsgi_middlewares() -> None:
    engine = RemediationEngine(None, "memory://")
    probing = http_probing(PROBE, capacity=3, decision_type="ban", duration=60)
    detectors = Detectors(engine, [probing], not_found=PROBE)
    bouncer = Bouncer(engine, secret_key="k" * 32, detectors=detectors)
    mw = AsgiMiddleware(_app_404_asgi(), bouncer=bouncer)
    assert [_asgi_get(mw, "/wp-login.php", "192.0.2.9") for _ in range(4)] == [404] * 4
    assert _asgi_get(mw, "/", "192.0.2.9") == 403  # the 4th 404 overflowed: banned locally
    for _ in range(10):
        assert _asgi_get(mw, "/wp-x.css", "192.0.2.10") == 404  # static files are not probes
    assert _asgi_get(mw, "/", "192.0.2.10") == 200

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found" if environ["PATH_INFO"].startswith("/.env") else "200 OK", [])
        return [b""]

    wmw = WsgiMiddleware(wsgi_app, bouncer=bouncer)

    def wsgi_get(path: str) -> str:
        got: list[str] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "192.0.2.11", "wsgi.url_scheme": "http"}
        wmw(environ, lambda status, headers, exc_info=None: got.append(status))
        return got[0]

    assert [wsgi_get("/.env")[:3] for _ in range(4)] == ["404"] * 4
    assert wsgi_get("/")[:3] == "403"
    detectors.close()
    engine.close()


def test_the_docs_snippet_runs(queue: SQLStorage) -> None:
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "web.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "def make_bouncer(" in b)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/web.md", "exec"), namespace)
    engine = RemediationEngine(None, "memory://")
    bouncer = namespace["make_bouncer"](engine, queue, "k" * 32)
    assert [bouncer.report_failed_login("198.51.100.4") for _ in range(6)][-1] is True
    assert engine.get_ip_remediation("198.51.100.4") == LOCAL_BAN
    assert bouncer.detectors.flush()
    assert [s.scenario for s in queued(queue)] == ["acme/login-bf"]
    bouncer.detectors.close()
    engine.close()


def test_the_agent_sends_what_the_detectors_queued_to_the_emulator(tmp_path: Path) -> None:
    """End to end: a worker's detector overflows, its signal waits in the SQL queue, the agent's client sends it."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig
    from cscapi.utils import generate_machine_id_from_key

    machine = generate_machine_id_from_key("detect-agent", prefix="w2")
    storage = SQLStorage(f"sqlite:///{tmp_path / 'queue.db'}")
    engine = RemediationEngine(None, "memory://")
    with EmbeddedEmulator(EmulatorConfig(seed=3)) as emu:
        config = CAPIClientConfig(scenarios=[LOGIN], base_url=emu.base_url, retry_delay=0.01)
        with CAPIClient(storage, config) as agent:
            detectors = Detectors(engine, [failed_login(LOGIN)], signals=agent, failed_login=LOGIN, machine_id=machine)
            for _ in range(6):
                detectors.report_failed_login("198.51.100.77")
            assert detectors.flush()
            assert agent.send_signals() == 1
            (sent,) = emu.admin.signals(machine_id=machine)
            signal = sent["signal"]
            assert signal["scenario"] == LOGIN and signal["source"]["value"] == "198.51.100.77"
            assert signal["decisions"][0]["type"] == "ban" and signal["decisions"][0]["duration"] == "4h0m0s"
            detectors.close()
    engine.close()
    storage.close()


def test_memory_buckets_stay_bounded_under_many_addresses() -> None:
    engine = RemediationEngine(None, "memory://")
    detectors = Detectors(engine, [Scenario(PROBE, capacity=1000, leak_speed=3600, decision_type=None)])
    for i in range(100_500):
        detectors.report(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", PROBE)
    assert len(detectors._memory) <= 100_000
    assert detectors.counters.extra["buckets_evicted"] > 0
    assert detectors.report("10.1.136.3", PROBE) is False  # the most recent are kept and still count
    detectors.close()
    engine.close()


def test_a_dead_shared_store_costs_one_failure_per_batch(caplog: pytest.LogCaptureFixture) -> None:
    engine = RemediationEngine(None, "redis://127.0.0.1:1/0", sync_interval_ms=0)  # nothing listens there
    detectors = Detectors(engine, [failed_login(LOGIN)], failed_login=LOGIN, flush_interval=3600)
    try:
        with caplog.at_level(logging.WARNING, logger="cscapi.web.detect"):
            with detectors._writing:  # the background writer waits: the 50 events form one batch
                for i in range(50):
                    assert detectors.report_failed_login(f"192.0.2.{i}") is False  # no I/O here
            assert detectors.flush(timeout=120)
        assert detectors.counters.errors == 50
        assert caplog.text.count("could not be read") == 1  # one failure per batch, not per event
    finally:
        detectors.close()
        engine.close()


def test_workers_with_their_sync_threads_apply_each_others_local_decisions(redis_url: str, redis_prefix: str) -> None:
    """Real timing, no manual sync: worker A's detectors overflow; worker B's sync thread applies the decision."""
    a = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=50)
    b = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=50)
    detectors = Detectors(a, [failed_login(LOGIN, capacity=2)], failed_login=LOGIN)
    bouncer = Bouncer(a, secret_key="k" * 32, detectors=detectors, trusted_proxies=["10.0.0.0/8"])
    try:
        request = Request("POST", "/login", headers={"x-forwarded-for": "198.51.100.9"}, peer="10.1.1.1")
        for _ in range(3):
            assert bouncer.report_failed_login(request) is False  # shared buckets: poured off the request path
        deadline = time.monotonic() + 60
        while b.get_ip_remediation("198.51.100.9") != LOCAL_BAN:  # the forwarded client, not the proxy
            assert time.monotonic() < deadline, (detectors.counters, b.local_decisions())
            time.sleep(0.02)
        assert b.get_ip_remediation("10.1.1.1") is CLEAN
    finally:
        detectors.close()
        a.close()
        b.close()


def test_reporting_to_shared_buckets_does_no_store_io(redis_url: str, redis_prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    engine = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=0)
    detectors = Detectors(engine, [failed_login(LOGIN)], failed_login=LOGIN, flush_interval=3600)
    try:
        with detectors._writing:  # hold the background writer: whatever reaches Redis now came from report()
            for _ in range(3):
                detectors.report_failed_login("192.0.2.1")
            assert list(r.scan_iter(match=redis_prefix + "*bucket*")) == []
        assert detectors.flush()
        assert len(list(r.scan_iter(match=redis_prefix + "*bucket*"))) == 1
    finally:
        detectors.close()
        engine.close()
        r.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    if request.param == "memory":
        from cscapi.remediation.stores.memory import MemoryStore

        return MemoryStore(), {}
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'decisions.db'}", {}
    return request.getfixturevalue("redis_url"), {"key_prefix": request.getfixturevalue("redis_prefix")}


def test_a_weaker_local_decision_never_replaces_a_stronger_one(any_store: tuple[Any, dict[str, Any]]) -> None:
    store, kw = any_store
    clock = Clock()
    src = FakeSource()
    src.streams += [stream([]), stream([])]
    a = RemediationEngine(src, store, sync_interval_ms=0, clock=clock, **kw)
    b = RemediationEngine(None, store, sync_interval_ms=0, clock=clock, **kw)
    try:
        a.add_local_decision("192.0.2.44", "ban", 100, LOGIN)
        a.add_local_decision("192.0.2.44", "captcha", 1000, PROBE)  # weaker, longer: kept beside the ban
        a.add_local_decision("192.0.2.44", "ban", 50, LOGIN)  # same type, shorter: the later expiry stays
        assert a.write_local_decisions() == 2
        a.refresh_decisions()  # a refresh (lock, commit, release) keeps them in the store
        for engine in (a, b):
            engine.sync()
            assert engine.get_ip_remediation("192.0.2.44") == LOCAL_BAN
        clock.advance(101)  # the ban is over: the captcha still applies, in both workers
        for engine in (a, b):
            engine.sync()
            assert engine.get_ip_remediation("192.0.2.44") == Remediation("captcha", "local")
        fresh = RemediationEngine(None, store, sync_interval_ms=0, clock=clock, **kw)  # reads the store itself
        assert fresh.get_ip_remediation("192.0.2.44") == Remediation("captcha", "local") or not fresh.store.shared
        fresh.close()
    finally:
        a.close()
        b.close()


def test_a_custom_store_without_the_new_methods_still_works() -> None:
    """A DecisionStore subclass written for 1.0 (no incr_counters, no local decisions) gets working defaults."""
    from cscapi.remediation.stores.base import DecisionStore
    from cscapi.remediation.stores.memory import MemoryStore

    class OldStore(MemoryStore):
        incr_counters = DecisionStore.incr_counters
        add_local_decision = DecisionStore.add_local_decision
        local_version = DecisionStore.local_version
        local_decisions = DecisionStore.local_decisions

    store = OldStore()
    engine = RemediationEngine(None, store)
    engine.update_metrics_origins_count("CAPI", "ban", 3)
    assert engine.get_origins_count() == {"CAPI": {"ban": 3}}
    engine.add_local_decision("192.0.2.8", "captcha", 60)
    engine.add_local_decision("192.0.2.8", "ban", 30)
    assert engine.write_local_decisions() == 2
    other = RemediationEngine(None, store)
    other.sync()
    assert other.get_ip_remediation("192.0.2.8") == LOCAL_BAN
    engine.close()
    other.close()
