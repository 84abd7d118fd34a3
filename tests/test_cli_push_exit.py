"""`cscapi signals push` exit codes by cause (docs/cli.md): 3 CAPI unreachable or failing, 4 login banned,
5 credentials refused, 1 otherwise; against the real emulator with faults, or a closed loopback port."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

import test_cli_support as support
from cscapi.settings import load_settings
from cscapi.timeutil import utcnow
from test_cli_support import CliEnv, assert_user_error, unreachable_url

cli_env = support.cli_env
emulator = support.emulator
capi_env = support.capi_env

FAST = {"CSCAPI_MAX_RETRIES": "0", "CSCAPI_TIMEOUT": "2"}


@pytest.fixture(autouse=True)
def no_faults(emulator) -> None:
    emulator.admin.clear_faults()


def register(env: CliEnv, *extra: str) -> str:
    result = env.invoke(["machines", "register", "--json", *extra])
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["machine_id"])


def queue_one(env: CliEnv, machine_id: str | None = None) -> None:
    extra = {"CSCAPI_MACHINE_ID": machine_id} if machine_id else None
    added = env.invoke(["signals", "add", "--ip", "203.0.113.9", "--scenario", "crowdsecurity/ssh-bf"], env=extra)
    assert added.exit_code == 0, added.output


def with_token(env: CliEnv) -> str:
    """A registered machine with one queued signal and a valid stored token (the push goes straight to the POST)."""
    machine_id = register(env)
    queue_one(env)
    assert env.invoke(["machines", "status", "--login"]).exit_code == 0
    return machine_id


def second_machine_with_a_signal(env: CliEnv) -> str:
    """A second machine holding the only queued signal: the default one needs no login, the push reports it."""
    register(env)
    other = register(env, "--new")
    queue_one(env, other)
    return other


def edit_machine(machine_id: str, **changes: object) -> None:
    from cscapi.cli._runtime import open_storage

    storage = open_storage(load_settings(), create=False)
    try:
        machine = storage.get_machine_by_id(machine_id)
        assert machine is not None
        storage.update_or_create_machine(replace(machine, **changes))
    finally:
        storage.close()


def test_5xx_after_the_retries_exits_3(capi_env: CliEnv, emulator) -> None:
    machine_id = with_token(capi_env)
    emulator.admin.set_fault("signals", error_rate=1.0, error_status=503)
    result = capi_env.invoke(["signals", "push"], env=FAST)
    assert_user_error(result, 3, "were not sent", "stay queued")
    as_json = capi_env.invoke(["signals", "push", "--json"], env=FAST)  # now cooling down: not tried, exit 1
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["errors"][machine_id]["type"] == "MachineCoolingDownError"
    assert machine_id in report["cooling_down"] and report["queue"]["queued"] == 1


def test_429_after_the_retries_exits_3_with_the_typed_error_in_json(capi_env: CliEnv, emulator) -> None:
    machine_id = with_token(capi_env)
    emulator.admin.set_fault("signals", rate_limit_rate=1.0, retry_after=1)
    result = capi_env.invoke(["signals", "push", "--json"], env=FAST)
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert report["errors"][machine_id]["type"] == "RateLimitedError"
    assert report["failed_machines"][machine_id] == report["errors"][machine_id]["message"]


def test_unreachable_port_with_a_valid_token_exits_3(capi_env: CliEnv) -> None:
    with_token(capi_env)
    result = capi_env.invoke(["signals", "push"], env={"CSCAPI_TARGET": unreachable_url(), **FAST})
    assert_user_error(result, 3, "connect error")


def test_login_banned_machine_exits_4(capi_env: CliEnv, emulator) -> None:
    other = second_machine_with_a_signal(capi_env)
    edit_machine(other, login_banned_until=utcnow() + timedelta(hours=1))
    logins = len(emulator.admin.logins(other))
    result = capi_env.invoke(["signals", "push", "--json"], env=FAST)
    assert result.exit_code == 4, result.output
    assert json.loads(result.stdout)["errors"][other]["type"] == "LoginBannedError"
    assert len(emulator.admin.logins(other)) == logins  # no login tried while banned


def test_refused_credentials_exit_5(capi_env: CliEnv, emulator) -> None:
    other = second_machine_with_a_signal(capi_env)
    edit_machine(other, password="not-the-registered-password-42", token=None, token_expires_at=None)
    result = capi_env.invoke(["signals", "push"], env=FAST)
    assert result.exit_code == 5, result.output
    # the client logs the refused login itself; the push adds its one-line summary with what to do
    summary = [line for line in result.stderr.splitlines() if "were not sent" in line]
    assert len(summary) == 1 and "credentials" in summary[0], result.stderr
    assert "✓" not in result.output and "Traceback" not in result.output


def test_push_exit_code_rules() -> None:
    from cscapi.cli.cmd_signals import push_exit_code
    from cscapi.errors import (
        AuthenticationError,
        LoginBannedError,
        MachineCoolingDownError,
        RateLimitedError,
        RequestRejectedError,
        ServerError,
        TransportError,
    )

    now = utcnow()
    unreachable = [TransportError("down"), ServerError("503"), RateLimitedError("429")]
    assert push_exit_code(unreachable) == 3
    assert push_exit_code([*unreachable, LoginBannedError("ban", until=now)]) == 4
    assert push_exit_code([AuthenticationError("no"), LoginBannedError("ban", until=now)]) == 4
    assert push_exit_code([TransportError("down"), AuthenticationError("no")]) == 5
    assert push_exit_code([MachineCoolingDownError("wait", until=now, reason="503")]) == 1
    assert push_exit_code([TransportError("down"), RequestRejectedError("400")]) == 1
    assert push_exit_code([]) == 1
