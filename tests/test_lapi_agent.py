"""``cscapi run`` on a LAPI source: decisions pulled from the real CrowdSec engine at the LAPI cadence (10 s, no CAPI
minimum), signals still pushed to CAPI when a machine is registered, a LAPI failure retried soon."""

from __future__ import annotations

import json
from typing import Any

import pytest

import test_cli_support as support
from cscapi.agent import Agent, AgentConfig
from cscapi.errors import ConfigurationError
from cscapi.lapi import LapiClient
from cscapi.remediation import RemediationEngine
from test_cli_support import CliEnv, unreachable_url

cli_env = support.cli_env
emulator = support.emulator


@pytest.fixture
def lapi_env(cli_env: CliEnv, lapi: Any, lapi_bouncer_key: str, monkeypatch: pytest.MonkeyPatch) -> CliEnv:
    monkeypatch.setenv("CSCAPI_SOURCE", "lapi")
    monkeypatch.setenv("CSCAPI_LAPI_URL", lapi.base_url)
    monkeypatch.setenv("CSCAPI_LAPI_API_KEY", lapi_bouncer_key)
    return cli_env


def test_run_once_on_lapi_without_a_capi_machine_refreshes_only(lapi_env: CliEnv, lapi: Any) -> None:
    lapi.add_decision(ip="192.0.2.20", duration="1h")
    result = lapi_env.invoke(["run", "--once", "--json"])
    assert result.exit_code == 0, result.output
    health = json.loads(result.stdout)
    assert health["jobs"]["refresh"]["last_result"]["new"] == 1
    assert health["jobs"]["refresh"]["last_error"] is None
    assert "metrics" not in health["jobs"]  # no CAPI machine: nothing to push metrics for
    assert "no CAPI machine is registered: nothing is pushed to CAPI" in result.stderr
    rows = json.loads(lapi_env.invoke(["decisions", "check", "192.0.2.20", "--json"]).stdout)
    assert (rows[0]["remediation"], rows[0]["origin"]) == ("ban", "cscli")
    # a second run at once is not refused by CAPI's 1 h 30 guard: a delta pull
    lapi.delete_decisions(ip="192.0.2.20")
    health = json.loads(lapi_env.invoke(["run", "--once", "--json"]).stdout)
    assert health["jobs"]["refresh"]["last_result"]["deleted"] == 1


def test_run_once_on_lapi_pushes_signals_to_capi(
    lapi_env: CliEnv, lapi: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CSCAPI_TARGET", emulator.base_url)
    monkeypatch.setenv("CSCAPI_SCENARIOS", "crowdsecurity/ssh-bf")
    machine_id = json.loads(lapi_env.invoke(["machines", "register", "--json"]).stdout)["machine_id"]
    lapi_env.invoke(["signals", "add", "--ip", "203.0.113.67", "--scenario", "crowdsecurity/ssh-bf"])
    lapi.add_decision(ip="192.0.2.21", duration="1h")
    result = lapi_env.invoke(["run", "--once", "--json"])
    assert result.exit_code == 0, result.output
    health = json.loads(result.stdout)
    assert health["jobs"]["push"]["last_result"]["sent"] == 1
    assert health["jobs"]["refresh"]["last_result"]["decisions"] == 1  # the LAPI's one, not CAPI's community list
    assert {r["signal"]["source"]["value"] for r in emulator.admin.signals(machine_id=machine_id)} == {"203.0.113.67"}


def test_lapi_cadence_and_a_failed_pull_retried_soon(lapi: Any, lapi_bouncer_key: str) -> None:
    with pytest.raises(ConfigurationError):
        AgentConfig(refresh_interval=10, refresh_jitter=0)  # CAPI's source: 1 h 30 minimum
    config = AgentConfig(refresh_interval=10, refresh_jitter=0, min_refresh_interval=0, push_metrics=False)
    with pytest.raises(ConfigurationError):
        AgentConfig(refresh_interval=1, refresh_jitter=0.5, min_refresh_interval=0)
    clock = [1000.0]
    dead = LapiClient(unreachable_url(), api_key=lapi_bouncer_key, max_retries=0)
    with RemediationEngine(dead, store="memory://") as engine:
        agent = Agent(None, engine, config=config, machine_id="", clock=lambda: clock[0])
        assert agent.next_refresh_delay() == 10
        agent._run_job(agent.jobs["refresh"])
        job = agent.jobs["refresh"]
        assert job.failures == 1 and job.last_error
        assert job.due - clock[0] == 10  # the LAPI cadence, not CAPI's 5 min back-off
        agent._run_job(job)
        assert job.failures == 2 and job.due - clock[0] == 20
    dead.close()
    live = LapiClient(lapi.base_url, api_key=lapi_bouncer_key)
    lapi.add_decision(ip="192.0.2.22", duration="1h")
    with RemediationEngine(live, store="memory://") as engine:
        agent = Agent(None, engine, config=config, machine_id="", clock=lambda: clock[0])
        agent._run_job(agent.jobs["refresh"])
        assert agent.jobs["refresh"].last_result["new"] == 1 and agent.jobs["refresh"].due - clock[0] == 10
        assert engine.get_ip_remediation("192.0.2.22").remediation == "ban"
    live.close()
