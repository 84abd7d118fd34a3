"""The async client never blocks the event loop: storage calls run in worker threads, pauses are awaited."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cscapi.aio import AsyncCAPIClient
from cscapi.models import Machine
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal, generate_machine_id_from_key
from test_client_support import FakeCAPI, make_config

M1 = generate_machine_id_from_key("async-host", prefix="test")


class GatedStorage(SQLStorage):
    """A storage whose machine reads wait until the event loop proves it is still running.

    If the client called it on the event loop thread, the loop could not run the task that opens the gate, and the
    read would time out: the test would fail instead of hanging.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()
        self.timed_out = False
        self.threads: set[int] = set()

    def get_machine_by_id(self, machine_id: str) -> Machine | None:
        self.threads.add(threading.get_ident())
        if not self.gate.wait(timeout=5):
            self.timed_out = True
        return super().get_machine_by_id(machine_id)


@pytest.mark.anyio
async def test_storage_calls_do_not_block_the_loop(tmp_path: Path, capi_spec: dict[str, Any]) -> None:
    fake = FakeCAPI(capi_spec=capi_spec)
    storage = GatedStorage(f"sqlite:///{tmp_path / 'gated.db'}")
    loop_thread = threading.get_ident()
    ticks = 0

    async def open_gate() -> None:
        nonlocal ticks
        while not storage.gate.is_set():
            ticks += 1
            await asyncio.sleep(0.01)
            if ticks >= 3:
                storage.gate.set()

    async with AsyncCAPIClient(storage, make_config(fake)) as client:
        opener = asyncio.create_task(open_gate())
        machine = await client.login(M1)
        await opener
    storage.close()
    assert machine.token
    assert not storage.timed_out and ticks >= 3
    assert storage.threads and loop_thread not in storage.threads


@pytest.mark.anyio
async def test_backoff_is_awaited_not_slept(
    tmp_path: Path, capi_spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    blocking_sleeps: list[float] = []
    real_sleep = time.sleep

    def watched_sleep(seconds: float) -> None:
        if threading.get_ident() == loop_thread:
            blocking_sleeps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", watched_sleep)
    fake = FakeCAPI(capi_spec=capi_spec)
    storage = SQLStorage(f"sqlite:///{tmp_path / 'backoff.db'}")
    config = make_config(fake, retry_delay=0.2, max_backoff=0.2)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    async with AsyncCAPIClient(storage, config) as client:
        await client.add_signals([create_signal("192.0.2.1", "crowdsecurity/ssh-bf", machine_id=M1)])
        await client.login(M1)
        # Retry-After makes the pause long enough to see the loop keep working during it
        fake.script("/v3/signals", (503, {"message": "busy"}, {"Retry-After": "0.3"}))
        task = asyncio.create_task(ticker())
        report = await client.send_signals()
        done.set()
        await task
    storage.close()
    assert report == 1 and fake.count("/v3/signals") == 2
    assert ticks >= 10  # the loop ran other tasks during the 0.3 s pause
    assert blocking_sleeps == []


@pytest.mark.anyio
async def test_concurrent_tasks_log_in_once(tmp_path: Path, capi_spec: dict[str, Any]) -> None:
    fake = FakeCAPI(capi_spec=capi_spec, login_delay=0.2)
    storage = SQLStorage(f"sqlite:///{tmp_path / 'tasks.db'}")
    async with AsyncCAPIClient(storage, make_config(fake)) as client:
        await client.register_machine(M1)
        machines = await asyncio.gather(*(client.login(M1) for _ in range(6)))
    storage.close()
    assert fake.count("/v3/watchers/login") == 1
    assert len({m.token for m in machines}) == 1


@pytest.mark.anyio
async def test_stream_is_parsed_off_the_loop(
    tmp_path: Path, capi_spec: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeCAPI(capi_spec=capi_spec)
    fake.stream = {
        "new": [
            {
                "scenario": "crowdsecurity/ssh-bf",
                "scope": "ip",
                "decisions": [{"value": f"10.0.{i // 250}.{i % 250}", "duration": "1h"} for i in range(5000)]
                + [{"value": "bogus", "duration": "1h"}],
            }
        ]
    }
    storage = SQLStorage(f"sqlite:///{tmp_path / 'stream.db'}")
    loop_thread = threading.get_ident()
    with caplog.at_level("WARNING", logger="cscapi"):
        async with AsyncCAPIClient(storage, make_config(fake)) as client:
            stream = await client.get_decisions(M1)
    storage.close()
    assert len(stream.new) == 5000 and stream.skipped == 1
    (skip,) = [r for r in caplog.records if "Skipped" in r.getMessage()]
    assert skip.thread != loop_thread  # the parser ran in a worker thread
