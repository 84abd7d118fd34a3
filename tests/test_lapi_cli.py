"""The ``cscapi`` command on a LAPI source (``--source lapi``, ``[source]``), through click's runner, against the real
CrowdSec engine of tests/lapi_support.py: refresh/check/stats, ``lapi status``, settings, masking, faults."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import test_cli_support as support
from test_cli_support import CliEnv, assert_user_error, unreachable_url

cli_env = support.cli_env


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else {}


@pytest.fixture
def lapi_env(cli_env: CliEnv, lapi: Any, lapi_bouncer_key: str, monkeypatch: pytest.MonkeyPatch) -> CliEnv:
    """``cli_env`` on the private LAPI through the environment (no machine registered, no scenarios)."""
    monkeypatch.setenv("CSCAPI_LAPI_URL", lapi.base_url)
    monkeypatch.setenv("CSCAPI_LAPI_API_KEY", lapi_bouncer_key)
    return cli_env


def test_refresh_then_check_sees_a_cscli_ban(lapi_env: CliEnv, lapi: Any) -> None:
    lapi.add_decision(ip="192.0.2.10", duration="1h", reason="cli-test")
    lapi.add_decision(range="198.51.100.0/24", type="captcha", duration="1h")
    report = ok(lapi_env.invoke(["--source", "lapi", "decisions", "refresh", "--json"]))
    assert report["new"] == 2 and report["startup"] is True
    rows = ok(
        lapi_env.invoke(
            ["--source", "lapi", "decisions", "check", "192.0.2.10", "198.51.100.7", "203.0.113.1", "--json"]
        )
    )
    assert [(r["remediation"], r["origin"]) for r in rows] == [
        ("ban", "cscli"),
        ("captcha", "cscli"),
        ("bypass", "clean"),
    ]
    # no CAPI cadence guard: a second refresh at once is a delta pull that sees a deletion
    lapi.delete_decisions(ip="192.0.2.10")
    report = ok(lapi_env.invoke(["--source", "lapi", "decisions", "refresh", "--json"]))
    assert report["startup"] is False and report["deleted"] == 1
    rows = ok(lapi_env.invoke(["--source", "lapi", "decisions", "check", "192.0.2.10", "--json"]))
    assert rows[0]["remediation"] == "bypass"
    stats = ok(lapi_env.invoke(["--source", "lapi", "decisions", "stats", "--json"]))
    assert stats["by_origin"] == {"cscli": 1} and stats["by_type"] == {"captcha": 1}
    human = lapi_env.invoke(["--source", "lapi", "decisions", "refresh"])
    assert human.exit_code == 0 and "LAPI decisions" in human.stdout and "community" not in human.stdout
    human = lapi_env.invoke(["--source", "lapi", "decisions", "stats"])
    assert human.exit_code == 0 and "LAPI stream pulled" in human.stdout
    shown = lapi_env.invoke(["--source", "lapi", "config", "show"])
    assert f"from the LAPI at {lapi.base_url} (stream mode)" in shown.stdout


def test_source_from_the_config_file_section(lapi_env: CliEnv, lapi: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSCAPI_LAPI_URL")
    lapi_env.config_path.parent.mkdir(parents=True)
    lapi_env.config_path.write_text(
        f'[source]\nkind = "lapi"\nlapi_url = "{lapi.base_url}"\nmode = "stream"\nrefresh_interval = 15\n'
    )
    lapi.add_decision(ip="192.0.2.11", duration="1h")
    assert ok(lapi_env.invoke(["decisions", "refresh", "--json"]))["new"] == 1
    shown = ok(lapi_env.invoke(["config", "show", "--json"]))["settings"]
    assert shown["source"] == {"value": "lapi", "source": f"file {lapi_env.config_path}"}
    assert shown["lapi_refresh_interval"]["value"] == 15
    assert shown["lapi_mode"]["value"] == "stream"
    # the key is masked in every view, and the env var is named as its source
    key = lapi.add_bouncer()
    monkeypatch.setenv("CSCAPI_LAPI_API_KEY", key)
    result = lapi_env.invoke(["config", "show", "--json"])
    assert key not in result.output
    assert ok(result)["settings"]["lapi_api_key"] == {"value": "****" + key[-2:], "source": "env CSCAPI_LAPI_API_KEY"}
    table = lapi_env.invoke(["config", "show"])
    assert table.exit_code == 0 and key not in table.output and "lapi_api_key" in table.output


def test_bad_source_settings_are_usage_errors(cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_user_error(cli_env.invoke(["--source", "lapi", "decisions", "refresh"]), 2, "no LAPI credentials")
    monkeypatch.setenv("CSCAPI_SOURCE", "local")
    assert_user_error(cli_env.invoke(["config", "show"]), 2, "source must be capi or lapi", "CSCAPI_SOURCE")
    monkeypatch.setenv("CSCAPI_SOURCE", "lapi")
    monkeypatch.setenv("CSCAPI_LAPI_MODE", "push")
    assert_user_error(cli_env.invoke(["config", "show"]), 2, "stream or live")
    monkeypatch.setenv("CSCAPI_LAPI_MODE", "stream")
    monkeypatch.setenv("CSCAPI_LAPI_URL", "ftp://x")
    assert_user_error(cli_env.invoke(["config", "show"]), 2, "lapi_url")
    monkeypatch.setenv("CSCAPI_LAPI_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("CSCAPI_LAPI_CERT", "/nonexistent/cert.pem")
    assert_user_error(cli_env.invoke(["decisions", "refresh"]), 2, "lapi_cert and lapi_key go together")
    monkeypatch.setenv("CSCAPI_LAPI_KEY", "/nonexistent/key.pem")
    assert_user_error(cli_env.invoke(["decisions", "refresh"]), 2, "not a readable file")
    cli_env.config_path.parent.mkdir(parents=True)
    cli_env.config_path.write_text("[source]\nrefresh_interval = 0\n")
    assert_user_error(cli_env.invoke(["config", "show"]), 2, "lapi_refresh_interval")


def test_lapi_status_with_a_good_and_a_bad_key(lapi_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    report = ok(lapi_env.invoke(["--source", "lapi", "lapi", "status", "--json"]))
    assert report["bouncer"] == {"ok": True, "auth": "api_key", "error": None}
    human = lapi_env.invoke(["--source", "lapi", "lapi", "status"])
    assert human.exit_code == 0 and "accepted the API key" in human.stdout
    bad = "not-a-real-bouncer-key-0123456789"
    monkeypatch.setenv("CSCAPI_LAPI_API_KEY", bad)
    result = lapi_env.invoke(["--source", "lapi", "lapi", "status"])
    assert_user_error(result, 5, "cscli bouncers")
    assert bad not in result.output
    monkeypatch.setenv("CSCAPI_LAPI_URL", unreachable_url())
    result = lapi_env.invoke(["--source", "lapi", "lapi", "status"])
    error = assert_user_error(result, 3, "Local API")
    assert "emulator" not in error  # the LAPI's own advice, not the CAPI one


def test_refresh_from_a_dead_lapi_keeps_the_cached_decisions(
    lapi_env: CliEnv, lapi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lapi.add_decision(ip="192.0.2.12", duration="1h")
    ok(lapi_env.invoke(["--source", "lapi", "decisions", "refresh", "--json"]))
    monkeypatch.setenv("CSCAPI_LAPI_URL", unreachable_url())
    assert_user_error(lapi_env.invoke(["--source", "lapi", "decisions", "refresh"]), 3, "Local API")
    rows = ok(lapi_env.invoke(["--source", "lapi", "decisions", "check", "192.0.2.12", "--json"]))
    assert rows[0]["remediation"] == "ban"


def test_live_mode_check_asks_the_lapi(lapi_env: CliEnv, lapi: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCAPI_LAPI_MODE", "live")
    lapi.add_decision(ip="192.0.2.13", duration="1h")
    rows = ok(lapi_env.invoke(["--source", "lapi", "decisions", "check", "192.0.2.13", "203.0.113.2", "--json"]))
    assert [(r["remediation"], r["origin"]) for r in rows] == [("ban", "cscli"), ("bypass", "clean")]
    assert_user_error(lapi_env.invoke(["--source", "lapi", "decisions", "refresh"]), 2, "live mode")
    monkeypatch.setenv("CSCAPI_LAPI_URL", unreachable_url())
    result = lapi_env.invoke(["--source", "lapi", "decisions", "check", "198.51.100.99", "--json"])
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)[0]["origin"] == "lapi-unavailable"


def _expiry(store: str, ip: str) -> float:
    """The expiry the decision store holds for ``ip`` (read back by a fresh engine: through the codec)."""
    from cscapi.remediation import RemediationEngine

    with RemediationEngine(None, store=store) as engine:
        _version, state = engine.store.load()
    return float(max((group[ip] for group in state.capi.values() if ip in group), default=0.0))


def test_two_cscli_decisions_on_one_ip_deleting_one_leaves_the_other(lapi_env: CliEnv, lapi: Any) -> None:
    """The real 1.4.6 engine sends one decision per value (the longest); deleting the shorter one changes nothing."""
    ip = "192.0.2.155"  # used by no other test: the LAPI is shared by the session
    refresh = ["--source", "lapi", "decisions", "refresh", "--json"]
    check = ["--source", "lapi", "decisions", "check", ip, "--json"]
    lapi.add_decision(ip=ip, duration="4h", reason="dup-test")
    lapi.add_decision(ip=ip, duration="1h", reason="dup-test")  # the same origin, scenario, type and value
    ok(lapi_env.invoke(refresh))
    store = f"sqlite:///{lapi_env.data_dir / 'decisions.db'}"
    assert _expiry(store, ip) > time.time() + 3 * 3600  # the longest is enforced
    ids = sorted(d["id"] for alert in lapi.alerts() for d in alert.get("decisions") or [] if d["value"] == ip)
    assert len(ids) == 2, ids
    lapi.delete_decisions(decision_id=ids[1])  # the 1 h one (added second)
    ok(lapi_env.invoke(refresh))
    assert ok(lapi_env.invoke(check))[0]["remediation"] == "ban"
    lapi.delete_decisions(ip=ip)
    ok(lapi_env.invoke(refresh))
    assert ok(lapi_env.invoke(check))[0]["remediation"] == "bypass"


DUP = {"origin": "cscli", "scenario": "dup-test", "scope": "Ip", "type": "ban", "value": "192.0.2.31"}


def test_a_lapi_sending_every_decision_on_one_value_deleting_one_leaves_the_other(tmp_path: Any) -> None:
    """A LAPI that sends several decisions on one value (same origin, scenario, type): the longest is enforced, a
    deletion naming one id leaves the others, the last one's deletion lifts the ban; kept across processes (the
    state's codec) and across pulls."""
    from cscapi.lapi import LapiClient
    from cscapi.remediation import RemediationEngine
    from hostile_server import HostileServer

    answers = [
        {"new": [{**DUP, "id": 1, "duration": "4h"}, {**DUP, "id": 2, "duration": "1h"}], "deleted": None},
        {"new": [{**DUP, "id": 3, "duration": "2h"}], "deleted": [{**DUP, "id": 1, "duration": "-1s"}]},
        {"new": None, "deleted": [{**DUP, "id": 9, "duration": "-1s"}]},  # a decision this state never held
        {"new": None, "deleted": [{**DUP, "id": 3, "duration": "-1s"}]},
        {"new": None, "deleted": [{**DUP, "id": 2, "duration": "-1s"}]},
    ]
    store = f"sqlite:///{tmp_path / 'decisions.db'}"
    seen: list[tuple[str, float]] = []
    with HostileServer() as srv:
        srv.route("/v1/decisions/stream", lambda c, r: c.json(200, answers.pop(0)))
        with LapiClient(srv.url, api_key="k") as client:
            for _ in range(5):
                with RemediationEngine(client, store=store) as engine:  # a fresh engine: the state is decoded
                    engine.refresh_decisions()
                    seen.append((engine.get_ip_remediation("192.0.2.31").remediation, _expiry(store, DUP["value"])))
    now = time.time()
    assert seen[0][0] == "ban" and seen[0][1] > now + 3.5 * 3600  # the 4 h one, not the last in the stream
    assert seen[1][0] == "ban" and now + 1.5 * 3600 < seen[1][1] < now + 2.5 * 3600  # 4 h gone: the 2 h one
    assert seen[2] == seen[1]
    assert seen[3][0] == "ban" and seen[3][1] < now + 1.2 * 3600  # 2 h gone: the 1 h one stands
    assert seen[4][0] == "bypass"


def test_lapi_status_checks_the_watcher_login(lapi_env: CliEnv, lapi: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    machine, password = lapi.add_machine("cli-status-watcher", "a-good-watcher-password-123")
    monkeypatch.setenv("CSCAPI_LAPI_MACHINE_ID", machine)
    monkeypatch.setenv("CSCAPI_LAPI_PASSWORD", password)
    report = ok(lapi_env.invoke(["--source", "lapi", "lapi", "status", "--json"]))
    assert report["watcher"] == {"ok": True, "machine_id": machine, "error": None}
    assert "logged in" in lapi_env.invoke(["--source", "lapi", "lapi", "status"]).stdout
    wrong = "a-wrong-watcher-password-456"
    monkeypatch.setenv("CSCAPI_LAPI_PASSWORD", wrong)
    result = lapi_env.invoke(["--source", "lapi", "lapi", "status"])
    assert_user_error(result, 5)
    assert wrong not in result.output and "✓ bouncer" in result.stdout
    monkeypatch.delenv("CSCAPI_LAPI_MACHINE_ID")
    assert_user_error(lapi_env.invoke(["--source", "lapi", "lapi", "status"]), 2, "go together")
    monkeypatch.delenv("CSCAPI_LAPI_PASSWORD")
    report = ok(lapi_env.invoke(["--source", "lapi", "lapi", "status", "--json"]))
    assert report["watcher"] is None


def test_tls_client_certificate_through_the_settings(cli_env: CliEnv, crowdsec_lapi_tls: Any) -> None:
    lapi, certs = crowdsec_lapi_tls, crowdsec_lapi_tls.certs
    lapi.delete_decisions(everything=True)
    lapi.add_decision(ip="192.0.2.40", type="captcha", duration="1h")
    env = {
        "CSCAPI_SOURCE": "lapi",
        "CSCAPI_LAPI_URL": lapi.base_url,
        "CSCAPI_LAPI_CERT": str(certs.bouncer),
        "CSCAPI_LAPI_KEY": str(certs.bouncer_key),
        "CSCAPI_LAPI_CA": str(certs.ca),
    }
    report = ok(cli_env.invoke(["lapi", "status", "--json"], env=env))
    assert report["bouncer"] == {"ok": True, "auth": "tls", "error": None}
    assert ok(cli_env.invoke(["decisions", "refresh", "--json"], env=env))["new"] == 1
    rows = ok(cli_env.invoke(["decisions", "check", "192.0.2.40", "--json"], env=env))
    assert rows[0]["remediation"] == "captcha"
    stranger = {**env, "CSCAPI_LAPI_CERT": str(certs.stranger), "CSCAPI_LAPI_KEY": str(certs.stranger_key)}
    assert_user_error(cli_env.invoke(["lapi", "status"], env=stranger), 5)


def test_cscli_unban_of_an_ip_with_decisions_of_two_scenarios(lapi_env: CliEnv, lapi: Any) -> None:
    """1.4.6 sends the longest decision (scenario x-b) and, once both are deleted, a deletion naming the other one
    (x-a): the IP must be unbanned all the same; a captcha deletion never lifts a ban on the same IP."""
    refresh = ["--source", "lapi", "decisions", "refresh", "--json"]
    lapi.add_decision(ip="192.0.2.32", duration="1h", reason="x-a")
    lapi.add_decision(ip="192.0.2.32", duration="4h", reason="x-b")
    lapi.add_decision(ip="192.0.2.33", duration="2h", reason="y", type="captcha")
    lapi.add_decision(ip="192.0.2.33", duration="1h", reason="y")
    ok(lapi_env.invoke(refresh))
    check = ["--source", "lapi", "decisions", "check", "192.0.2.32", "192.0.2.33", "--json"]
    assert [r["remediation"] for r in ok(lapi_env.invoke(check))] == ["ban", "ban"]
    lapi.delete_decisions(ip="192.0.2.32")  # the admin lifts the ban
    lapi.delete_decisions(ip="192.0.2.33", type="captcha")
    assert ok(lapi_env.invoke(refresh))["deleted"] >= 2
    assert [r["remediation"] for r in ok(lapi_env.invoke(check))] == ["bypass", "ban"]
    stats = ok(lapi_env.invoke(["--source", "lapi", "decisions", "stats", "--json"]))
    assert stats["by_type"] == {"ban": 1}
