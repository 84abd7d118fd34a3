"""A LOST decision store is pulled again at once, then not before CAPI's minimum between two pulls (1 h 30, from
``cscapi.limits``) by default: a flapping store never makes the agent pull more often than CAPI allows."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cscapi.agent import Agent, AgentConfig
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit
from cscapi.errors import DecisionStoreError
from cscapi.limits import MIN_REFRESH_INTERVAL
from cscapi.remediation import RemediationEngine
from cscapi.sql_storage import SQLStorage


@pytest.fixture
def client(tmp_path: Path) -> Iterator[CAPIClient]:
    config = EmulatorConfig(seed=4, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu:
        storage = SQLStorage(f"sqlite:///{tmp_path / 'q.db'}")
        options = CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=emu.base_url, max_retries=0)
        with CAPIClient(storage, options) as c:
            yield c
        storage.close()


def test_the_default_floor_is_capi_s_minimum() -> None:
    assert AgentConfig().repull_min_interval == MIN_REFRESH_INTERVAL


def test_a_flapping_store_is_pulled_at_once_then_not_before_capi_s_minimum(
    client: CAPIClient, redis_url: str, redis_prefix: str
) -> None:
    import redis

    machine_id = client.register_machine().machine_id
    engine = RemediationEngine(
        client, store=redis_url, key_prefix=redis_prefix, machine_id=machine_id, sync_interval_ms=50
    )
    agent = Agent(client, engine, machine_id=machine_id, config=AgentConfig(push_metrics=False))
    r = redis.Redis.from_url(redis_url)

    def lose() -> None:  # a Redis restarted without data, for this prefix only (never FLUSHDB: a shared server)
        keys = list(r.scan_iter(match=redis_prefix + "*"))
        if keys:
            r.delete(*keys)
        deadline = time.monotonic() + 30
        while not engine.store_lost:
            assert time.monotonic() < deadline, "the engine never noticed the loss"
            with contextlib.suppress(DecisionStoreError):  # how a lost store says so to a direct sync
                engine.sync()

    try:
        agent.refresh_once()
        lose()
        agent._check_lost_store()
        assert agent.repulls == 1  # the first re-pull is at once
        agent._last_repull -= 15 * 60 + 1  # as if it was 15 min ago: the old floor would pull again here
        agent._check_lost_store()
        assert agent.repulls == 1
        agent._last_repull -= MIN_REFRESH_INTERVAL - 15 * 60  # now CAPI's minimum ago
        agent._check_lost_store()
        assert agent.repulls == 2
    finally:
        r.close()
        engine.close()
