"""Live mode against the real CrowdSec LAPI: ``RemediationEngine(LapiClient(url, api_key=KEY, mode="live"))`` asks
LAPI on an index miss, caches the answer (bad: ``bad_ip_cache_duration`` or the decision's remaining time; clean:
``clean_ip_cache_duration``) in-process and in the shared store, answers the fallback on a LAPI failure (counted),
and the async engine's synchronous lookup never blocks the loop."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cscapi.lapi import AsyncLapiClient, LapiClient
from cscapi.lapi.live import UNAVAILABLE_ORIGIN
from cscapi.remediation import AsyncRemediationEngine, RemediationEngine
from hostile_server import Conn, HostileServer, Received


class Clock:
    """A hand-driven engine clock (Unix seconds)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_live_miss_asks_lapi_then_serves_from_cache(lapi: Any, lapi_bouncer_key: str, tmp_path: Path) -> None:
    lapi.add_decision(ip="192.0.2.90", duration="1h")
    lapi.add_decision(range="198.51.100.0/24", type="captcha", duration="1m")
    clock = Clock()
    store = f"sqlite:///{tmp_path / 'live.db'}"
    client = LapiClient(
        lapi.base_url, api_key=lapi_bouncer_key, mode="live", bad_ip_cache_duration=300, clean_ip_cache_duration=30
    )
    engine = RemediationEngine(client, store, clock=clock)
    try:
        assert engine.refresh_decisions().new == 0  # live mode pulls no stream
        ban = engine.get_ip_remediation("192.0.2.90")
        assert (ban.remediation, ban.origin) == ("ban", "cscli")
        assert engine.get_ip_remediation("198.51.100.4").remediation == "captcha"
        assert engine.get_ip_remediation("192.0.2.91").remediation == "bypass"
        assert engine.live.lookups == 3
        # cached: LAPI is not asked again while fresh, even once the decisions are gone there
        lapi.delete_decisions(everything=True)
        lapi.add_decision(ip="192.0.2.91", duration="1h")
        for _ in range(3):
            assert engine.get_ip_remediation("192.0.2.90").remediation == "ban"
            assert engine.get_ip_remediation("192.0.2.91").remediation == "bypass"
        assert engine.live.lookups == 3

        # another worker sharing the store is answered from the shared cache, without LAPI (its LAPI is down)
        other = RemediationEngine(LapiClient(_dead_url(), api_key="k", mode="live", max_retries=0), store, clock=clock)
        try:
            assert other.get_ip_remediation("192.0.2.90").remediation == "ban"
            assert other.live.lookups == 0 and other.live.failures == 0
        finally:
            other.close()

        # the clean answer lasts clean_ip_cache_duration; the captcha its decision's remaining minute (< 300 s)
        clock.now += 31
        assert engine.get_ip_remediation("192.0.2.91").remediation == "ban"
        assert engine.get_ip_remediation("192.0.2.90").remediation == "ban"  # 300 s not over yet
        clock.now += 40
        assert engine.get_ip_remediation("198.51.100.4").remediation == "bypass"  # asked again: deleted
        clock.now += 300
        assert engine.get_ip_remediation("192.0.2.90").remediation == "bypass"
    finally:
        engine.close()
        client.close()


def test_live_lapi_failure_answers_fallback_and_is_counted(tmp_path: Path) -> None:
    client = LapiClient(_dead_url(), api_key="k", mode="live", max_retries=0)
    engine = RemediationEngine(client, "memory://", fallback_remediation="captcha")
    try:
        first = engine.get_ip_remediation("192.0.2.95")
        assert (first.remediation, first.origin) == ("captcha", UNAVAILABLE_ORIGIN)
        engine.get_ip_remediation("192.0.2.95")  # not cached: asked again
        assert engine.live.failures == 2
    finally:
        engine.close()


def test_live_bad_key_answers_fallback(lapi: Any) -> None:
    engine = RemediationEngine(LapiClient(lapi.base_url, api_key="wrong-key", mode="live"), "memory://")
    try:
        assert engine.get_ip_remediation("192.0.2.96").origin == UNAVAILABLE_ORIGIN
        assert engine.live.failures == 1
    finally:
        engine.close()


@pytest.mark.anyio
async def test_async_live_miss_never_blocks_the_loop() -> None:
    """LAPI answers after 1.5 s: the synchronous lookup answers at once (fallback) and the loop keeps turning;
    ``lookup_ip_remediation`` waits for the answer, which is then a cache hit for both."""
    release = threading.Event()
    asked: list[Received] = []

    def slow(conn: Conn, request: Received) -> None:
        asked.append(request)
        release.wait(1.5)
        body = [{"duration": "1h", "origin": "crowdsec", "scenario": "s", "scope": "Ip", "type": "ban",
                 "value": "192.0.2.97", "id": 1}]  # fmt: skip
        conn.answer(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    with HostileServer() as srv:
        srv.route("/v1/decisions", slow)
        client = AsyncLapiClient(srv.url, api_key="k", mode="live")
        engine = AsyncRemediationEngine(client, "memory://")
        try:
            started = time.monotonic()
            first = engine.get_ip_remediation("192.0.2.97")
            assert time.monotonic() - started < 0.5
            assert first.origin == UNAVAILABLE_ORIGIN  # not known yet: the fallback, while the lookup runs
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            tick_task = asyncio.ensure_future(ticker())
            found, again = await asyncio.gather(
                engine.lookup_ip_remediation("192.0.2.97"), engine.lookup_ip_remediation("192.0.2.97")
            )
            tick_task.cancel()
            assert found.remediation == again.remediation == "ban" and found.origin == "crowdsec"
            assert ticks > 10  # the loop kept running while LAPI was slow
            assert len(asked) == 1  # one lookup shared by the background miss and both awaiting callers
            assert engine.get_ip_remediation("192.0.2.97").remediation == "ban"  # now a local hit
        finally:
            release.set()
            await engine.aclose()
            await client.aclose()


@pytest.mark.anyio
async def test_async_live_against_real_lapi(lapi: Any, lapi_bouncer_key: str) -> None:
    lapi.add_decision(ip="2001:db8::99", type="captcha", duration="1h")
    client = AsyncLapiClient(lapi.base_url, api_key=lapi_bouncer_key, mode="live")
    engine = AsyncRemediationEngine(client, "memory://")
    try:
        found = await engine.lookup_ip_remediation("2001:db8:0::99")
        assert (found.remediation, found.origin) == ("captcha", "cscli")
        assert (await engine.lookup_ip_remediation("2001:db8::98")).remediation == "bypass"
        assert engine.get_ip_remediation("2001:db8:0::99").remediation == "captcha"  # the caller's spelling cached
    finally:
        await engine.aclose()
        await client.aclose()


@pytest.mark.anyio
async def test_async_live_lookup_keeps_local_decisions(lapi: Any, lapi_bouncer_key: str) -> None:
    """``await lookup_ip_remediation`` answers like ``get_ip_remediation``: a local ban on an IP that LAPI says is
    clean still bans (it used to return LAPI's bypass), and a LAPI ban on another IP is still seen."""
    lapi.add_decision(ip="192.0.2.177", type="ban", duration="1h")
    client = AsyncLapiClient(lapi.base_url, api_key=lapi_bouncer_key, mode="live")
    engine = AsyncRemediationEngine(client, "memory://")
    try:
        engine.add_local_decision("192.0.2.176", "ban", 600.0, scenario="me/brute")
        local = await engine.lookup_ip_remediation("192.0.2.176")
        assert (local.remediation, local.origin) == ("ban", "local")
        assert (await engine.lookup_ip_remediation("192.0.2.176")).origin == "local"  # cached clean: still local
        remote = await engine.lookup_ip_remediation("192.0.2.177")
        assert (remote.remediation, remote.origin) == ("ban", "cscli")
        assert (await engine.lookup_ip_remediation("198.51.100.177")).remediation == "bypass"
    finally:
        await engine.aclose()
        await client.aclose()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def cache_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    from cscapi.remediation import open_store

    if request.param == "memory":
        store = open_store("memory://")
    elif request.param == "sqlite":
        store = open_store(f"sqlite:///{tmp_path / 'cache.db'}")
    else:
        store = open_store(request.getfixturevalue("redis_url"), key_prefix=request.getfixturevalue("redis_prefix"))
    yield request.param, store
    store.close()


def test_store_cache_entries_expire_and_do_not_pile_up(cache_store: Any) -> None:
    """The shared live-mode cache: an entry lasts until its expiry, and expired entries are dropped by the store
    (Redis: a TTL; SQLite and memory: swept as they grow), so a stream of distinct IPs does not grow it forever."""
    kind, store = cache_store
    now = time.time()
    store.cache_put("live:192.0.2.1", "ban", now + 60, now)
    assert store.cache_get("live:192.0.2.1", now) == "ban"
    assert store.cache_get("live:192.0.2.1", now + 61) is None
    assert store.cache_get("live:192.0.2.2", now) is None
    if kind == "redis":
        ttl = store._redis.pttl(store.k_meta + "cache:live:192.0.2.1")
        assert 0 < ttl <= 60_000
        return
    for i in range(3000):  # all expire at now + 1
        store.cache_put(f"live:10.0.{i // 256}.{i % 256}", "bypass", now + 1, now)
    later = now + 10
    for i in range(3000):
        store.cache_put(f"live:10.1.{i // 256}.{i % 256}", "bypass", later + 60, later)
    if kind == "memory":
        assert len(store._cache) < 5000
    else:
        rows = store._run(
            lambda c: c.execute("SELECT count(*) FROM cscapi_kv WHERE key LIKE 'meta:cache:%'").fetchone()
        )
        assert rows[0] < 5000, rows
    assert store.cache_get("live:10.1.0.5", later) == "bypass"


@pytest.mark.parametrize(
    "answer",
    [
        (200, b"<html>not json</html>"),  # unreadable: ServerError
        (200, b"[" + b'{"value": "192.0.2.98"},' * 60_000 + b"{}]"),  # over max_response_bytes
        (500, b'{"message": "db locked"}'),
        (403, b'{"message": "access forbidden"}'),
    ],
    ids=["not-json", "too-large", "500", "403"],
)
def test_live_hostile_answers_fall_back_and_are_counted(answer: tuple[int, bytes]) -> None:
    status, body = answer
    with HostileServer() as srv:
        srv.route("/v1/decisions", lambda c, r: c.answer(status, body, {"Content-Type": "application/json"}))
        client = LapiClient(srv.url, api_key="k", mode="live", max_retries=0)
        engine = RemediationEngine(client, "memory://", fallback_remediation="captcha")
        try:
            found = engine.get_ip_remediation("192.0.2.98")
            assert (found.remediation, found.origin) == ("captcha", UNAVAILABLE_ORIGIN)
            assert engine.live.failures == 1
        finally:
            engine.close()
            client.close()


def test_live_skips_unreadable_items_and_uses_the_rest() -> None:
    good = {
        "duration": "1h",
        "origin": "crowdsec",
        "scenario": "s",
        "scope": "Ip",
        "type": "ban",
        "value": "192.0.2.97",
    }
    body = json.dumps([{**good, "value": "nope"}, {**good, "duration": "forever"}, good]).encode()
    with HostileServer() as srv:
        srv.route("/v1/decisions", lambda c, r: c.answer(200, body, {"Content-Type": "application/json"}))
        client = LapiClient(srv.url, api_key="k", mode="live")
        engine = RemediationEngine(client, "memory://")
        try:
            assert engine.get_ip_remediation("192.0.2.97").remediation == "ban"
            assert engine.live.failures == 0
        finally:
            engine.close()
            client.close()
