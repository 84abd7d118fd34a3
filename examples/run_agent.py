"""Quick start 3: run the agent. It pushes queued signals, refreshes decisions and pushes metrics on CAPI's cadence.

In production, run `cscapi run` (a service); this shows the same `cscapi.agent.Agent` embedded in a Python program,
stopped after a few seconds.

Run:  python examples/run_agent.py                (against an embedded CAPI emulator)
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

from _capi import arguments, capi_url

from cscapi.agent import Agent, AgentConfig, AgentLock
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.remediation import RemediationEngine
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal


def main() -> None:
    args = arguments(__doc__ or "")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("cscapi").setLevel(logging.WARNING)  # the library's own lines; the agent logs one per action
    logging.getLogger("cscapi.agent").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    scenarios = ["crowdsecurity/ssh-bf"]  # CAPI tailors the community list to the scenarios a machine declares
    # (an embedded emulator generates its list from these scenarios)
    with (
        capi_url(args.base_url, community_scenarios=scenarios) as (base_url, _emulator),
        tempfile.TemporaryDirectory() as tmp,
    ):
        uri = f"sqlite:///{Path(tmp) / 'cscapi.db'}"
        storage = SQLStorage(uri)
        client = CAPIClient(storage, CAPIClientConfig(scenarios=scenarios, base_url=base_url))
        engine = RemediationEngine(client, store=f"sqlite:///{Path(tmp) / 'decisions.db'}")
        machine_id = client.default_machine_id()
        # Your application queues signals whenever it detects something; the agent ships them.
        client.add_signals([create_signal("203.0.113.45", "crowdsecurity/ssh-bf", None, machine_id)])
        agent = Agent(
            client,
            engine,
            machine_id=machine_id,
            config=AgentConfig(push_interval=10, refresh_interval=7200, refresh_jitter=300),
            lock=AgentLock(storage, uri),  # one agent per storage
        )
        threading.Timer(2.0, agent.stop).start()  # in a service: agent.stop() from a SIGTERM handler
        agent.run()  # returns after stop(), once the batch in flight is done
        health = agent.health()
        print(f"pushed {health['queue']['sent']} signal(s); decisions cached: {engine.index.decisions}")
        engine.close()
        client.close()
        storage.close()


if __name__ == "__main__":
    main()
