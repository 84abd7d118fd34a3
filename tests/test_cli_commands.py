"""Every `cscapi` command through click's runner, against a real emulator and real SQLite files: good and bad input."""

from __future__ import annotations

import json
import sqlite3

import pytest

import test_cli_support as support
from test_cli_support import CliEnv, assert_user_error, unreachable_url

cli_env = support.cli_env
emulator = support.emulator
capi_env = support.capi_env


def ok(result) -> dict | list:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else {}


def register(env: CliEnv) -> str:
    data = ok(env.invoke(["machines", "register", "--json"]))
    return data["machine_id"]


# ---- machines ---------------------------------------------------------------------------------------------------


def test_register_list_status(capi_env: CliEnv, emulator) -> None:
    data = ok(capi_env.invoke(["machines", "register", "--json"]))
    machine_id = data["machine_id"]
    assert len(machine_id) == 48 and data["newly_registered"] is True
    assert any(m["machine_id"] == machine_id for m in emulator.admin.machines())
    # a second register reuses the stored machine instead of creating another
    again = ok(capi_env.invoke(["machines", "register", "--json"]))
    assert again["machine_id"] == machine_id and again["newly_registered"] is False
    # ... unless asked
    other = ok(capi_env.invoke(["machines", "register", "--new", "--json"]))
    assert other["machine_id"] != machine_id

    listed = ok(capi_env.invoke(["machines", "list", "--json"]))
    assert [m["machine_id"] for m in listed] == [machine_id, other["machine_id"]]
    assert listed[0]["token"].startswith("none")

    status = ok(capi_env.invoke(["machines", "status", "--json"]))
    assert status["machine_id"] == machine_id and status["checked_with_capi"] is False
    status = ok(capi_env.invoke(["machines", "status", "--login", "--json"]))
    assert status["checked_with_capi"] is True
    assert status["token"].startswith("valid until")
    assert status["scenarios"] == ["crowdsecurity/http-probing", "crowdsecurity/ssh-bf"]
    human = capi_env.invoke(["machines", "status"])
    assert "valid until" in human.stdout and "not enrolled" in human.stdout
    table = capi_env.invoke(["machines", "list"])
    assert machine_id in table.stdout


def test_register_with_a_chosen_id_and_password(capi_env: CliEnv, emulator) -> None:
    machine_id = "a" * 16 + "b" * 32
    result = capi_env.invoke(
        ["machines", "register", "--machine-id", machine_id, "--password-stdin", "--json"], input="s3cret-password\n"
    )
    assert ok(result)["machine_id"] == machine_id
    assert "s3cret-password" not in result.output
    # the same id with another password is refused: an id/password pair never changes
    result = capi_env.invoke(
        ["machines", "register", "--machine-id", machine_id, "--password-stdin"], input="another-password\n"
    )
    assert_user_error(result, 2, "another password")


def test_bad_machine_id_is_a_usage_error(capi_env: CliEnv) -> None:
    assert_user_error(capi_env.invoke(["machines", "register", "--machine-id", "short"]), 2, "48")


def test_status_without_machine_says_what_to_do(capi_env: CliEnv) -> None:
    assert_user_error(capi_env.invoke(["machines", "status"]), 2, "cscapi machines register")


def test_enroll(capi_env: CliEnv, emulator) -> None:
    register(capi_env)
    emulator.admin.add_attachment_key("goodkey123")
    rows = ok(capi_env.invoke(["machines", "enroll", "--key", "goodkey123", "--name", "web-1", "--tag", "t", "--json"]))
    assert rows[0]["ok"] is True and rows[0]["status"] in ("enrolled", "already_enrolled")
    assert_user_error(capi_env.invoke(["machines", "enroll"]), 2, "attachment key")
    # the emulator accepts any well-formed key unless told to accept only the listed ones
    only_listed = getattr(emulator.admin, "only_listed_attachment_keys", lambda _on: None)
    only_listed(True)
    try:
        result = capi_env.invoke(["machines", "enroll", "--key", "wrongkey999", "--overwrite"])
    finally:
        only_listed(False)
    # the hint covers the console and the emulator's behaviour (any well-formed key, unless only listed ones)
    assert_user_error(result, 1, "not enrolled", "console", "emulator", "/admin/attachment-keys")


def test_unreachable_capi_is_one_line_exit_3(cli_env: CliEnv) -> None:
    env = {"CSCAPI_TARGET": unreachable_url(), "CSCAPI_MAX_RETRIES": "0", "CSCAPI_TIMEOUT": "2"}
    assert_user_error(cli_env.invoke(["machines", "register"], env=env), 3)


# ---- signals ----------------------------------------------------------------------------------------------------


def test_signals_add_from_flags_push_list_prune(capi_env: CliEnv, emulator) -> None:
    machine_id = register(capi_env)
    added = ok(
        capi_env.invoke(
            [
                "signals",
                "add",
                "--ip",
                "203.0.113.7",
                "--scenario",
                "crowdsecurity/ssh-bf",
                "--decision",
                "ban",
                "--duration",
                "4h",
                "--context",
                "user=root",
                "--json",
            ]
        )
    )
    assert added["queued"] == 1 and added["queue"]["queued"] == 1
    listed = ok(capi_env.invoke(["signals", "list", "--json"]))
    assert listed[0]["source"] == "203.0.113.7" and listed[0]["state"] == "queued"
    assert listed[0]["decision"] == "ban 4h"

    pushed = ok(capi_env.invoke(["signals", "push", "--json"]))
    assert pushed["sent"] == 1 and pushed["failed_machines"] == {}
    received = emulator.admin.signals(machine_id=machine_id)
    assert [r["signal"]["source"]["value"] for r in received] == ["203.0.113.7"]
    assert received[0]["signal"]["context"] == [{"key": "user", "value": "root"}]
    assert ok(capi_env.invoke(["signals", "list", "--state", "sent", "--json"]))[0]["state"] == "sent"
    assert ok(capi_env.invoke(["signals", "list", "--state", "queued", "--json"])) == []
    assert "nothing queued" in capi_env.invoke(["signals", "push"]).stdout

    pruned = ok(capi_env.invoke(["signals", "prune", "--sent-before", "1h", "--json"]))
    assert pruned["deleted"] == 0 and pruned["sent"] == 1  # sent just now: kept
    pruned = ok(capi_env.invoke(["signals", "prune", "--sent", "--json"]))
    assert pruned["deleted"] == 1 and pruned["sent"] == 0


def test_signals_add_from_jsonl_and_csv(capi_env: CliEnv, tmp_path) -> None:
    register(capi_env)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        '{"ip": "203.0.113.1", "scenario": "crowdsecurity/ssh-bf", "decision": "ban", "duration": "1h"}\n'
        "\n# a comment\n"
        '{"ip": "2001:db8::1", "scenario": "crowdsecurity/http-probing", "context": {"path": "/.env"}}\n'
        '{"range": "198.51.100.0/24", "scenario": "crowdsecurity/ssh-bf"}\n'
        '{"scenario": "crowdsecurity/ssh-bf", "source": {"scope": "ip", "value": "192.0.2.77"},'
        ' "decisions": [{"type": "captcha", "duration": "1h"}]}\n'
    )
    report = ok(capi_env.invoke(["signals", "add", "--file", str(jsonl), "--json"]))
    assert report["queued"] == 4 and report["rejected"] == []
    # the same file again: idempotent? no uuids given, so new signals: 3 more
    csv_file = tmp_path / "b.csv"
    csv_file.write_text(
        "ip,scenario,decision,duration,context.user\n"
        "192.0.2.5,crowdsecurity/ssh-bf,ban,4h,root\n"
        "192.0.2.6,crowdsecurity/ssh-bf,,,\n"
    )
    report = ok(capi_env.invoke(["signals", "add", "-f", str(csv_file), "--json"]))
    assert report["queued"] == 2
    rows = ok(capi_env.invoke(["signals", "list", "--json"]))
    assert {r["source"] for r in rows} == {
        "203.0.113.1",
        "2001:db8::1",
        "198.51.100.0/24",
        "192.0.2.77",
        "192.0.2.5",
        "192.0.2.6",
    }
    assert {r["decision"] for r in rows if r["source"] == "192.0.2.77"} == {"captcha 1h"}
    assert {r["scope"] for r in rows if r["source"] == "198.51.100.0/24"} == {"range"}


def test_signals_add_rejects_bad_lines_and_stores_nothing(capi_env: CliEnv, tmp_path) -> None:
    register(capi_env)
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"ip": "203.0.113.1", "scenario": "crowdsecurity/ssh-bf"}\n'
        '{"ip": "999.1.1.1", "scenario": "crowdsecurity/ssh-bf"}\n'
        '{"ip": "203.0.113.2", "scenario": "not a scenario"}\n'
        "{broken\n"
        "[1, 2]\n"
        '{"ip": "203.0.113.3", "scenario": "crowdsecurity/ssh-bf", "colour": "red"}\n'
        '{"ip": "203.0.113.4", "scenario": "crowdsecurity/ssh-bf", "decision": "ban", "duration": "forever"}\n'
    )
    result = capi_env.invoke(["signals", "add", "--file", str(path), "--json"])
    line = assert_user_error(result, 2, "6 of 7 lines rejected", "Nothing was queued", "--skip-invalid")
    assert "line 2" in line
    report = json.loads(result.stdout)
    assert [r["line"] for r in report["rejected"]] == [2, 3, 4, 5, 6, 7]
    reasons = " | ".join(r["reason"] for r in report["rejected"])
    for fragment in ("999.1.1.1", "scenario", "not valid JSON", "expected a JSON object", "colour", "duration"):
        assert fragment in reasons
    assert report["queued"] == 0
    assert ok(capi_env.invoke(["signals", "list", "--json"])) == []
    # human output: a table of rejects with line numbers, and the one-line error
    human = capi_env.invoke(["signals", "add", "--file", str(path)])
    assert "6 rejected" in human.stdout and "999.1.1.1" in human.stdout
    # --skip-invalid queues the valid line only
    report = json.loads(capi_env.invoke(["signals", "add", "--file", str(path), "--skip-invalid", "--json"]).stdout)
    assert report["queued"] == 1 and len(report["rejected"]) == 6


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["signals", "add", "--ip", "300.1.2.3", "--scenario", "crowdsecurity/ssh-bf"], 2, "Invalid IP"),
        (["signals", "add", "--ip", "203.0.113.1", "--scenario", "ssh bf"], 2, "scenario"),
        (["signals", "add", "--ip", "203.0.113.1", "--scenario", "a/b", "--duration", "3 days"], 2, "duration"),
        (["signals", "add", "--ip", "203.0.113.1", "--scenario", "a/b", "--context", "novalue"], 2, "KEY=VALUE"),
    ],
)
def test_signals_add_bad_flags(capi_env: CliEnv, args: list[str], code: int, fragment: str) -> None:
    register(capi_env)
    result = capi_env.invoke(args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and fragment in result.output
    assert ok(capi_env.invoke(["signals", "list", "--json"])) == []


def test_signals_add_bad_files(capi_env: CliEnv, tmp_path) -> None:
    register(capi_env)
    xml = tmp_path / "x.xml"
    xml.write_text("<x/>")
    assert_user_error(capi_env.invoke(["signals", "add", "--file", str(xml)]), 2, "--format")
    assert_user_error(capi_env.invoke(["signals", "add", "--file", str(tmp_path / "missing.jsonl")]), 2, "cannot read")
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("ip,scenario,colour\n1.2.3.4,a/b,red\n")
    assert_user_error(capi_env.invoke(["signals", "add", "--file", str(csv_file)]), 2, "unknown CSV column", "colour")
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b'{"ip": "\xff\xfe"}\n')
    assert_user_error(capi_env.invoke(["signals", "add", "--file", str(binary)]), 2, "UTF-8")
    both = capi_env.invoke(["signals", "add", "--file", str(csv_file), "--ip", "1.2.3.4"])
    assert both.exit_code == 2 and "not both" in both.output


def test_signals_from_stdin(capi_env: CliEnv) -> None:
    register(capi_env)
    result = capi_env.invoke(
        ["signals", "add", "--file", "-", "--format", "jsonl", "--json"],
        input='{"ip": "203.0.113.9", "scenario": "crowdsecurity/ssh-bf"}\n',
    )
    assert ok(result)["queued"] == 1


def test_signals_add_without_machine(capi_env: CliEnv) -> None:
    result = capi_env.invoke(["signals", "add", "--ip", "203.0.113.1", "--scenario", "a/b"])
    assert_user_error(result, 2, "cscapi machines register")


def test_push_to_unreachable_capi_keeps_signals_queued(capi_env: CliEnv) -> None:
    register(capi_env)
    ok(capi_env.invoke(["signals", "add", "--ip", "203.0.113.1", "--scenario", "crowdsecurity/ssh-bf", "--json"]))
    env = {"CSCAPI_TARGET": unreachable_url(), "CSCAPI_MAX_RETRIES": "0", "CSCAPI_TIMEOUT": "2"}
    ok(capi_env.invoke(["machines", "status", "--login", "--json"]))  # a valid token is now stored
    # the stored token is still valid, so the failure shows at the POST: the machine's signals stay queued
    result = capi_env.invoke(["signals", "push"], env=env)
    line = assert_user_error(result, 3, "were not sent", "connect error", "stay queued")
    assert "127.0.0.1" in line
    assert "✓" not in result.output and "✗ machine" in result.stdout  # a failed push is never shown as a success
    assert [r["state"] for r in ok(capi_env.invoke(["signals", "list", "--json"]))] == ["queued"]


def test_push_without_token_to_unreachable_capi_exits_3(capi_env: CliEnv) -> None:
    register(capi_env)
    ok(capi_env.invoke(["signals", "add", "--ip", "203.0.113.1", "--scenario", "crowdsecurity/ssh-bf", "--json"]))
    env = {"CSCAPI_TARGET": unreachable_url(), "CSCAPI_MAX_RETRIES": "0", "CSCAPI_TIMEOUT": "2"}
    assert_user_error(capi_env.invoke(["signals", "push"], env=env), 3)


def test_push_requires_scenarios(cli_env: CliEnv, emulator) -> None:
    env = {"CSCAPI_TARGET": emulator.base_url}
    assert_user_error(cli_env.invoke(["signals", "push"], env=env), 2, "no scenarios", "cscapi init")


def test_prune_requeue_and_bad_age(capi_env: CliEnv) -> None:
    register(capi_env)
    assert ok(capi_env.invoke(["signals", "prune", "--requeue-quarantined", "--json"]))["requeued"] == 0
    assert_user_error(capi_env.invoke(["signals", "prune", "--sent-before", "yesterday"]), 2, "--sent-before")
    assert ok(capi_env.invoke(["signals", "prune", "--sent-before", "7d", "--json"]))["deleted"] == 0
    assert ok(capi_env.invoke(["signals", "prune", "--failing-machines", "--json"]))["deleted_failing"] == 0


def test_quarantined_signals_are_listed_with_their_reason(capi_env: CliEnv) -> None:
    machine_id = register(capi_env)
    ok(capi_env.invoke(["signals", "add", "--ip", "203.0.113.1", "--scenario", "crowdsecurity/ssh-bf", "--json"]))
    from cscapi.sql_storage import SQLStorage

    storage = SQLStorage(f"sqlite:///{capi_env.data_dir / 'cscapi.db'}")
    try:
        claim = storage.claim_signals(10, 60, [machine_id])
        storage.quarantine(claim, [s.alert_id for s in claim.signals], "refused by CAPI: bad source")
    finally:
        storage.close()
    rows = ok(capi_env.invoke(["signals", "list", "--state", "quarantined", "--json"]))
    assert rows[0]["reason"] == "refused by CAPI: bad source"
    assert ok(capi_env.invoke(["signals", "list", "--state", "queued", "--json"])) == []
    assert ok(capi_env.invoke(["signals", "list", "--json"]))[0]["state"] == "quarantined"
    assert ok(capi_env.invoke(["signals", "prune", "--requeue-quarantined", "--json"]))["requeued"] == 1


# ---- decisions --------------------------------------------------------------------------------------------------


def test_decisions_refresh_check_stats(capi_env: CliEnv, emulator) -> None:
    register(capi_env)
    emulator.admin.add_decision("203.0.113.200", "crowdsecurity/ssh-bf", "24h")
    emulator.admin.publish_blocklist("cli-test-list", ["198.51.100.0/25"], scope="range", duration="12h")
    emulator.admin.publish_allowlist("cli-test-allow", ["203.0.113.201"])
    emulator.admin.add_decision("203.0.113.201", "crowdsecurity/ssh-bf", "24h")
    try:
        report = ok(capi_env.invoke(["decisions", "refresh", "--json"]))
        # seed 7, tailored to the declared scenarios: 22 community decisions (20 IPs, 2 ranges) + the 2 added IPs
        assert report["startup"] is True and report["new"] == 24
        statuses = {item["name"]: item["status"] for item in report["lists"]}
        assert statuses["cli-test-list"] == "downloaded" and statuses["cli-test-allow"] == "downloaded"

        rows = ok(
            capi_env.invoke(["decisions", "check", "203.0.113.200", "198.51.100.9", "203.0.113.201", "::1", "--json"])
        )
        answers = {r["ip"]: (r["remediation"], r["origin"]) for r in rows}
        assert answers["203.0.113.200"] == ("ban", "CAPI")
        assert answers["198.51.100.9"] == ("ban", "lists:cli-test-list")
        assert answers["203.0.113.201"] == ("bypass", "allowlist:cli-test-allow")
        assert answers["::1"] == ("bypass", "clean")

        stats = ok(capi_env.invoke(["decisions", "stats", "--json"]))
        assert stats["by_origin"]["lists:cli-test-list"] == 1
        assert stats["by_origin"]["allowlist:cli-test-allow"] == 1
        # those 24, the list's range, and the allowlisted IP
        assert stats["by_type"] == {"ban": 25, "allow": 1} and stats["by_scope"] == {"ip": 23, "range": 3}
        assert stats["last_pull_seconds_ago"] < 60
        kinds = {item["origin"]: item["kind"] for item in stats["lists"]}
        assert kinds == {"lists:cli-test-list": "blocklist", "allowlist:cli-test-allow": "allowlist"}
        human = capi_env.invoke(["decisions", "stats"])
        assert "by origin" in human.stdout and "cli-test-list" in human.stdout
        human = capi_env.invoke(["decisions", "check", "203.0.113.200"])
        assert "ban" in human.stdout and "CAPI" in human.stdout

        # a second pull right away is refused (CAPI's 1 h 30 minimum), --force pulls
        assert_user_error(capi_env.invoke(["decisions", "refresh"]), 8, "--force")
        forced = capi_env.invoke(["decisions", "refresh", "--force"])
        assert forced.exit_code == 0 and "community blocklist" in forced.stdout
    finally:
        emulator.admin.remove_blocklist("cli-test-list")
        emulator.admin.remove_allowlist("cli-test-allow")


def test_decisions_check_invalid_ip_prints_no_answer(capi_env: CliEnv) -> None:
    result = capi_env.invoke(["decisions", "check", "203.0.113.1", "not-an-ip"])
    assert_user_error(result, 2, "not-an-ip")
    assert result.stdout == ""


def test_decisions_with_empty_cache_warns(capi_env: CliEnv) -> None:
    from cscapi.remediation.stores import open_store

    # no decision store file yet: said so (exit 2), and nothing is created
    missing = capi_env.invoke(["decisions", "check", "203.0.113.1", "--json"])
    assert_user_error(missing, 2, "decisions.db", "does not exist", "cscapi decisions refresh")
    assert not capi_env.data_dir.exists()
    # a store that exists but was never refreshed: answers, with a warning
    capi_env.data_dir.mkdir(parents=True)
    open_store(f"sqlite:///{capi_env.data_dir / 'decisions.db'}").close()
    result = capi_env.invoke(["decisions", "check", "203.0.113.1", "--json"])
    assert ok(result)[0]["origin"] == "clean"
    assert "decisions refresh" in result.stderr
    stats = ok(capi_env.invoke(["decisions", "stats", "--json"]))
    assert stats["total"] == 0 and stats["version"] is None


def test_decisions_refuse_memory_store(capi_env: CliEnv) -> None:
    result = capi_env.invoke(["--decision-store", "memory://", "decisions", "check", "203.0.113.1"])
    assert_user_error(result, 2, "memory://")


def test_decisions_refresh_unreachable(capi_env: CliEnv) -> None:
    register(capi_env)
    env = {"CSCAPI_TARGET": unreachable_url(), "CSCAPI_MAX_RETRIES": "0", "CSCAPI_TIMEOUT": "2"}
    assert_user_error(capi_env.invoke(["decisions", "refresh"], env=env), 3)


# ---- storage, global flags, errors ------------------------------------------------------------------------------


def test_storage_flag_and_file_permissions(capi_env: CliEnv, tmp_path) -> None:
    db = tmp_path / "sub" / "q.db"
    ok(capi_env.invoke(["--storage", f"sqlite:///{db}", "machines", "register", "--json"]))
    assert db.exists()
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert tables  # a real database was created there
    assert not (capi_env.data_dir / "cscapi.db").exists()


def test_storage_unreachable_database_is_one_line(capi_env: CliEnv) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    assert_user_error(capi_env.invoke(["--storage", url, "machines", "list"]), 6, "opening the storage")
    assert_user_error(capi_env.invoke(["--storage", "redis://x", "machines", "list"]), 2, "Unsupported storage")


def test_debug_shows_the_traceback(capi_env: CliEnv) -> None:
    result = capi_env.invoke(["--debug", "decisions", "check", "nope"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "error:" in result.stderr


def test_unknown_command_and_option_are_usage_errors(cli_env: CliEnv) -> None:
    assert cli_env.invoke(["frobnicate"]).exit_code == 2
    assert cli_env.invoke(["signals", "push", "--nope"]).exit_code == 2
    assert cli_env.invoke(["signals", "add"]).exit_code == 2


def test_refresh_progress_advances_once_per_list(emulator, tmp_path) -> None:
    from cscapi.cli.cmd_decisions import _ProgressSource
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.remediation import RemediationEngine
    from cscapi.sql_storage import SQLStorage

    class Bar:
        def __init__(self) -> None:
            self.steps: list[str] = []
            self.total: int | None = None
            self.description = ""

        def update(self, *, total: int | None = None, description: str | None = None) -> None:
            self.total = total if total is not None else self.total
            self.description = description or self.description

        def advance(self, amount: int = 1) -> None:
            self.steps.append(self.description)

    emulator.admin.publish_blocklist("progress-a", ["192.0.2.200"])
    emulator.admin.publish_allowlist("progress-b", ["192.0.2.201"])
    storage = SQLStorage(f"sqlite:///{tmp_path / 'q.db'}")
    client = CAPIClient(storage, CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=emulator.base_url))
    source = _ProgressSource(client)
    engine = RemediationEngine(source, store=f"sqlite:///{tmp_path / 'd.db'}")
    try:
        source.bar = bar = Bar()
        engine.refresh_decisions()
        assert bar.total == 3
        assert bar.steps == ["decisions stream pulled", "downloading list progress-a", "downloading list progress-b"]
        assert engine.get_ip_remediation("192.0.2.200").origin == "lists:progress-a"
    finally:
        emulator.admin.remove_blocklist("progress-a")
        emulator.admin.remove_allowlist("progress-b")
        engine.close()
        client.close()
        storage.close()


def test_no_command_prints_a_password_or_token(capi_env: CliEnv) -> None:
    from cscapi.sql_storage import SQLStorage

    machine_id = register(capi_env)
    ok(capi_env.invoke(["machines", "status", "--login", "--json"]))
    storage = SQLStorage(f"sqlite:///{capi_env.data_dir / 'cscapi.db'}")
    try:
        machine = storage.get_machine_by_id(machine_id)
    finally:
        storage.close()
    assert machine is not None and machine.password and machine.token
    outputs = [
        capi_env.invoke(args).output
        for args in (
            ["machines", "list"],
            ["machines", "list", "--json"],
            ["machines", "status"],
            ["machines", "status", "--login", "--json"],
            ["--debug", "machines", "status", "--login"],
            ["config", "show", "--json"],
        )
    ]
    for output in outputs:
        assert machine.password not in output and machine.token not in output


def test_brackets_in_names_and_reasons_are_printed_literally(capi_env: CliEnv, emulator) -> None:
    """Server-provided text (list names, reasons) must never be read as rich markup, nor crash the output."""
    register(capi_env)
    emulator.admin.publish_blocklist("odd[/x]name", ["192.0.2.222"])
    try:
        result = capi_env.invoke(["decisions", "refresh", "--force"])
        assert result.exit_code == 0, result.output
        assert "odd[/x]name" in result.stdout
        check = capi_env.invoke(["decisions", "check", "192.0.2.222"])
        assert check.exit_code == 0 and "lists:odd[/x]name" in check.stdout
    finally:
        emulator.admin.remove_blocklist("odd[/x]name")


def test_csv_ragged_rows_and_empty_header(capi_env: CliEnv, tmp_path) -> None:
    register(capi_env)
    ragged = tmp_path / "r.csv"
    ragged.write_text("ip,scenario\n203.0.113.1,crowdsecurity/ssh-bf\n203.0.113.2,crowdsecurity/ssh-bf,extra\n")
    result = capi_env.invoke(["signals", "add", "--file", str(ragged), "--json"])
    assert_user_error(result, 2, "1 of 2 lines rejected", "line 3")
    assert json.loads(result.stdout)["rejected"] == [{"line": 3, "reason": "1 more value than header columns"}]
    empty = tmp_path / "e.csv"
    empty.write_text("")
    assert_user_error(capi_env.invoke(["signals", "add", "--file", str(empty)]), 2, "no header row")


def test_human_list_and_enroll_of_several_machines(capi_env: CliEnv, emulator) -> None:
    first = register(capi_env)
    second = json.loads(capi_env.invoke(["machines", "register", "--new", "--json"]).stdout)["machine_id"]
    ok(capi_env.invoke(["signals", "add", "--ip", "203.0.113.3", "--scenario", "crowdsecurity/ssh-bf", "--json"]))
    listed = capi_env.invoke(["signals", "list"])
    assert "203.0.113.3" in listed.stdout and "whisper" in listed.stdout and "1 queued" in listed.stdout
    emulator.admin.add_attachment_key("twomachines1")
    rows = ok(capi_env.invoke(["machines", "enroll", first, second, "--key", "twomachines1", "--json"]))
    assert [r["machine_id"] for r in rows] == [first, second] and all(r["ok"] for r in rows)
    human = capi_env.invoke(["machines", "enroll", first, "--key", "twomachines1"])
    assert human.exit_code == 0 and first in human.stdout
