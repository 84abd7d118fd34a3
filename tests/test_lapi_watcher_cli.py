"""The signal destination in the CLI and the agent: `cscapi signals add --to capi|lapi|both`, the `[signals]
destinations` setting, and `cscapi run` pushing the lapi queue as alerts to the real CrowdSec engine."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

import test_cli_support as support
from cscapi.models import QueueCounts
from cscapi.sql_storage import SQLStorage
from test_cli_support import CliEnv, assert_user_error

cli_env = support.cli_env
emulator = support.emulator
capi_env = support.capi_env


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else {}


def _counts(env: CliEnv) -> tuple[QueueCounts, QueueCounts]:
    with SQLStorage(f"sqlite:///{env.data_dir / 'cscapi.db'}") as storage:
        return storage.count_signals(), storage.count_signals(destination="lapi")


def test_signals_add_to_both_then_run_pushes_each_destination_once(
    capi_env: CliEnv, emulator: Any, lapi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    monkeypatch.setenv("CSCAPI_LAPI_URL", lapi.base_url)
    monkeypatch.setenv("CSCAPI_LAPI_MACHINE_ID", machine)
    monkeypatch.setenv("CSCAPI_LAPI_PASSWORD", password)
    machine_id = ok(capi_env.invoke(["machines", "register", "--json"]))["machine_id"]
    add = ["signals", "add", "--ip", "203.0.113.67", "--scenario", "crowdsecurity/ssh-bf", "--decision", "ban"]
    report = ok(capi_env.invoke([*add, "--duration", "1h", "--to", "both", "--json"]))
    assert report["queued"] == 2 and report["destinations"] == ["capi", "lapi"]
    assert report["lapi_queue"]["queued"] == 1 and report["queue"]["queued"] == 1
    assert _counts(capi_env) == (QueueCounts(queued=1), QueueCounts(queued=1))

    monkeypatch.setenv("CSCAPI_SIGNAL_DESTINATIONS", "capi,lapi")
    health = ok(capi_env.invoke(["run", "--once", "--no-refresh", "--no-metrics", "--json"]))
    assert health["jobs"]["push"]["last_result"]["sent"] == 1
    assert health["jobs"]["lapi_push"]["last_result"]["sent"] == 1
    assert _counts(capi_env) == (QueueCounts(sent=1), QueueCounts(sent=1))
    assert {r["signal"]["source"]["value"] for r in emulator.admin.signals(machine_id=machine_id)} == {"203.0.113.67"}
    alerts = [a for a in lapi.alerts() if a["source"]["value"] == "203.0.113.67"]
    assert len(alerts) == 1 and alerts[0]["scenario"] == "crowdsecurity/ssh-bf"
    assert password not in health.__repr__()


def test_destinations_setting_and_flag_are_checked(capi_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    capi_env.invoke(["machines", "register"])
    monkeypatch.setenv("CSCAPI_SIGNAL_DESTINATIONS", "lapi")
    add = ["signals", "add", "--ip", "203.0.113.68", "--scenario", "crowdsecurity/ssh-bf", "--json"]
    report = ok(capi_env.invoke(add))  # the setting: lapi only
    assert report["destinations"] == ["lapi"] and report["queue"]["queued"] == 0
    assert _counts(capi_env) == (QueueCounts(), QueueCounts(queued=1))
    assert ok(capi_env.invoke([*add, "--to", "capi"]))["destinations"] == ["capi"]  # the flag wins
    monkeypatch.setenv("CSCAPI_SIGNAL_DESTINATIONS", "elsewhere")
    assert_user_error(capi_env.invoke(add), 2, "destination")
    bad = capi_env.invoke([*add, "--to", "nowhere"])
    assert bad.exit_code == 2 and "nowhere" in bad.output


def test_run_with_lapi_destination_needs_watcher_credentials(capi_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    capi_env.invoke(["machines", "register"])
    monkeypatch.setenv("CSCAPI_SIGNAL_DESTINATIONS", "both")
    monkeypatch.setenv("CSCAPI_LAPI_URL", "http://127.0.0.1:9/")
    assert_user_error(capi_env.invoke(["run", "--once", "--no-refresh"]), 2, "watcher credentials")


def test_signals_push_list_and_prune_to_lapi(capi_env: CliEnv, lapi: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cscapi signals push/list/prune --to lapi` work on the LAPI queue (they were CAPI's only), with the [source]
    watcher; `--to capi` (the default) leaves it alone."""
    machine, password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    monkeypatch.setenv("CSCAPI_LAPI_URL", lapi.base_url)
    monkeypatch.setenv("CSCAPI_LAPI_MACHINE_ID", machine)
    monkeypatch.setenv("CSCAPI_LAPI_PASSWORD", password)
    capi_env.invoke(["machines", "register"])  # `signals add` asks for one (the signal's machine_id)
    add = ["signals", "add", "--ip", "203.0.113.69", "--scenario", "crowdsecurity/ssh-bf", "--decision", "ban"]
    ok(capi_env.invoke([*add, "--to", "lapi", "--json"]))
    assert _counts(capi_env) == (QueueCounts(), QueueCounts(queued=1))
    assert ok(capi_env.invoke(["signals", "push", "--json"]))["sent"] == 0  # CAPI's queue: empty, LAPI's untouched
    assert _counts(capi_env)[1] == QueueCounts(queued=1)

    pushed = ok(capi_env.invoke(["signals", "push", "--to", "lapi", "--json"]))
    assert pushed["sent"] == 1 and pushed["queue"] == {"queued": 0, "sent": 1, "quarantined": 0}
    assert [a["scenario"] for a in lapi.alerts() if a["source"]["value"] == "203.0.113.69"] == ["crowdsecurity/ssh-bf"]
    assert password not in json.dumps(pushed)

    assert ok(capi_env.invoke(["signals", "list", "--to", "lapi", "--json"])) == []  # nothing quarantined
    assert capi_env.invoke(["signals", "list", "--to", "lapi", "--state", "queued"]).exit_code == 2
    assert ok(capi_env.invoke(["signals", "prune", "--to", "lapi", "--requeue-quarantined", "--json"]))["requeued"] == 0
    pruned = ok(capi_env.invoke(["signals", "prune", "--to", "lapi", "--sent", "--json"]))
    assert pruned["deleted"] == 1 and _counts(capi_env) == (QueueCounts(), QueueCounts())
    assert capi_env.invoke(["signals", "prune", "--to", "lapi", "--failing-machines"]).exit_code == 2


def test_signals_push_to_lapi_with_a_wrong_password_fails_and_keeps_the_queue(
    capi_env: CliEnv, lapi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine, _password = lapi.add_machine(f"w{secrets.token_hex(6)}")
    monkeypatch.setenv("CSCAPI_LAPI_URL", lapi.base_url)
    monkeypatch.setenv("CSCAPI_LAPI_MACHINE_ID", machine)
    monkeypatch.setenv("CSCAPI_LAPI_PASSWORD", "not-the-password")
    capi_env.invoke(["machines", "register"])
    add = ["signals", "add", "--ip", "203.0.113.70", "--scenario", "crowdsecurity/ssh-bf", "--to", "lapi"]
    ok(capi_env.invoke(add))
    result = capi_env.invoke(["signals", "push", "--to", "lapi"])
    assert result.exit_code != 0 and "not-the-password" not in result.output
    assert _counts(capi_env)[1] == QueueCounts(queued=1)
