"""The async engine under an ASGI app: its constructor never reads the store on the event loop (a hung Redis must not
stall every request of the process), it says it is not loaded yet until its sync thread has read the store, and
``await engine.aready()`` waits for that off the loop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cscapi.errors import DecisionStoreError
from cscapi.remediation import AsyncRemediationEngine, RemediationEngine
from cscapi.remediation.models import Remediation
from test_remediation_support import FakeSource, decision, stream
from test_web_support import BANNED, make_bouncer

CLEAN = Remediation("bypass", "clean")


@pytest.fixture
def hung_redis() -> Iterator[str]:
    """A Redis URI on loopback whose server accepts connections (the kernel's backlog) and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    finally:
        server.close()


class Ticker:
    """Measures the longest gap between ticks of a task that wakes every 5 ms: how long the loop was blocked."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.ticks = 0
        self._stop = False

    async def run(self) -> None:
        last = time.monotonic()
        while not self._stop:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            self.ticks += 1
            last = now

    def stop(self) -> None:
        self._stop = True


def test_the_constructor_does_not_stall_the_loop_on_a_hung_store(hung_redis: str) -> None:
    async def main() -> None:
        ticker = Ticker()
        task = asyncio.create_task(ticker.run())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        engine = AsyncRemediationEngine(None, hung_redis, sync_interval_ms=250)
        built_in = time.monotonic() - started
        try:
            # Not loaded: said so (the bouncer then applies its fail policy), and lookups answer from an empty index.
            assert engine.healthy is False and engine.version is None
            assert engine.last_sync_error is not None and "not loaded yet" in engine.last_sync_error.message
            assert engine.get_ip_remediation(BANNED) == CLEAN
            closed = make_bouncer(engine, fail_open=False)
            from cscapi.web import Request

            assert closed.decide(Request("GET", "/", peer=BANNED)).remediation == "unavailable"
            await asyncio.sleep(0.3)
            # aready() fails with the store's error, without blocking the loop meanwhile (the store times out).
            with pytest.raises(DecisionStoreError):
                await engine.aready()
        finally:
            await engine.aclose()
            ticker.stop()
            await task
        # The old constructor blocked for the store's 5 s socket timeout; a generous margin for a loaded machine.
        assert built_in < 1.0, built_in
        assert ticker.longest < 1.0, ticker.longest
        assert ticker.ticks > 10

    asyncio.run(main())


def test_the_sync_thread_loads_the_store_at_once_and_aready_waits_for_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'decisions.db'}"
    source = FakeSource()
    source.streams.append(stream([decision(BANNED)]))
    agent = RemediationEngine(source, store=uri, sync_interval_ms=0)
    agent.refresh_decisions()
    agent.close()

    async def main() -> None:
        for interval in (0, 250):  # with no periodic sync too, the first read still happens
            engine = AsyncRemediationEngine(None, uri, sync_interval_ms=interval)
            try:
                await engine.aready()
                assert engine.healthy is True
                assert engine.get_ip_remediation(BANNED) == Remediation("ban", "CAPI")
            finally:
                await engine.aclose()

    asyncio.run(main())


def test_strict_still_fails_at_construction() -> None:
    """``strict=True`` keeps its documented meaning (the constructor reads the store and raises)."""
    with pytest.raises(DecisionStoreError):
        AsyncRemediationEngine(None, "redis://127.0.0.1:1/0", strict=True)
