"""docs/deployment.md, for real: PostgreSQL signal storage + Redis decision store, one agent, workers on both."""

from __future__ import annotations

import json

import pytest

import test_cli_support as support
from test_cli_support import CliEnv

cli_env = support.cli_env
emulator = support.emulator
capi_env = support.capi_env


@pytest.mark.postgres
@pytest.mark.redis
def test_agent_and_workers_share_postgres_and_redis(
    capi_env: CliEnv, emulator, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.remediation import RemediationEngine
    from cscapi.sql_storage import SQLStorage
    from cscapi.utils import create_signal

    env = {
        "CSCAPI_STORAGE": postgres_url,
        "CSCAPI_DECISION_STORE": redis_url,
        "CSCAPI_DECISION_KEY_PREFIX": redis_prefix,
    }
    machine_id = json.loads(capi_env.invoke(["machines", "register", "--json"], env=env).stdout)["machine_id"]

    # a worker queues a signal under the agent's machine, without talking to CAPI
    storage = SQLStorage(postgres_url)
    worker_client = CAPIClient(
        storage, CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=emulator.base_url)
    )
    worker_client.add_signals([create_signal("203.0.113.150", "crowdsecurity/ssh-bf", None, machine_id)])
    emulator.admin.add_decision("198.51.100.150", "crowdsecurity/ssh-bf", "24h")
    worker = RemediationEngine(None, store=redis_url, key_prefix=redis_prefix, sync_interval_ms=0)
    try:
        result = capi_env.invoke(["run", "--once", "--json"], env=env)
        assert result.exit_code == 0, result.output
        health = json.loads(result.stdout)
        assert health["jobs"]["push"]["last_result"]["sent"] == 1
        received = {r["signal"]["source"]["value"] for r in emulator.admin.signals(machine_id=machine_id)}
        assert "203.0.113.150" in received
        # the worker's engine picks the agent's refresh up from Redis, under the shared prefix
        assert worker.sync() is True
        assert worker.get_ip_remediation("198.51.100.150").remediation == "ban"
        # and the CLI reads the same store
        check = json.loads(capi_env.invoke(["decisions", "check", "198.51.100.150", "--json"], env=env).stdout)
        assert check[0]["origin"] == "CAPI"
        status = json.loads(capi_env.invoke(["machines", "status", "--json"], env=env).stdout)
        assert status["signals"]["sent"] == 1
    finally:
        worker.close()
        worker_client.close()
        storage.close()
