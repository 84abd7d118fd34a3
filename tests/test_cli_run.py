"""`cscapi run`: once through click's runner, and as a real process stopped by SIGTERM (graceful, exit 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import test_cli_support as support
from test_cli_support import CliEnv, assert_user_error, unreachable_url

cli_env = support.cli_env
emulator = support.emulator
capi_env = support.capi_env


def test_run_once_pushes_refreshes_and_reports(capi_env: CliEnv, emulator) -> None:
    machine_id = json.loads(capi_env.invoke(["machines", "register", "--json"]).stdout)["machine_id"]
    capi_env.invoke(["signals", "add", "--ip", "203.0.113.66", "--scenario", "crowdsecurity/ssh-bf"])
    result = capi_env.invoke(["run", "--once", "--json"])
    assert result.exit_code == 0, result.output
    health = json.loads(result.stdout)
    assert health["machine_id"] == machine_id
    assert health["jobs"]["push"]["last_result"]["sent"] == 1
    # seed 7: the community decisions of the scenarios the machine declared (the emulator tailors the list)
    assert health["jobs"]["refresh"]["last_result"]["decisions"] == 22
    assert "pushed 1 signal in 1 batch\n" in result.stderr and "refreshed decisions" in result.stderr
    assert {r["signal"]["source"]["value"] for r in emulator.admin.signals(machine_id=machine_id)} == {"203.0.113.66"}
    # the decisions it pulled are visible to the other commands (a shared SQLite decision store)
    value = emulator.admin.decisions()[0]["value"].split("/")[0]
    check = json.loads(capi_env.invoke(["decisions", "check", value, "--json"]).stdout)
    assert check[0]["remediation"] == "ban"


def test_run_refuses_bad_settings(capi_env: CliEnv) -> None:
    capi_env.invoke(["machines", "register"])
    assert_user_error(capi_env.invoke(["run", "--push-interval", "1"]), 2, "push_interval")
    assert_user_error(capi_env.invoke(["run", "--refresh-interval", "600"]), 2, "refresh_interval")
    assert_user_error(capi_env.invoke(["--decision-store", "memory://", "run", "--once"]), 2, "memory://")
    assert_user_error(capi_env.invoke(["run", "--stop-timeout", "0.5"]), 2, "--stop-timeout")
    result = capi_env.invoke(["run", "--once", "--no-refresh", "--no-metrics"])
    assert result.exit_code == 0, result.output


def test_run_without_machine_or_scenarios(cli_env: CliEnv, emulator) -> None:
    env = {"CSCAPI_TARGET": emulator.base_url}
    assert_user_error(cli_env.invoke(["run", "--once"], env=env), 2, "scenarios")
    env["CSCAPI_SCENARIOS"] = "crowdsecurity/ssh-bf"
    assert_user_error(cli_env.invoke(["run", "--once"], env=env), 2, "cscapi machines register")


def test_run_once_against_unreachable_capi_fails_cleanly(capi_env: CliEnv) -> None:
    capi_env.invoke(["machines", "register"])
    env = {"CSCAPI_TARGET": unreachable_url(), "CSCAPI_MAX_RETRIES": "0", "CSCAPI_TIMEOUT": "2"}
    result = capi_env.invoke(["run", "--once", "--no-refresh"], env=env)
    assert_user_error(result, 1, "metrics")
    assert " ERROR metrics failed: " in result.stderr  # the agent's own log line, timestamped


@pytest.mark.slow
def test_run_as_a_process_serves_health_and_stops_on_sigterm(capi_env: CliEnv, emulator, free_tcp_port: int) -> None:
    capi_env.invoke(["machines", "register"])
    capi_env.invoke(["signals", "add", "--ip", "203.0.113.77", "--scenario", "crowdsecurity/ssh-bf"])
    env = {**os.environ, "CSCAPI_HEALTH_PORT": str(free_tcp_port)}
    cscapi = Path(sys.executable).with_name("cscapi")
    proc = subprocess.Popen(
        [str(cscapi), "run", "--push-interval", "10"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free_tcp_port}/health", timeout=2) as response:
                    health = json.loads(response.read())
                if health["jobs"]["push"]["runs"] and health["jobs"]["refresh"]["runs"]:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert health is not None and health["status"] == "ok", health
        # a second agent on the same storage is refused
        second = subprocess.run(
            [str(cscapi), "run", "--once"], env=os.environ, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 7, second.stderr
        assert second.stderr.startswith("error: another agent holds")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "received SIGTERM: stopping" in err and "agent stopped" in err
    assert "pushed 1 signal in 1 batch\n" in err
    assert "Traceback" not in err


def _start_agent(env: dict[str, str]) -> subprocess.Popen[str]:
    cscapi = Path(sys.executable).with_name("cscapi")
    return subprocess.Popen(
        [str(cscapi), "run", "--no-refresh", "--no-metrics"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("signals_sent", [1, 2], ids=["graceful", "abandon"])
def test_sigterm_finishes_or_abandons_the_batch_in_flight(capi_env: CliEnv, emulator, signals_sent: int) -> None:
    """One SIGTERM: the slow push in flight completes, exit 0. Two: it is abandoned, exit 130, nothing lost."""
    capi_env.invoke(["machines", "register"])
    capi_env.invoke(["machines", "status", "--login"])  # a valid token: the agent's first request is the POST
    capi_env.invoke(["signals", "add", "--ip", "203.0.113.88", "--scenario", "crowdsecurity/ssh-bf"])
    emulator.admin.set_fault("signals", latency=3.0)
    proc = _start_agent(dict(os.environ))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "agent started" not in proc.stderr.readline():
            pass
        time.sleep(1.0)  # the POST is now waiting on the emulator's 3 s latency
        for _ in range(signals_sent):
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        _out, err = proc.communicate(timeout=30)
    finally:
        emulator.admin.clear_fault("signals")
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err
    rows = json.loads(capi_env.invoke(["signals", "list", "--json"]).stdout)
    if signals_sent == 1:
        assert proc.returncode == 0, err
        assert "finishing the push in flight" in err
        assert [r["state"] for r in rows] == ["sent"]
    else:
        assert proc.returncode == 130, err
        assert "abandoning the batch in flight" in err
        # abandoned: back in the queue (or still under its lease), never lost; the next push sends it
        assert [r["state"] for r in rows] == ["queued"]
        counts = json.loads(capi_env.invoke(["machines", "status", "--json"]).stdout)["signals"]
        assert counts["queued"] + counts["claimed"] == 1 and counts["sent"] == 0
        assert counts["claimed"] == 0  # its claim was given back on exit, not left to lapse after claim_lease


@pytest.mark.slow
def test_sigterm_exits_within_the_bound_when_capi_hangs(capi_env: CliEnv, free_tcp_port: int) -> None:
    """CAPI drips a byte a second: health turns 503 past --stall-after; one SIGTERM ends the agent within
    --stop-timeout, exit 0, the refresh abandoned and its decision-store lock released (not held for lock_ttl)."""
    from cscapi.remediation import open_store
    from test_agent_loop import DripServer

    capi_env.invoke(["machines", "register"])  # against the emulator; then CAPI turns into a drip
    drip = DripServer()
    env = {**os.environ, "CSCAPI_TARGET": drip.base_url, "CSCAPI_HEALTH_PORT": str(free_tcp_port)}
    cscapi = Path(sys.executable).with_name("cscapi")
    proc = subprocess.Popen(
        [str(cscapi), "run", "--no-metrics", "--stall-after", "1", "--stop-timeout", "5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health: dict[str, object] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("stall_after" in r for r in health.get("reasons", [])):  # type: ignore[attr-defined]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free_tcp_port}/health", timeout=5) as response:
                    health = json.loads(response.read())
            except urllib.error.HTTPError as exc:  # 503: degraded
                assert exc.code == 503
                health = json.loads(exc.read())
            except OSError:
                pass
            time.sleep(0.2)
        assert health.get("status") == "degraded", health
        assert health["running"] == {"job": "refresh", "seconds": health["running"]["seconds"]}  # type: ignore[index]
        assert drip.requests >= 1
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        drip.close()
    assert proc.returncode == 0, err
    print(f"exit {took:.2f} s after SIGTERM")
    assert took <= 5 + 3, (took, err)  # the bound, plus the interpreter's exit on a loaded machine
    assert "abandoned the refresh in flight" in err and "Traceback" not in err
    store = open_store(f"sqlite:///{capi_env.data_dir / 'decisions.db'}")
    try:
        assert store.acquire_lock("next-agent", 30)  # the refresh lock was released, not left for lock_ttl
    finally:
        store.close()


@pytest.mark.slow
def test_two_sigterms_during_a_hung_refresh_free_every_lock(capi_env: CliEnv) -> None:
    """CAPI drips a byte a second; the refresh (its login first) hangs on it. Two SIGTERMs: the refresh is abandoned
    at once, exit 130 within the bound, and the decision store's refresh lock and the machine's login lock are both
    free at once (not held for lock_ttl / login_lock_ttl)."""
    from cscapi.remediation import open_store
    from cscapi.sql_storage import SQLStorage
    from test_agent_loop import DripServer

    machine_id = json.loads(capi_env.invoke(["machines", "register", "--json"]).stdout)["machine_id"]
    drip = DripServer()  # from now on CAPI hangs: the agent's login (for its first pull) drips
    env = {**os.environ, "CSCAPI_TARGET": drip.base_url}
    cscapi = Path(sys.executable).with_name("cscapi")
    proc = subprocess.Popen(
        [str(cscapi), "run", "--no-metrics", "--stop-timeout", "5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while drip.requests < 1:  # the refresh's login reached the hung CAPI
            assert time.monotonic() < deadline and proc.poll() is None, "the agent never called CAPI"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        drip.close()
    assert proc.returncode == 130, err
    assert took <= 5 + 3, (took, err)  # the bound, plus the interpreter's exit on a loaded machine
    assert "abandoned the refresh in flight" in err and "Traceback" not in err
    store = open_store(f"sqlite:///{capi_env.data_dir / 'decisions.db'}")
    try:
        assert store.acquire_lock("next-agent", 30)  # the refresh lock is free
    finally:
        store.close()
    storage = SQLStorage(f"sqlite:///{capi_env.data_dir / 'cscapi.db'}")
    try:
        assert storage.acquire_login_lock(machine_id, "next-agent", 60)  # the login lock is free too
    finally:
        storage.close()
