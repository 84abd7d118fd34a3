"""Regression tests from the CLI audit: secrets in URLs and reprs, store failures, read-only commands, push, bans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import test_cli_support as support
from cscapi.settings import load_settings
from test_cli_support import CliEnv, assert_user_error, unreachable_url

cli_env = support.cli_env
emulator = support.emulator
capi_env = support.capi_env

SECRETS = {
    "CSCAPI_STORAGE": "mysql+pymysql://root@127.0.0.1/test?password=QPASS42",
    "CSCAPI_DECISION_STORE": "redis://:REDISPW31@127.0.0.1:1/0?password=PWSECRET55",
    "CSCAPI_TARGET": "http://capiuser:TARGETPW77@127.0.0.1:9/?token=TOKENQ88",
    "CSCAPI_PROXY": "http://bob:PROXYPW66@proxy.internal:3128/?auth=PROXYQ44",
    "CSCAPI_ENROLL_KEY": "attachment-KEY-0123456789",
}
LEAKS = ("QPASS42", "REDISPW31", "PWSECRET55", "TARGETPW77", "TOKENQ88", "PROXYPW66", "PROXYQ44", "KEY-01234567")


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _no_leak(text: str) -> None:
    for secret in LEAKS:
        assert secret not in text, secret


# ---- 1. passwords in URLs (userinfo and query string) are masked wherever the CLI prints a URL --------------------


def test_config_show_masks_query_string_passwords_text_and_json(cli_env: CliEnv) -> None:
    for args in (["config", "show"], ["--json", "config", "show"]):
        result = cli_env.invoke(args, env=SECRETS)
        assert result.exit_code == 0, result.output
        _no_leak(result.output)
    shown = json.loads(cli_env.invoke(["--json", "config", "show"], env=SECRETS).stdout)
    values = {name: item["value"] for name, item in shown["settings"].items()}
    assert values["storage"] == "mysql+pymysql://root@127.0.0.1/test?password=***"
    assert values["decision_store"] == "redis://:***@127.0.0.1:1/0?password=***"
    assert values["proxy"] == "http://bob:***@proxy.internal:3128/?auth=***"
    assert values["target"] == "http://capiuser:***@127.0.0.1:9/?token=***"
    assert shown["capi_url"] == "http://capiuser:***@127.0.0.1:9/?token=***"


def test_the_audited_commands_print_no_password(cli_env: CliEnv) -> None:
    show = cli_env.invoke(
        ["--json", "--storage", "mysql+pymysql://root@127.0.0.1/test?password=QPASS42", "config", "show"]
    )
    assert show.exit_code == 0 and "QPASS42" not in show.output and "password=***" in show.output
    stats = cli_env.invoke(["--decision-store", "redis://127.0.0.1:1/0?password=PWSECRET55", "decisions", "stats"])
    assert stats.exit_code == 6 and "PWSECRET55" not in stats.output and "password=***" in stats.output


def test_an_invalid_url_is_reported_masked(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["config", "show"], env={"CSCAPI_TARGET": "ftp://u:FTPSECRET9@host/?password=QS8"})
    line = assert_user_error(result, 2, "invalid target")
    assert "FTPSECRET9" not in result.output and "QS8" not in result.output and "***" in line


# ---- 2. Settings' repr and str hide every secret -------------------------------------------------------------------


def test_settings_repr_and_str_hide_secrets(tmp_path: Path) -> None:
    settings = load_settings(env={**SECRETS, "HOME": str(tmp_path)})
    assert settings.enroll_key == SECRETS["CSCAPI_ENROLL_KEY"]  # the value itself is still there for the code
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        _no_leak(text)
        assert "Settings(" in text and "storage=" in text and "***" in text


# ---- 3. a decision store that cannot be read is an error (exit 6), never a "clean" answer -----------------------


@pytest.mark.parametrize("command", [["decisions", "check", "1.2.3.4"], ["decisions", "stats"]])
def test_unreachable_decision_store_is_exit_6(cli_env: CliEnv, command: list[str]) -> None:
    for mode in ([], ["--json"]):
        result = cli_env.invoke([*mode, "--decision-store", "redis://127.0.0.1:1/0", *command])
        assert_user_error(result, 6, "redis://127.0.0.1:1/0", "decision store")
        assert result.stdout == ""  # no "bypass/clean" row, no empty stats
        assert "clean" not in result.output and "bypass" not in result.output


def test_unreadable_sqlite_decision_store_is_exit_6(cli_env: CliEnv, tmp_path: Path) -> None:
    garbage = tmp_path / "decisions.db"
    garbage.write_bytes(b"this is not a SQLite database, just bytes " * 100)
    for command in (["decisions", "check", "1.2.3.4"], ["decisions", "stats"]):
        result = cli_env.invoke(["--decision-store", f"sqlite:///{garbage}", *command])
        assert_user_error(result, 6, str(garbage))
        assert result.stdout == ""


def test_reachable_redis_store_answers(cli_env: CliEnv, redis_url: str, redis_prefix: str) -> None:
    from cscapi.remediation.stores import open_store

    open_store(redis_url, key_prefix=redis_prefix).close()
    env = {"CSCAPI_DECISION_STORE": redis_url, "CSCAPI_DECISION_KEY_PREFIX": redis_prefix}
    result = cli_env.invoke(["--json", "decisions", "check", "1.2.3.4"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["origin"] == "clean"
    assert "decisions refresh" in result.stderr  # an empty (never refreshed) store is said to be empty


# ---- 4. read-only commands never create files or directories ------------------------------------------------------

READ_ONLY = [
    ["signals", "list"],
    ["machines", "list"],
    ["machines", "status"],
    ["decisions", "check", "1.2.3.4"],
    ["decisions", "stats"],
]


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_read_only_commands_do_not_create_a_mistyped_sqlite_path(
    cli_env: CliEnv, tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    before = _tree(tmp_path)
    result = cli_env.invoke(["--storage", f"sqlite:///{missing}", "--decision-store", f"sqlite:///{missing}", *command])
    line = assert_user_error(result, 2, str(missing), "does not exist")
    assert "cscapi init" in line and "cscapi machines register" in line
    assert result.stdout == ""
    assert _tree(tmp_path) == before  # not the directory, not the file, not the default data directory


def test_read_only_commands_on_defaults_create_nothing(cli_env: CliEnv) -> None:
    before = _tree(cli_env.home)
    for command in READ_ONLY:
        assert_user_error(cli_env.invoke(command), 2, "does not exist", "cscapi init")
    assert cli_env.invoke(["config", "show"]).exit_code == 0
    assert _tree(cli_env.home) == before
    assert not cli_env.data_dir.exists()


# ---- 6. a push that failed never prints a check mark --------------------------------------------------------------


def test_push_failure_prints_crosses_not_a_check_mark(capi_env: CliEnv) -> None:
    data = json.loads(capi_env.invoke(["machines", "register", "--json"]).stdout)
    added = capi_env.invoke(["signals", "add", "--ip", "203.0.113.1", "--scenario", "crowdsecurity/ssh-bf"])
    assert added.exit_code == 0, added.output
    assert capi_env.invoke(["machines", "status", "--login"]).exit_code == 0  # a valid token is cached
    env = {"CSCAPI_TARGET": unreachable_url(), "CSCAPI_MAX_RETRIES": "0", "CSCAPI_TIMEOUT": "2"}
    result = capi_env.invoke(["signals", "push"], env=env)
    assert_user_error(result, 3, "were not sent")  # CAPI unreachable: exit 3 (docs/cli.md)
    assert "✓" not in result.output
    assert f"✗ machine {data['machine_id']}" in result.stdout
    # right after, the machine waits out its cool-down: nothing is tried, and that is not a success either
    again = capi_env.invoke(["signals", "push"], env=env)
    assert_user_error(again, 1, "cool-down")
    assert "✓" not in again.output and f"✗ machine {data['machine_id']} failed recently" in again.stdout
    as_json = capi_env.invoke(["signals", "push", "--json"], env=env)
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["sent"] == 0 and data["machine_id"] in report["cooling_down"]
    assert report["queue"]["queued"] == 1  # nothing was lost


# ---- 5. machines clear-ban -----------------------------------------------------------------------------------------


def test_clear_ban_after_a_real_login_ban(cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from cscapi.cli._runtime import session
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit
    from cscapi.errors import LoginBannedError

    config = EmulatorConfig(seed=3, community_size=5, login_rate_limit=LoginRateLimit(threshold=1, ban=3600))
    with EmbeddedEmulator(config) as emu:
        monkeypatch.setenv("CSCAPI_TARGET", emu.base_url)
        monkeypatch.setenv("CSCAPI_SCENARIOS", "crowdsecurity/ssh-bf")
        machine_id = json.loads(cli_env.invoke(["machines", "register", "--json"]).stdout)["machine_id"]
        with session(load_settings()) as (_storage, client):  # a second login within the window: CAPI bans
            client.login(machine_id, force=True)
            with pytest.raises(LoginBannedError):
                client.login(machine_id, force=True)
        banned = json.loads(cli_env.invoke(["machines", "status", "--json"]).stdout)
        assert banned["login_banned_until"] is not None
        assert_user_error(cli_env.invoke(["machines", "status", "--login"]), 4, "banned")

        emu.admin.clear_login_bans()  # CAPI lifts its ban; the stored one still holds every login back
        logins = len(emu.admin.logins(machine_id))
        assert_user_error(cli_env.invoke(["machines", "status", "--login"]), 4, "banned")
        assert len(emu.admin.logins(machine_id)) == logins  # no login was attempted

        cleared = cli_env.invoke(["machines", "clear-ban", machine_id])
        assert cleared.exit_code == 0, cleared.output
        assert f"✓ cleared the stored login ban of machine {machine_id}" in cleared.stdout
        again = json.loads(cli_env.invoke(["machines", "clear-ban", machine_id, "--json"]).stdout)
        assert again == {"machine_id": machine_id, "cleared": False, "was_banned_until": None}

        status = cli_env.invoke(["machines", "status", "--login", "--json"])
        assert status.exit_code == 0, status.output
        row = json.loads(status.stdout)
        assert row["checked_with_capi"] is True and row["login_banned_until"] is None
        assert row["token"].startswith("valid until")
        assert len(emu.admin.logins(machine_id)) == logins + 1  # a real login reached CAPI


def test_clear_ban_bad_input(capi_env: CliEnv) -> None:
    assert_user_error(capi_env.invoke(["machines", "clear-ban", "short"]), 2, "short")
    assert_user_error(capi_env.invoke(["machines", "clear-ban", "a" * 48]), 2, "cscapi init")  # no storage yet
    capi_env.invoke(["machines", "register"])
    assert_user_error(capi_env.invoke(["machines", "clear-ban", "a" * 48]), 2, "No machine")


def test_init_reports_uris_masked_but_writes_them_whole(cli_env: CliEnv) -> None:
    storage = "postgresql+psycopg://alice:INITPW12@127.0.0.1/db?password=INITQ34"
    for mode in ([], ["--json"]):
        result = cli_env.invoke(
            [*mode, "--storage", storage, "init", "--force", "--target", "http://u:TPW56@127.0.0.1:9/"]
        )
        assert result.exit_code == 0, result.output
        for secret in ("INITPW12", "INITQ34", "TPW56"):
            assert secret not in result.output
    assert storage in cli_env.config_path.read_text()  # the 0600 file holds the real value
