"""Usage counters counted in process and flushed to the store: no increment lost between threads, no store I/O per
request, two workers' counts summed by the push, and nothing lost or counted twice across a failed flush (SQLite
locked; Redis behind a proxy that drops the reply after forwarding the write)."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cscapi.remediation.engine as engine_module
from cscapi.errors import DecisionStoreError
from cscapi.remediation import RemediationEngine
from cscapi.remediation.stores.memory import MemoryStore
from cscapi.remediation.stores.redis import RedisStore
from cscapi.remediation.stores.sqlite import SQLiteStore
from test_remediation_support import FakeSource, stream


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A store two engines can share: one MemoryStore object, or one SQLite file, or one Redis prefix."""
    if request.param == "memory":
        yield MemoryStore(), {}
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'd.db'}", {}
    else:
        yield request.getfixturevalue("redis_url"), {"key_prefix": request.getfixturevalue("redis_prefix")}


def test_eight_threads_lose_no_increment() -> None:
    engine = RemediationEngine(None, "memory://", sync_interval_ms=0)
    start = threading.Barrier(8)

    def count() -> None:
        start.wait()
        for _ in range(100_000):
            engine.update_metrics_origins_count("CAPI", "ban")

    threads = [threading.Thread(target=count) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.get_origins_count() == {"CAPI": {"ban": 800_000}}
    engine.close()


def test_a_request_does_no_store_io(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    engine = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=0)
    sq = RemediationEngine(None, f"sqlite:///{tmp_path / 'd.db'}", sync_interval_ms=0)
    try:
        for _ in range(100):
            engine.update_metrics_origins_count("CAPI", "ban")
            sq.update_metrics_origins_count("CAPI", "ban")
        assert r.hgetall(engine.store.k_counters) == {}  # type: ignore[attr-defined]
        assert sq.store.counters() == {}
        assert engine.flush_usage() == 100 and sq.flush_usage() == 100
        assert engine.store.counters() == {("CAPI", "ban"): 100} == sq.store.counters()
        assert engine.flush_usage() == 0  # flushed once only
        assert engine.store.counters() == {("CAPI", "ban"): 100}
    finally:
        engine.close()
        sq.close()
        r.close()


def test_two_workers_counts_sum_up_in_the_push(store_uri: tuple[Any, dict[str, Any]]) -> None:
    store, kw = store_uri
    src = FakeSource()
    src.streams.append(stream([]))
    agent = RemediationEngine(src, store, sync_interval_ms=0, **kw)
    worker = RemediationEngine(None, store, sync_interval_ms=0, **kw)
    try:
        for _ in range(7):
            worker.update_metrics_origins_count("CAPI", "ban")
        for _ in range(5):
            agent.update_metrics_origins_count("clean", "bypass")
        worker.flush_usage()  # what its sync thread does every few seconds
        payload = agent.push_usage_metrics()  # flushes the agent's own counts before reading
        items = payload["remediation_components"][0]["metrics"][0]["items"]
        assert {i["name"]: i["value"] for i in items} == {"dropped": 7, "processed": 12}
        assert agent.get_origins_count() == {}  # exactly what was pushed was subtracted
        worker.update_metrics_origins_count("CAPI", "captcha", 2)
        worker.close()  # close flushes
        assert agent.get_origins_count() == {"CAPI": {"captcha": 2}}
    finally:
        agent.close()


def test_the_sync_thread_flushes_by_itself(redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "USAGE_FLUSH_INTERVAL", 0.0)
    worker = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=20)
    reader = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=0)
    try:
        worker.update_metrics_origins_count("CAPI", "ban", 3)
        deadline = time.monotonic() + 60
        while reader.store.counters() != {("CAPI", "ban"): 3}:
            assert time.monotonic() < deadline, reader.store.counters()
            time.sleep(0.02)
    finally:
        worker.close()
        reader.close()


def test_a_failed_sqlite_flush_keeps_the_sums(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'd.db'}"
    engine = RemediationEngine(None, SQLiteStore(uri, timeout=0.05), sync_interval_ms=0)
    blocker = sqlite3.connect(str(tmp_path / "d.db"), isolation_level=None)
    try:
        engine.update_metrics_origins_count("CAPI", "ban", 4)
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(DecisionStoreError):
            engine.flush_usage()
        engine.update_metrics_origins_count("CAPI", "ban", 1)
        engine.update_metrics_origins_count("clean", "bypass", 2)
        with pytest.raises(DecisionStoreError):
            engine.flush_usage()
        blocker.execute("ROLLBACK")
        assert engine.flush_usage() == 7
        assert engine.get_origins_count() == {"CAPI": {"ban": 5}, "clean": {"bypass": 2}}
    finally:
        blocker.close()
        engine.close()


class _ReplyDropper:
    """A loopback TCP proxy to Redis that, once ``cut`` is set, forwards the client's bytes but drops the server's
    reply and closes: the write happened, the client cannot know."""

    def __init__(self, port: int = 6379) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.upstream = port
        self.cut = threading.Event()
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, reply: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if reply and self.cut.is_set():
                    break
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def test_a_redis_flush_whose_reply_is_lost_is_not_counted_twice(redis_url: str, redis_prefix: str) -> None:
    proxy = _ReplyDropper()
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", key_prefix=redis_prefix, socket_timeout=2)
    engine = RemediationEngine(None, store, sync_interval_ms=0)
    direct = RedisStore(redis_url, key_prefix=redis_prefix)
    try:
        engine.update_metrics_origins_count("CAPI", "ban", 3)
        proxy.cut.set()
        with pytest.raises(DecisionStoreError):
            engine.flush_usage()
        deadline = time.monotonic() + 60
        while direct.counters() != {("CAPI", "ban"): 3}:  # the write did land
            assert time.monotonic() < deadline
            time.sleep(0.02)
        engine.update_metrics_origins_count("CAPI", "ban", 2)
        proxy.cut.clear()
        assert engine.flush_usage() == 5  # the lost batch retried (a no-op), then the new one
        assert direct.counters() == {("CAPI", "ban"): 5}
    finally:
        engine.close()
        direct.close()
        proxy.close()


def test_a_forked_child_does_not_flush_its_parents_counts(tmp_path: Path) -> None:
    import os

    engine = RemediationEngine(None, f"sqlite:///{tmp_path / 'd.db'}", sync_interval_ms=0)
    engine.update_metrics_origins_count("CAPI", "ban", 3)
    pid = os.fork()
    if pid == 0:  # the child: counts its own, flushes them
        code = 1
        try:
            engine.update_metrics_origins_count("CAPI", "ban", 10)
            code = 0 if engine.flush_usage() == 10 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert engine.get_origins_count() == {"CAPI": {"ban": 13}}
    engine.close()


def test_the_async_engine_flushes_and_writes_off_the_loop(tmp_path: Path) -> None:
    import asyncio

    from cscapi.remediation import AsyncRemediationEngine, Remediation

    uri = f"sqlite:///{tmp_path / 'd.db'}"
    reader = RemediationEngine(None, uri, sync_interval_ms=0)

    async def main() -> None:
        engine = AsyncRemediationEngine(None, uri, sync_interval_ms=0)
        engine.update_metrics_origins_count("CAPI", "ban", 2)  # plain: no I/O
        assert engine.add_local_decision("192.0.2.5", "ban", 60) == Remediation("ban", "local")  # plain: no I/O
        assert await engine.flush_usage() == 2
        assert await engine.write_local_decisions() == 1
        await engine.aclose()

    asyncio.run(main())
    reader.sync()
    assert reader.get_ip_remediation("192.0.2.5") == Remediation("ban", "local")
    assert reader.get_origins_count() == {"CAPI": {"ban": 2}}
    reader.close()
