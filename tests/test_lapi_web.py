"""LAPI live mode through the web bouncers (issue 12): under ASGI a live engine's miss asks the LAPI before the
request is answered (never the fallback, never blocking the loop), and settings can build such an engine."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from cscapi.errors import ConfigurationError
from cscapi.lapi import AsyncLapiClient, LapiClient
from cscapi.remediation import AsyncRemediationEngine, RemediationEngine
from cscapi.web import Bouncer
from cscapi.web._settings import bouncer_from_settings, close_engines
from cscapi.web.asgi import BouncerMiddleware

BANNED = "192.0.2.141"
CLEAN_IP = "192.0.2.142"
SECRET = "0123456789abcdef0123"


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _get(bouncer: Bouncer, ip: str) -> int:
    transport = httpx.ASGITransport(app=BouncerMiddleware(_app, bouncer=bouncer), client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://site.test") as client:
        return (await client.get("/", headers={"accept": "application/json"})).status_code


@pytest.mark.anyio
async def test_async_live_engine_under_asgi_bans_the_first_request(lapi: Any, lapi_bouncer_key: str) -> None:
    lapi.add_decision(ip=BANNED, duration="1h")
    client = AsyncLapiClient(lapi.base_url, api_key=lapi_bouncer_key, mode="live")
    engine = AsyncRemediationEngine(client, "memory://")
    try:
        bouncer = Bouncer(engine, secret_key=SECRET)
        assert await _get(bouncer, BANNED) == 403  # the FIRST request: the LAPI was asked, not the fallback
        assert await _get(bouncer, CLEAN_IP) == 200
        assert await _get(bouncer, BANNED) == 403  # now a cache hit
        assert engine.live.lookups == 2 and engine.live.failures == 0
    finally:
        await engine.aclose()
        await client.aclose()


@pytest.mark.anyio
async def test_sync_live_engine_under_asgi_asks_in_a_thread(lapi: Any, lapi_bouncer_key: str) -> None:
    """A sync live engine's miss runs off the event loop's thread (a LAPI lookup never blocks the loop)."""
    lapi.add_decision(ip=BANNED, duration="1h")
    threads: list[int] = []

    class Source(LapiClient):
        def get_ip_decisions(self, ip: str) -> Any:
            threads.append(threading.get_ident())
            return super().get_ip_decisions(ip)

    with Source(lapi.base_url, api_key=lapi_bouncer_key, mode="live") as source:
        engine = RemediationEngine(source, store="memory://")
        try:
            loop_thread = threading.get_ident()
            assert await _get(Bouncer(engine, secret_key=SECRET), BANNED) == 403
            assert threads and loop_thread not in threads
        finally:
            engine.close()


@pytest.mark.anyio
async def test_settings_with_lapi_mode_live_build_a_live_engine(
    lapi: Any, lapi_bouncer_key: str, tmp_path: Any
) -> None:
    lapi.add_decision(ip=BANNED, duration="1h")
    settings = {
        "decision_store": f"sqlite:///{tmp_path}/decisions.db",
        "secret_key": SECRET,
        "lapi_mode": "live",
        "lapi_url": lapi.base_url,
        "lapi_api_key": lapi_bouncer_key,
    }
    bouncer = bouncer_from_settings(settings)
    try:
        assert bouncer.engine.live is not None
        assert await _get(bouncer, BANNED) == 403
        assert await _get(bouncer, CLEAN_IP) == 200
    finally:
        await asyncio.to_thread(close_engines)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"lapi_mode": "live"}, "lapi_mode live needs lapi_url"),
        ({"lapi_mode": "poll"}, "lapi_mode must be stream or live"),
        ({"lapi_url": "http://127.0.0.1:8080/"}, "only serve lapi_mode live"),
    ],
)
def test_lapi_settings_are_checked(extra: dict[str, str], words: str, tmp_path: Any) -> None:
    settings = {"decision_store": f"sqlite:///{tmp_path}/d.db", "secret_key": SECRET, **extra}
    with pytest.raises(ConfigurationError, match=words):
        bouncer_from_settings(settings)
