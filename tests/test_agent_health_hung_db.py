"""The health endpoint answers while the database hangs: it serves the queue counts the jobs last read, never a
storage read of its own in its one thread. A job stuck on the database shows as running past ``stall_after``.

A real hang: another PostgreSQL session holds an ACCESS EXCLUSIVE lock on the signals table, so every read of the
queue (the agent's push, a count) waits on it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from cscapi.agent import Agent, AgentConfig
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit
from cscapi.signals import create_signal
from cscapi.sql_storage import SQLStorage


@pytest.fixture
def emu() -> Iterator[EmbeddedEmulator]:
    config = EmulatorConfig(seed=6, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emulator:
        yield emulator


def _get(port: int) -> tuple[int, dict[str, Any]]:
    """One GET /health with a 5 s bound: (status, report)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503: degraded, with the report as the body
        return exc.code, json.loads(exc.read())


@pytest.mark.postgres
def test_health_answers_while_the_database_hangs(emu: EmbeddedEmulator, postgres_url: str, free_tcp_port: int) -> None:
    from sqlalchemy import create_engine, text

    storage = SQLStorage(postgres_url)
    client = CAPIClient(
        storage, CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=emu.base_url, max_retries=0)
    )
    machine_id = client.register_machine().machine_id
    client.add_signals([create_signal("203.0.113.20", "crowdsecurity/ssh-bf", None, machine_id)])
    config = AgentConfig(health_port=free_tcp_port, push_metrics=False, stall_after=1.0, stop_timeout=5)
    agent = Agent(client, None, machine_id=machine_id, config=config)
    thread = threading.Thread(target=agent.run, name="test-agent", daemon=True)
    locker = create_engine(postgres_url)
    held = None
    try:
        thread.start()
        deadline = time.monotonic() + 60
        while agent.jobs["push"].runs < 1 or agent.running_job is not None:
            assert time.monotonic() < deadline, "the first push never ended"
            time.sleep(0.05)
        status, report = _get(free_tcp_port)
        assert status == 200 and report["queue"]["sent"] == 1  # counted by the push job

        held = locker.connect()
        transaction = held.begin()
        held.execute(text("LOCK TABLE signals IN ACCESS EXCLUSIVE MODE"))  # the database now hangs for the agent
        agent.jobs["push"].due = agent.clock()  # push now: the job blocks on the lock
        while agent.running_job != "push":
            assert time.monotonic() < deadline, "the push never started"
            time.sleep(0.05)
        seen = None
        while seen is None or seen[0] != 503:
            assert time.monotonic() < deadline, f"health never said the push was stuck: {seen}"
            started = time.monotonic()
            seen = _get(free_tcp_port)  # a hang here (the old count in the endpoint's thread) times out
            assert time.monotonic() - started < 5
        status, report = seen
        assert report["status"] == "degraded" and any("push running for" in r for r in report["reasons"])
        assert report["queue"]["sent"] == 1  # the last count, not a read that would hang
        transaction.rollback()
    finally:
        if held is not None:
            held.close()
        agent.stop()
        thread.join(timeout=config.stop_timeout + 10)
        client.close()
        storage.close()
        locker.dispose()
    assert not thread.is_alive(), "the agent did not stop"
