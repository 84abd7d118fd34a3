"""The agent's and the flows' log lines read as English for a count of one ("pushed 1 signal in 1 batch"), through
the one plural helper the CLI uses too; the real agent against the emulator."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cscapi.agent import Agent
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit
from cscapi.signals import create_signal
from cscapi.sql_storage import SQLStorage

SCENARIO = "crowdsecurity/ssh-bf"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[CAPIClient]:
    config = EmulatorConfig(seed=5, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu:
        storage = SQLStorage(f"sqlite:///{tmp_path / 'q.db'}")
        with CAPIClient(storage, CAPIClientConfig(scenarios=[SCENARIO], base_url=emu.base_url, max_retries=0)) as c:
            yield c
        storage.close()


def test_counts_of_one_are_singular(client: CAPIClient, caplog: pytest.LogCaptureFixture) -> None:
    machine_id = client.register_machine().machine_id
    client.add_signals([create_signal("203.0.113.9", SCENARIO, None, machine_id)])
    agent = Agent(client, None, machine_id=machine_id)
    with caplog.at_level(logging.INFO):
        assert agent.push_once()["sent"] == 1
        agent.config.keep_sent = 0
        assert agent.prune_once() == {"pruned": 1}
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "pushed 1 signal in 1 batch" in text
    assert "send_signals: 1 sent, 0 quarantined, 1 POST, 0 failing machines." in text
    assert "pruned 1 signal sent before" in text
    assert not re.search(r"\b1 (signals|batches|POSTs|machines|lists|decisions|actions)\b", text), text
