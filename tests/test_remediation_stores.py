"""The decision stores for real: memory, SQLite (a file, several processes) and Redis (the machine's server).

The store contract (lock, fenced commit, dirty mark, atomic counters, clear), engines sharing one store (cold start,
sync within a second), Redis key hygiene (everything under the prefix; clear never touches other keys), and several
processes (multiprocessing spawn): one refreshes, the others see it within a second; only one refreshes at a time.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cscapi.errors import DecisionStoreError, RefreshInProgressError, RefreshTooSoonError
from cscapi.remediation import CLEAN, RemediationEngine, open_store
from cscapi.remediation.state import AllowlistState, BlocklistState, State, decode_state, encode_state
from cscapi.remediation.stores import DecisionStore
from test_remediation_support import FakeSource, blocklist, decision, stream


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if request.param == "memory":
        yield "memory://", {}
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'decisions.db'}", {}
    else:
        url = request.getfixturevalue("redis_url")
        yield url, {"key_prefix": request.getfixturevalue("redis_prefix")}


@pytest.fixture(params=["sqlite", "redis"])
def shared_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'decisions.db'}", {}
    else:
        yield request.getfixturevalue("redis_url"), {"key_prefix": request.getfixturevalue("redis_prefix")}


def sample_state() -> State:
    return State(
        capi={("a/b", "ban", "ip"): {"1.2.3.4": 2e9}, ("a/c", "captcha", "range"): {"10.0.0.0/8": 2e9 + 0.5}},
        blocklists={"x": BlocklistState("x", "http://h/x", "ban", "ip", 3600.0, ("5.6.7.8",), 1.0, 2e9, "lm")},
        allowlists={"y": AllowlistState("y", "id", "http://h/y", {"9.9.9.9": None, "::1": 2e9}, 1.0, None)},
        last_pull=1.5e9,
    )


# ---- the contract ------------------------------------------------------------------------------------------


def test_state_codec_round_trips() -> None:
    state = sample_state()
    assert decode_state(encode_state(state)) == state


def test_store_contract(store_uri: tuple[str, dict[str, Any]]) -> None:
    uri, kw = store_uri
    store = open_store(uri, **kw)
    try:
        assert store.version() is None and store.load() == (None, None) and not store.is_dirty()
        assert store.acquire_lock("t1", 30)
        assert not store.acquire_lock("t2", 30)  # held
        store.mark_dirty()
        assert store.is_dirty()
        store.commit(sample_state(), "v1", "t1", True)
        assert store.version() == "v1" and not store.is_dirty()
        version, state = store.load()
        assert version == "v1" and state == sample_state()
        with pytest.raises(DecisionStoreError, match="lock"):
            store.commit(State(), "v2", "t2", True)  # a commit without the lock is refused (fencing)
        store.release_lock("t2")  # not the holder: no effect
        assert not store.acquire_lock("t3", 30)
        store.release_lock("t1")
        assert store.acquire_lock("t3", 0.2)
        time.sleep(0.35)
        assert store.acquire_lock("t4", 30)  # the lock lapses after its ttl
        store.mark_dirty()
        store.commit(State(), "v2", "t4", False)
        assert store.is_dirty() and store.version() == "v2"  # a prune-style commit keeps the mark
        store.incr_counter("CAPI", "ban", 2)
        store.incr_counter("CAPI", "ban")
        store.incr_counter("clean", "bypass", 5)
        assert store.counters() == {("CAPI", "ban"): 3, ("clean", "bypass"): 5}
        store.set_meta("k", "v")
        assert store.get_meta("k") == "v" and store.get_meta("missing") is None
        store.clear()
        # a shared store keeps a "cleared" version with no state (so that a vanished version means LOST)
        cleared = store.version()
        assert (cleared is None) if not store.shared else cleared.startswith("cleared-")
        assert store.load() == (cleared, None) and not store.is_dirty()
        assert store.counters() == {("CAPI", "ban"): 3, ("clean", "bypass"): 5}  # clear keeps the usage counters
        assert store.acquire_lock("t5", 30)  # and drops the lock
    finally:
        store.close()


def test_counters_are_atomic_and_a_push_decrements_exactly_what_it_sent(store_uri: tuple[str, dict[str, Any]]) -> None:
    uri, kw = store_uri
    store = open_store(uri, **kw)
    try:

        def bump() -> None:
            s = open_store(uri, **kw) if store.shared else store
            for _ in range(200):
                s.incr_counter("CAPI", "ban")
            if s is not store:
                s.close()

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for t in threads:
            t.start()
        snapshot_during = store.counters()
        for t in threads:
            t.join()
        assert store.counters() == {("CAPI", "ban"): 800}
        store.decr_counters(snapshot_during)  # what was pushed while increments went on
        left = 800 - snapshot_during.get(("CAPI", "ban"), 0)
        assert store.counters() == ({("CAPI", "ban"): left} if left else {})
        store.decr_counters({("CAPI", "ban"): left})
        assert store.counters() == {}
    finally:
        store.close()


def test_an_unreadable_blob_means_an_empty_state_and_a_startup_pull(shared_uri: tuple[str, dict[str, Any]]) -> None:
    uri, kw = shared_uri
    store = open_store(uri, **kw)
    assert store.acquire_lock("t", 30)
    store.commit(sample_state(), "v1", "t", True)
    store.release_lock("t")
    if uri.startswith("redis"):
        store._redis.hset(store.k_state, "blob", b"garbage")  # type: ignore[attr-defined]
    else:
        store._conn().execute("UPDATE cscapi_state SET blob = ?", (b"garbage",))  # type: ignore[attr-defined]
    assert store.load() == ("v1", None)
    src = FakeSource()
    engine = RemediationEngine(src, store, sync_interval_ms=0)
    engine.refresh_decisions()
    assert src.startups() == [True]
    engine.close()


# ---- engines sharing a store -----------------------------------------------------------------------------


def test_workers_share_decisions_cold_start_and_sync_within_a_second(shared_uri: tuple[str, dict[str, Any]]) -> None:
    uri, kw = shared_uri
    src = FakeSource()
    src.streams.append(stream([decision("1.2.3.4"), decision("10.0.0.0/8", scope="range")]))
    a = RemediationEngine(src, uri, sync_interval_ms=50, **kw)
    b = RemediationEngine(FakeSource(), uri, sync_interval_ms=50, **kw)
    try:
        a.refresh_decisions()
        cold = RemediationEngine(FakeSource(), uri, sync_interval_ms=0, **kw)  # cold start: loads at once
        assert cold.get_ip_remediation("10.9.9.9").remediation == "ban"
        cold.close()
        deadline = time.monotonic() + 1.0
        while b.get_ip_remediation("1.2.3.4") == CLEAN and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.get_ip_remediation("1.2.3.4").remediation == "ban"
        assert b.version == a.version
        # b's own refresh within the interval is refused: the shared last pull counts for every worker
        with pytest.raises(RefreshTooSoonError):
            b.refresh_decisions()
        # a clear by one worker empties the others
        a.clear_cache()
        deadline = time.monotonic() + 1.0
        while b.get_ip_remediation("1.2.3.4") != CLEAN and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.get_ip_remediation("1.2.3.4") == CLEAN and b.version is None
        # the next refresh, by any worker, is a startup pull
        b.client.streams.append(stream([decision("5.6.7.8")]))  # type: ignore[attr-defined]
        b.refresh_decisions()
        assert b.client.startups() == [True]  # type: ignore[attr-defined]
    finally:
        a.close()
        b.close()


def test_redis_keys_stay_under_the_prefix_and_clear_never_touches_others(redis_url: str, redis_prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    other_prefix = redis_prefix + "x*?["  # glob characters in a neighbour's prefix must not widen our SCAN
    foreign = [f"{redis_prefix[:-1]}-foreign", "unrelated-key-" + redis_prefix, other_prefix + "kept"]
    try:
        for key in foreign:
            r.set(key, "mine, not cscapi's")
        src = FakeSource()
        bl = blocklist("a")
        src.links[bl.url] = "192.0.2.1\n"
        src.streams.append(stream([decision("1.2.3.4")], blocklists=[bl]))
        engine = RemediationEngine(src, redis_url, key_prefix=redis_prefix + "x:", sync_interval_ms=0)
        engine.refresh_decisions()
        engine.update_metrics_origins_count("CAPI", "ban")
        engine.flush_usage()  # counted in process; the sync thread (off here) would flush it
        ours = {k.decode() for k in r.scan_iter(match=redis_prefix + "x:*")}
        assert ours >= {redis_prefix + "x:#state", redis_prefix + "x:#counters"}
        engine.clear_cache()
        assert {k.decode() for k in r.scan_iter(match=redis_prefix + "x:*")} == {
            redis_prefix + "x:#counters",
            redis_prefix + "x:#state",  # the "cleared" version: emptied on purpose, not lost
            redis_prefix + "x:#migrated",
        }
        assert all(r.get(k) == b"mine, not cscapi's" for k in foreign)
        engine.close()
    finally:
        r.delete(*foreign)
        r.close()


def test_redis_uri_password_never_shows(redis_url: str) -> None:
    assert open_store("redis://user:s3cret@127.0.0.1:6379/0").uri == "redis://user:***@127.0.0.1:6379/0"
    store = open_store("redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(store)
    with pytest.raises(DecisionStoreError) as info:
        store.version()
    assert "s3cret" not in str(info.value)


def test_a_reader_without_client_serves_but_cannot_pull(tmp_path: Path) -> None:
    from cscapi.errors import ConfigurationError

    uri = f"sqlite:///{tmp_path / 'd.db'}"
    writer = RemediationEngine(FakeSource(), uri, sync_interval_ms=0)
    writer.client.streams.append(stream([decision("1.2.3.4")]))  # type: ignore[attr-defined]
    writer.refresh_decisions()
    reader = RemediationEngine(None, uri, sync_interval_ms=0)
    assert reader.get_ip_remediation("1.2.3.4").remediation == "ban"
    with pytest.raises(ConfigurationError, match="no client"):
        reader.refresh_decisions()
    with pytest.raises(ConfigurationError, match="no client"):
        reader.push_usage_metrics()
    reader.close()
    writer.close()


def test_a_store_down_at_start_serves_nothing_and_refresh_reports_the_store_error() -> None:
    engine = RemediationEngine(FakeSource(), "redis://127.0.0.1:1/0", sync_interval_ms=0)
    assert engine.get_ip_remediation("1.2.3.4") == CLEAN
    with pytest.raises(DecisionStoreError):
        engine.refresh_decisions()
    engine.close()


# ---- several processes -------------------------------------------------------------------------------------


def _reader(uri: str, kw: dict[str, Any], ready: Any, results: Any, ip: str) -> None:
    engine = RemediationEngine(FakeSource(), uri, sync_interval_ms=100, **kw)
    ready.put(engine.get_ip_remediation(ip).remediation)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if engine.get_ip_remediation(ip).remediation == "ban":
            results.put(time.time())
            break
        time.sleep(0.005)
    else:
        results.put(None)
    engine.close()


class SlowSource(FakeSource):
    def __init__(self, calls: Any) -> None:
        super().__init__()
        self.counter = calls

    def get_decisions(self, *args: Any, **kw: Any) -> Any:
        with self.counter.get_lock():
            self.counter.value += 1
        time.sleep(1.0)
        return stream([decision("1.2.3.4")])


def _refresher(uri: str, kw: dict[str, Any], calls: Any, ready: Any, start: Any, results: Any) -> None:
    try:
        engine = RemediationEngine(SlowSource(calls), uri, sync_interval_ms=0, **kw)
        ready.put(True)
        start.wait()
        try:
            engine.refresh_decisions()
            results.put("refreshed")
        except RefreshInProgressError:
            results.put("in-progress")
        except RefreshTooSoonError:
            results.put("too-soon")
        engine.close()
    except Exception as exc:  # reported to the test rather than lost in a child's stderr
        results.put(f"error: {exc!r}")


@pytest.mark.slow
def test_processes_see_a_refresh_within_a_second(shared_uri: tuple[str, dict[str, Any]]) -> None:
    uri, kw = shared_uri
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(uri, kw, ready, results, "203.0.113.5")) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        assert [ready.get(timeout=60) for _ in procs] == ["bypass"] * 3
        src = FakeSource()
        src.streams.append(stream([decision("203.0.113.5")]))
        engine = RemediationEngine(src, uri, sync_interval_ms=0, **kw)
        engine.refresh_decisions()
        committed = time.time()
        seen = [results.get(timeout=15) for _ in procs]
        engine.close()
        assert None not in seen
        lags = [t - committed for t in seen]
        assert max(lags) < 1.0, lags
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()


@pytest.mark.slow
def test_only_one_process_refreshes_at_a_time(shared_uri: tuple[str, dict[str, Any]]) -> None:
    uri, kw = shared_uri
    ctx = multiprocessing.get_context("spawn")
    calls = ctx.Value("i", 0)
    start = ctx.Event()
    ready, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_refresher, args=(uri, kw, calls, ready, start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=60)  # every process has imported and opened the store
        start.set()
        outcomes = sorted(results.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
    assert outcomes.count("refreshed") == 1, outcomes
    assert calls.value == 1  # CAPI was pulled once
    store: DecisionStore = open_store(uri, **kw)
    assert store.version() is not None and not store.is_dirty()
    store.close()


def test_a_state_in_another_format_is_not_trusted(tmp_path: Path) -> None:
    import json
    import zlib

    uri = f"sqlite:///{tmp_path / 'd.db'}"
    store = open_store(uri)
    assert store.acquire_lock("t", 30)
    store.commit(sample_state(), "v1", "t", True)
    store.release_lock("t")
    other = zlib.compress(json.dumps({"format": 99, "capi": []}).encode())
    store._conn().execute("UPDATE cscapi_state SET blob = ?", (other,))  # type: ignore[attr-defined]
    src = FakeSource()
    engine = RemediationEngine(src, uri, sync_interval_ms=0)
    assert engine.index.decisions == 0
    engine.refresh_decisions()
    assert src.startups() == [True]
    engine.close()
    store.close()


def test_without_a_sync_thread_sync_picks_up_changes(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'd.db'}"
    writer = RemediationEngine(FakeSource(), uri, sync_interval_ms=0)
    reader = RemediationEngine(None, uri, sync_interval_ms=0)
    assert reader._sync_thread is None
    writer.client.streams.append(stream([decision("1.2.3.4")]))  # type: ignore[attr-defined]
    writer.refresh_decisions()
    assert reader.get_ip_remediation("1.2.3.4") == CLEAN  # no thread: nothing changes by itself
    assert reader.sync() is True and reader.sync() is False
    assert reader.get_ip_remediation("1.2.3.4").remediation == "ban"
    reader.close()
    writer.close()


def _forked_reader(engine: RemediationEngine, results: Any) -> None:
    results.put(engine._sync_thread is not None and engine._sync_thread.is_alive())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if engine.get_ip_remediation("1.2.3.4").remediation == "ban":
            results.put(time.time())
            return
        time.sleep(0.01)
    results.put(None)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_worker_gets_its_own_sync_thread(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'd.db'}"
    engine = RemediationEngine(None, uri, sync_interval_ms=50)  # created before the fork, like a preloaded app
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_forked_reader, args=(engine, results))
    child.start()
    try:
        assert results.get(timeout=10) is True  # the child restarted the sync thread after the fork
        writer = RemediationEngine(FakeSource(), uri, sync_interval_ms=0)
        writer.client.streams.append(stream([decision("1.2.3.4")]))  # type: ignore[attr-defined]
        writer.refresh_decisions()
        committed = time.time()
        seen = results.get(timeout=10)
        writer.close()
        assert seen is not None and seen - committed < 1.0
    finally:
        child.join(timeout=10)
        engine.close()


def test_a_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cscapi.errors import ConfigurationError

    monkeypatch.setitem(sys.modules, "redis", None)  # what an environment without the extra looks like
    with pytest.raises(ConfigurationError) as info:
        open_store("redis://127.0.0.1:6379/0")
    assert "cscapi[redis]" in str(info.value)


def test_lookups_never_touch_the_store(redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    src = FakeSource()
    src.streams.append(stream([decision("1.2.3.4"), decision("2001:db8::/32", scope="range")]))
    engine = RemediationEngine(src, redis_url, key_prefix=redis_prefix, sync_interval_ms=0)
    engine.refresh_decisions()

    def no_io(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the lookup path touched the store")

    for name in ("version", "load", "counters", "get_meta", "incr_counter"):
        monkeypatch.setattr(engine.store, name, no_io)
    monkeypatch.setattr(engine.store, "_redis", None)  # any Redis call would now fail
    for _ in range(1000):
        assert engine.get_ip_remediation("1.2.3.4").remediation == "ban"
        assert engine.get_ip_remediation("2001:db8:1::1").remediation == "ban"
        assert engine.get_ip_remediation("192.0.2.1") == CLEAN
    monkeypatch.undo()
    engine.close()


def test_redis_pubsub_propagates_a_refresh_long_before_the_next_poll(redis_url: str, redis_prefix: str) -> None:
    """Polling every 30 s: only the pub/sub notification can bring the new version within a few seconds."""
    import redis

    r = redis.Redis.from_url(redis_url)
    writer = RemediationEngine(FakeSource(), redis_url, key_prefix=redis_prefix, sync_interval_ms=0)
    reader = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=30_000)
    try:
        deadline = time.monotonic() + 5
        while r.pubsub_numsub(redis_prefix + "#events")[0][1] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.pubsub_numsub(redis_prefix + "#events")[0][1] == 1  # the reader's sync thread listens
        writer.client.streams.append(stream([decision("1.2.3.4")]))  # type: ignore[attr-defined]
        writer.refresh_decisions()
        while reader.version != writer.version and time.monotonic() < deadline + 5:
            time.sleep(0.01)
        assert reader.version == writer.version
        assert reader.get_ip_remediation("1.2.3.4").remediation == "ban"
        writer.clear_cache()  # also notified
        while reader.version is not None and time.monotonic() < deadline + 10:
            time.sleep(0.01)
        assert reader.version is None and reader.get_ip_remediation("1.2.3.4") == CLEAN
        started = time.monotonic()
        reader.close()  # does not wait for the 30 s poll interval
        assert time.monotonic() - started < 5
        assert r.pubsub_numsub(redis_prefix + "#events")[0][1] == 0
    finally:
        reader.close()
        writer.close()
        r.close()


def _forked_pubsub_reader(engine: RemediationEngine, channel: str, url: str, results: Any) -> None:
    import redis

    r = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while r.pubsub_numsub(channel)[0][1] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the child's sync thread subscribed on a connection of its own (parent's + child's)
    results.put(r.pubsub_numsub(channel)[0][1])
    r.close()
    while time.monotonic() < deadline:
        if engine.get_ip_remediation("1.2.3.4").remediation == "ban":
            results.put("ban")
            return
        time.sleep(0.01)
    results.put(None)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_worker_subscribes_on_its_own_connection(redis_url: str, redis_prefix: str) -> None:
    """The parent's subscription is not read from the child: the child subscribes again and gets the commit."""
    import redis

    r = redis.Redis.from_url(redis_url)
    channel = redis_prefix + "#events"
    engine = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=30_000)
    deadline = time.monotonic() + 5
    while r.pubsub_numsub(channel)[0][1] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # the parent's sync thread is subscribed before the fork
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_forked_pubsub_reader, args=(engine, channel, redis_url, results))
    child.start()
    try:
        assert results.get(timeout=15) == 2
        writer = RemediationEngine(FakeSource(), redis_url, key_prefix=redis_prefix, sync_interval_ms=0)
        writer.client.streams.append(stream([decision("1.2.3.4")]))  # type: ignore[attr-defined]
        writer.refresh_decisions()
        assert results.get(timeout=15) == "ban"  # long before the 30 s poll: the notification reached the child
        writer.close()
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()
        engine.close()
        r.close()


# ---- faults: a lost store, an abandoned refresh, neighbouring prefixes ---------------------------------------


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())


def _lose(uri: str, kw: dict[str, Any]) -> None:
    """What a Redis restart without data (or a flush, or an eviction) or a replaced SQLite file does to the store."""
    if uri.startswith("sqlite"):
        import sqlite3

        path = Path(uri[len("sqlite:///") :])
        fresh = path.with_name("fresh.db")
        sqlite3.connect(fresh).close()
        fresh.replace(path)
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    else:
        import redis

        r = redis.Redis.from_url(uri)
        keys = list(r.scan_iter(match=kw["key_prefix"] + "*"))  # only this test's keys: never FLUSHDB
        if keys:
            r.delete(*keys)
        r.close()


def test_a_lost_store_is_not_an_empty_one(shared_uri: tuple[str, dict[str, Any]]) -> None:
    """Workers keep their last good index, say they are unhealthy (and why), and so does an engine started now."""
    uri, kw = shared_uri
    src = FakeSource()
    src.streams.append(stream([decision("1.2.3.4")]))
    writer = RemediationEngine(src, uri, sync_interval_ms=0, **kw)
    reader = RemediationEngine(None, uri, sync_interval_ms=50, **kw)
    try:
        writer.refresh_decisions()
        assert _wait(lambda: reader.get_ip_remediation("1.2.3.4").remediation == "ban")
        _lose(uri, kw)
        assert _wait(lambda: not reader.healthy)
        assert reader.store_lost and "lost its decisions" in reader.last_sync_error.message  # type: ignore[union-attr]
        time.sleep(0.3)  # several sync rounds later, still serving the last good index
        assert reader.get_ip_remediation("1.2.3.4").remediation == "ban" and reader.version == writer.version
        with pytest.raises(DecisionStoreError, match="lost"):
            reader.require_ready()
        # a process starting now (e.g. `cscapi decisions check`) is told too, not handed "bypass" for everyone
        with pytest.raises(DecisionStoreError, match="lost"):
            RemediationEngine(None, uri, sync_interval_ms=0, strict=True, **kw)
        # the next refresh (a startup pull: the dirty mark went with the rest) heals every worker
        src.streams.append(stream([decision("5.6.7.8")]))
        writer.refresh_decisions(force=True)
        assert src.startups() == [True, True]
        assert _wait(lambda: reader.healthy and reader.get_ip_remediation("5.6.7.8").remediation == "ban")
        assert not reader.store_lost and reader.get_ip_remediation("1.2.3.4") == CLEAN
        fresh = RemediationEngine(None, uri, sync_interval_ms=0, strict=True, **kw)
        assert fresh.healthy
        fresh.close()
    finally:
        reader.close()
        writer.close()


def test_a_cleared_store_is_empty_not_lost(shared_uri: tuple[str, dict[str, Any]]) -> None:
    uri, kw = shared_uri
    src = FakeSource()
    src.streams.append(stream([decision("1.2.3.4")]))
    writer = RemediationEngine(src, uri, sync_interval_ms=0, **kw)
    reader = RemediationEngine(None, uri, sync_interval_ms=50, **kw)
    try:
        writer.refresh_decisions()
        assert _wait(lambda: reader.get_ip_remediation("1.2.3.4").remediation == "ban")
        writer.clear_cache()
        assert _wait(lambda: reader.get_ip_remediation("1.2.3.4") == CLEAN)
        time.sleep(0.2)
        assert reader.healthy and not reader.store_lost and reader.version is None
    finally:
        reader.close()
        writer.close()


class _Interrupting(FakeSource):
    """A pull interrupted by Ctrl-C (KeyboardInterrupt): the driver leaves the flow mid-refresh."""

    def get_decisions(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt


def test_an_abandoned_refresh_releases_the_lock(shared_uri: tuple[str, dict[str, Any]]) -> None:
    import sys

    uri, kw = shared_uri
    ignored: list[Any] = []
    previous, sys.unraisablehook = sys.unraisablehook, ignored.append
    engine = RemediationEngine(_Interrupting(), uri, sync_interval_ms=0, **kw)
    store = open_store(uri, **kw)
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.refresh_decisions()
        assert store.acquire_lock("someone-else", 30)  # free at once, not after lock_ttl (300 s)
        store.release_lock("someone-else")
        import gc

        gc.collect()
        assert not [u for u in ignored if "GeneratorExit" in str(u.exc_value)]
    finally:
        sys.unraisablehook = previous
        store.close()
        engine.close()


def test_a_cancelled_async_refresh_releases_the_lock(shared_uri: tuple[str, dict[str, Any]]) -> None:
    import asyncio

    from cscapi.remediation import AsyncRemediationEngine

    uri, kw = shared_uri

    class Hanging:
        async def get_decisions(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.Event().wait()

        async def default_machine_id(self) -> str:
            return "m" * 48

    async def scenario() -> None:
        engine = AsyncRemediationEngine(Hanging(), uri, sync_interval_ms=0, **kw)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(engine.refresh_decisions(), 0.5)
        finally:
            await engine.aclose()

    asyncio.run(scenario())
    store = open_store(uri, **kw)
    try:
        assert store.acquire_lock("someone-else", 30)
    finally:
        store.close()


def test_closing_the_refresh_flow_mid_pull_yields_nothing() -> None:
    """The flow's lock release is never a `yield` in a `finally`: closing it mid-refresh is clean."""
    import logging

    from cscapi.remediation.core import FlowContext, refresh_flow
    from cscapi.remediation.index import Policy

    ctx = FlowContext(Policy(("ban", "captcha", "bypass"), "bypass", "normal_bouncing"), logging.getLogger("t"),
                      time.time, "m" * 48, True, True, 5400.0, 300.0)  # fmt: skip
    flow = refresh_flow(ctx, False, open_store("memory://"), FakeSource())
    answers = {"acquire_lock": True, "load": (None, None), "is_dirty": False, "mark_dirty": None}
    op = next(flow)
    while getattr(op, "name", None) != "get_decisions":
        op = flow.send(answers.get(getattr(op, "name", ""), time.time()))  # Now effects get the time
    flow.close()  # raised "generator ignored GeneratorExit" when the release was a yield in a finally


def test_redis_prefixes_are_delimited(redis_url: str, redis_prefix: str) -> None:
    """Prefix ``a:`` never reaches tenant ``a:x:``'s keys (clear used to SCAN ``a:*``)."""
    import redis

    from cscapi.remediation.stores.redis import namespace

    src_a, src_ax = FakeSource(), FakeSource()
    src_a.streams.append(stream([decision("1.1.1.1")]))
    src_ax.streams.append(stream([decision("2.2.2.2")]))
    a = RemediationEngine(src_a, redis_url, key_prefix=redis_prefix + "a:", sync_interval_ms=0)
    ax = RemediationEngine(src_ax, redis_url, key_prefix=redis_prefix + "a:x:", sync_interval_ms=0)
    r = redis.Redis.from_url(redis_url)
    try:
        a.refresh_decisions()
        ax.refresh_decisions()
        ax.update_metrics_origins_count("CAPI", "ban", 4)
        before = {k for k in r.scan_iter(match=redis_prefix + "a:x:*")}
        a.clear_cache()
        assert {k for k in r.scan_iter(match=redis_prefix + "a:x:*")} == before
        ax.sync()
        assert ax.healthy and ax.get_ip_remediation("2.2.2.2").remediation == "ban"
        assert ax.get_origins_count() == {"CAPI": {"ban": 4}}
        # no namespace is a prefix of another's keys, whatever the prefixes hold
        prefixes = ["a:", "a:x:", "a:#", "a:\\#", "a:\\", "a:#x", "a", "a:meta:"]
        spaces = [namespace(p) for p in prefixes]
        for p, ns in zip(prefixes, spaces):
            for q, other in zip(prefixes, spaces):
                if p != q:
                    assert not (other + "state").startswith(ns), (p, q)
    finally:
        a.close()
        ax.close()
        r.close()


def test_redis_old_key_layout_is_read_once(redis_url: str, redis_prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    r.hset(redis_prefix + "state", mapping={"version": "v-old", "blob": encode_state(sample_state())})
    r.hset(redis_prefix + "counters", '["CAPI","ban"]', 7)
    try:
        engine = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=0)
        assert engine.version == "v-old" and engine.get_ip_remediation("1.2.3.4").remediation == "ban"
        assert engine.get_origins_count() == {"CAPI": {"ban": 7}}
        assert engine.store.is_dirty()  # the next pull is a startup pull
        engine.close()
    finally:
        r.close()
