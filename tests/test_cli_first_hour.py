"""Issue 8 (a new user's first hour with the README and docs/cli.md) and the CLI items of issue 9, each as it was met.

Every test runs the real command through click's runner against the embedded emulator (or a hostile loopback server
written here), on real SQLite files.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import test_cli_support as support
from test_cli_support import CliEnv, assert_user_error, unreachable_url

cli_env = support.cli_env
emulator = support.emulator
capi_env = support.capi_env

ESC = "\x1b"


def ok(result) -> dict | list:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else {}


def register(env: CliEnv) -> str:
    return str(ok(env.invoke(["machines", "register", "--json"]))["machine_id"])


def add_one(env: CliEnv, ip: str = "203.0.113.1") -> None:
    ok(env.invoke(["signals", "add", "--ip", ip, "--scenario", "crowdsecurity/ssh-bf", "--json"]))


# ---- 1. --duration without --decision ---------------------------------------------------------------------------


def test_duration_without_decision_is_a_usage_error(capi_env: CliEnv, tmp_path: Path) -> None:
    register(capi_env)
    args = ["signals", "add", "--ip", "203.0.113.7", "--scenario", "crowdsecurity/ssh-bf", "--duration", "4h"]
    line = assert_user_error(capi_env.invoke(args), 2, "--duration needs --decision", "--decision ban")
    assert "whisper" in line
    assert ok(capi_env.invoke(["signals", "list", "--json"])) == []  # nothing queued (it used to queue a ban)
    # the same rule for a file line
    path = tmp_path / "d.jsonl"
    path.write_text('{"ip": "203.0.113.8", "scenario": "crowdsecurity/ssh-bf", "duration": "4h"}\n')
    result = capi_env.invoke(["signals", "add", "--file", str(path), "--json"])
    assert_user_error(result, 2, "1 of 1 line rejected")
    assert "duration without decision" in json.loads(result.stdout)["rejected"][0]["reason"]
    # with a decision it is a ban of that duration
    ok(capi_env.invoke([*args, "--decision", "ban", "--json"]))
    assert ok(capi_env.invoke(["signals", "list", "--json"]))[0]["decision"] == "ban 4h"


# ---- 2. enrollment recorded at once; "checked with CAPI" only after a request --------------------------------------


def test_enrollment_shows_at_once_in_status_and_list(capi_env: CliEnv, emulator) -> None:
    machine_id = register(capi_env)
    emulator.admin.add_attachment_key("anyKey12345")
    rows = ok(capi_env.invoke(["machines", "enroll", "--key", "anyKey12345", "--name", "web-1", "--json"]))
    assert rows[0]["ok"] is True and rows[0]["organization_id"]
    status = ok(capi_env.invoke(["machines", "status", "--json"]))
    assert status["enrolled"] is True and status["organization_id"] == rows[0]["organization_id"]
    human = capi_env.invoke(["machines", "status"])
    assert "not enrolled" not in human.stdout and rows[0]["organization_id"] in human.stdout
    listed = ok(capi_env.invoke(["machines", "list", "--json"]))
    assert [m["enrolled"] for m in listed if m["machine_id"] == machine_id] == [True]


def test_status_login_says_checked_only_when_a_request_was_sent(capi_env: CliEnv) -> None:
    register(capi_env)
    first = ok(capi_env.invoke(["machines", "status", "--login", "--json"]))
    assert first["checked_with_capi"] is True
    # the token is still valid: reused, no login request, so nothing was checked with CAPI
    second = ok(capi_env.invoke(["machines", "status", "--login", "--json"]))
    assert second["checked_with_capi"] is False
    human = capi_env.invoke(["machines", "status", "--login"])
    assert human.exit_code == 0
    assert "checked with CAPI" not in human.stdout and "no request sent" in human.stdout


# ---- 3. push --now after an outage ------------------------------------------------------------------------------


def test_push_now_clears_the_cool_down(capi_env: CliEnv, emulator) -> None:
    machine_id = register(capi_env)
    add_one(capi_env)
    ok(capi_env.invoke(["machines", "status", "--login", "--json"]))  # a valid token: the outage shows at the POST
    down = {"CSCAPI_TARGET": unreachable_url(), "CSCAPI_MAX_RETRIES": "0", "CSCAPI_TIMEOUT": "2"}
    assert capi_env.invoke(["signals", "push"], env=down).exit_code == 3  # the machine now cools down
    # CAPI is back, but the machine waits out its cool-down; the message says how to skip it
    held = capi_env.invoke(["signals", "push"])
    assert_user_error(held, 1, "cool-down", "--now")
    assert emulator.admin.signals(machine_id=machine_id) == []
    pushed = ok(capi_env.invoke(["signals", "push", "--now", "--json"]))
    assert pushed["sent"] == 1 and pushed["errors"] == {}
    assert len(emulator.admin.signals(machine_id=machine_id)) == 1


# ---- 4. prune: each flag prunes only what it names -------------------------------------------------------------


def _one_sent_one_quarantined(env: CliEnv, machine_id: str) -> None:
    from cscapi.sql_storage import SQLStorage

    add_one(env, "203.0.113.10")
    ok(env.invoke(["signals", "push", "--json"]))
    add_one(env, "203.0.113.11")
    storage = SQLStorage(f"sqlite:///{env.data_dir / 'cscapi.db'}")
    try:
        claim = storage.claim_signals(10, 60, [machine_id])
        storage.quarantine(claim, [s.alert_id for s in claim.signals], "refused")
    finally:
        storage.close()


def test_prune_flags_prune_only_what_they_name(capi_env: CliEnv) -> None:
    machine_id = register(capi_env)
    _one_sent_one_quarantined(capi_env, machine_id)
    assert_user_error(capi_env.invoke(["signals", "prune"]), 2, "--sent", "--quarantined")
    both = ok(capi_env.invoke(["signals", "prune", "--quarantined", "--failing-machines", "--json"]))
    assert both["deleted"] == 1 and both["quarantined"] == 0
    assert both["sent"] == 1  # used to delete every sent signal too
    assert ok(capi_env.invoke(["signals", "prune", "--sent-before", "1h", "--json"]))["sent"] == 1  # sent just now
    sent = ok(capi_env.invoke(["signals", "prune", "--sent", "--json"]))
    assert sent["deleted"] == 1 and sent["sent"] == 0


# ---- 5. fail fast when nothing listens; no half-registered machine ----------------------------------------------


def test_register_against_a_dead_port_fails_at_once_and_leaves_nothing(capi_env: CliEnv, emulator) -> None:
    started = time.monotonic()
    dead = capi_env.invoke(["machines", "register"], env={"CSCAPI_TARGET": unreachable_url()})
    elapsed = time.monotonic() - started
    line = assert_user_error(dead, 3, "after 1 try", "cscapi emulator", "check the CAPI URL")
    assert "retry" not in dead.stderr.replace(line, "")  # no backoff warnings (the default max_retries is 3)
    assert elapsed < 20, elapsed  # used to take ~20 s of backoff; generous for a loaded machine
    assert ok(capi_env.invoke(["machines", "list", "--json"])) == []
    machine_id = register(capi_env)
    assert [m["machine_id"] for m in ok(capi_env.invoke(["machines", "list", "--json"]))] == [machine_id]


def test_fail_fast_is_the_commands_option_not_the_agents(cli_env: CliEnv) -> None:
    from cscapi.cli._runtime import open_client, session
    from cscapi.settings import load_settings
    from cscapi.sql_storage import SQLStorage

    settings = load_settings({"target": "http://127.0.0.1:1/", "scenarios": ["crowdsecurity/ssh-bf"]})
    with session(settings) as (_storage, client):
        assert client.config.fail_fast_connect is True
    storage = SQLStorage("sqlite://")
    try:
        agent_client = open_client(settings, storage)  # what `cscapi run` uses: the library's backoff
        assert agent_client.config.fail_fast_connect is False
        agent_client.close()
    finally:
        storage.close()


def test_retry_policy_fail_fast_connect() -> None:
    from cscapi.protocol.http import NetworkFailure
    from cscapi.protocol.retry import RetryPolicy

    refused = NetworkFailure("connect", "ConnectError: [Errno 111] Connection refused", "http://127.0.0.1:9/v3/x")
    remote = NetworkFailure("connect", "ConnectError: [Errno 101] Network is unreachable", "http://203.0.113.1/v3")
    timeout = NetworkFailure("timeout", "ReadTimeout", "http://127.0.0.1:9/v3/x")
    library = RetryPolicy(max_retries=3)
    assert library.should_retry(refused, 0) and library.should_retry(remote, 1)  # the default keeps backing off
    fast = RetryPolicy(max_retries=3, fail_fast_connect=True)
    assert not fast.should_retry(refused, 0) and not fast.should_retry(remote, 0)  # first try: at once
    assert not fast.should_retry(refused, 1)  # refused on loopback: at any try
    assert fast.should_retry(remote, 1)  # a remote network error after an earlier answer: backoff as before
    assert fast.should_retry(timeout, 0)  # timeouts are not connection errors


# ---- 6. the quick start's refresh twice -------------------------------------------------------------------------


def test_refresh_too_soon_message_has_its_full_stop(emulator, tmp_path: Path) -> None:
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.errors import RefreshTooSoonError
    from cscapi.remediation import RemediationEngine
    from cscapi.sql_storage import SQLStorage

    storage = SQLStorage(f"sqlite:///{tmp_path / 'q.db'}")
    client = CAPIClient(storage, CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=emulator.base_url))
    engine = RemediationEngine(client, store=f"sqlite:///{tmp_path / 'd.db'}")
    try:
        engine.refresh_decisions()
        with pytest.raises(RefreshTooSoonError) as caught:
            engine.refresh_decisions()
        text = str(caught.value)
        assert " s. The next pull is allowed" in text, text
    finally:
        engine.close()
        client.close()
        storage.close()


# ---- 7. one name for the CAPI URL -------------------------------------------------------------------------------


def test_cscapi_base_url_reaches_the_cli(cli_env: CliEnv, emulator) -> None:
    env = {"CSCAPI_BASE_URL": emulator.base_url, "CSCAPI_SCENARIOS": "crowdsecurity/ssh-bf"}
    shown = ok(cli_env.invoke(["config", "show", "--json"], env=env))
    assert shown["capi_url"] == emulator.base_url
    assert shown["settings"]["target"]["source"] == "env CSCAPI_BASE_URL"
    machine_id = ok(cli_env.invoke(["machines", "register", "--json"], env=env))["machine_id"]
    assert any(m["machine_id"] == machine_id for m in emulator.admin.machines())
    # CSCAPI_TARGET, the CLI's own choice (it also takes emulator/dev/prod), wins over it
    both = ok(cli_env.invoke(["config", "show", "--json"], env={**env, "CSCAPI_TARGET": "prod"}))
    assert both["capi_url"] == "https://api.crowdsec.net/"


# ---- 9. enroll hint -----------------------------------------------------------------------------------------------
# (tests/test_cli_commands.py::test_enroll checks the refused key's hint names the emulator's behaviour)


# ---- 10. polish -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment", "help_of"),
    [
        (["signals", "add", "--ip", "203.0.113.1"], "give --ip and --scenario", "cscapi signals add"),
        (["signals", "list", "--state", "nope"], "'nope' is not one of", "cscapi signals list"),
        (["signals", "push", "--nope"], "No such option", "cscapi signals push"),
        (["frobnicate"], "No such command", "cscapi"),
        (["--nope"], "No such option", "cscapi"),
    ],
)
def test_usage_errors_are_one_documented_line(cli_env: CliEnv, args: list[str], fragment: str, help_of: str) -> None:
    result = cli_env.invoke(args)
    line = assert_user_error(result, 2, fragment, f"`{help_of} --help`")
    assert "Error:" not in result.output and "Usage:" not in result.output
    assert line.endswith("for the options and examples.")


def test_group_listings_are_not_cut(cli_env: CliEnv) -> None:
    for group, sentence in (
        (["signals"], "they are validated first and stored in one transaction (all or nothing)."),
        (["machines"], "its id and password are kept in the signal storage."),
        (["decisions"], "and say how fresh each list is."),
    ):
        listing = cli_env.invoke([*group, "--help"]).stdout.split("Commands:")[1]
        out = " ".join(listing.split())
        assert sentence in out, (group, out)
        assert not any(line.rstrip().endswith("...") for line in listing.splitlines()), listing  # click's cut
    root = " ".join(cli_env.invoke(["--help"]).stdout.split("Commands:")[1].split())
    assert "..." not in root and "Show the effective configuration and where each value came from." in root


def test_signals_list_limit_has_help(cli_env: CliEnv) -> None:
    out = " ".join(cli_env.invoke(["signals", "list", "--help"]).stdout.split())
    assert "--limit INTEGER RANGE Show at most this many signals." in out


def test_counts_have_plurals(capi_env: CliEnv) -> None:
    register(capi_env)
    added = capi_env.invoke(["signals", "add", "--ip", "203.0.113.1", "--scenario", "crowdsecurity/ssh-bf"])
    assert "queued 1 signal;" in added.stdout, added.stdout
    pushed = capi_env.invoke(["signals", "push"])
    assert "sent 1 signal in 1 request" in pushed.stdout and "(s)" not in pushed.stdout


def test_binary_input_file_is_not_a_text_file(capi_env: CliEnv, tmp_path: Path) -> None:
    register(capi_env)
    nul = tmp_path / "image.jsonl"
    nul.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    line = assert_user_error(capi_env.invoke(["signals", "add", "--file", str(nul)]), 2, "not a text file")
    assert "line 0" not in line
    undecodable = tmp_path / "latin.jsonl"
    undecodable.write_bytes(b"\xff\xfe\xfa garbage\n")
    line = assert_user_error(capi_env.invoke(["signals", "add", "--file", str(undecodable)]), 2, "not a text file")
    assert "line 0" not in line


def test_progress_without_a_total_is_a_spinner_not_0_of_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from cscapi.cli._output import Output

    def render(total: int | None) -> str:
        out = Output()
        buffer = io.StringIO()
        out._err_console = Console(file=buffer, force_terminal=True, width=100)
        monkeypatch.setattr(Output, "interactive", property(lambda self: True))
        with out.progress("pushing 3 queued signals", total=total):
            out.err_console.file.flush()
            time.sleep(0)
        return buffer.getvalue()

    assert "0/?" not in render(None)
    assert "0/3" in render(3)


def test_memory_decision_store_is_neither_offered_nor_accepted(cli_env: CliEnv) -> None:
    text = cli_env.invoke(["init", "--stdout"]).stdout
    assert "memory://" not in text and "decision_store" in text
    result = cli_env.invoke(["--decision-store", "memory://", "init", "--stdout"])
    assert_user_error(result, 2, "memory://", "sqlite:///")
    assert_user_error(cli_env.invoke(["config", "show"], env={"CSCAPI_DECISION_STORE": "memory://"}), 2, "memory://")


def test_adding_the_same_file_twice_is_idempotent(capi_env: CliEnv, tmp_path: Path) -> None:
    register(capi_env)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        '{"ip": "203.0.113.1", "scenario": "crowdsecurity/ssh-bf", "decision": "ban", "duration": "1h"}\n'
        '{"ip": "2001:db8::1", "scenario": "crowdsecurity/http-probing"}\n'
    )
    csv_file = tmp_path / "b.csv"
    csv_file.write_text("ip,scenario\n192.0.2.5,crowdsecurity/ssh-bf\n")
    for path, count in ((jsonl, 2), (csv_file, 1)):
        first = ok(capi_env.invoke(["signals", "add", "--file", str(path), "--json"]))
        assert first["queued"] == count and first["duplicates"] == 0
        again = ok(capi_env.invoke(["signals", "add", "--file", str(path), "--json"]))
        assert again["queued"] == 0 and again["duplicates"] == count
        human = capi_env.invoke(["signals", "add", "--file", str(path)])
        assert f"({count} already queued)" in human.stdout
    assert len(ok(capi_env.invoke(["signals", "list", "--json"]))) == 3
    # a line with its own uuid keeps it
    own = tmp_path / "own.jsonl"
    own.write_text(
        '{"ip": "192.0.2.9", "scenario": "crowdsecurity/ssh-bf", "uuid": "0b0e8c4e-1d2c-4b7a-9a59-6f3c1e2d3a4b"}\n'
    )
    ok(capi_env.invoke(["signals", "add", "--file", str(own), "--json"]))
    rows = ok(capi_env.invoke(["signals", "list", "--json"]))
    assert "0b0e8c4e-1d2c-4b7a-9a59-6f3c1e2d3a4b" in {r["uuid"] for r in rows}


def test_demo_counts_allowlist_entries_apart(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["demo"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "and 1 allowlist entry stored in" in out, out


# ---- 11. terminal escape injection ------------------------------------------------------------------------------

HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


def _hostile_server(body: bytes, status: str = "400 Bad Request") -> Iterator[str]:
    """A loopback HTTP server answering every request with ``status`` and the JSON ``body`` (until closed)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = next(
                        (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")),
                        0,
                    )
                    while len(rest) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        rest += chunk
                    conn.sendall(
                        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                        "Connection: close\r\n\r\n".encode()
                        + body
                    )
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(10)
        server.close()


@pytest.fixture
def hostile_url() -> Iterator[str]:
    body = json.dumps({"message": HOSTILE, "errors": HOSTILE}).encode()
    yield from _hostile_server(body)


def _no_control(text: str) -> None:
    assert ESC not in text and "\x07" not in text and "\x9b" not in text and "\u202e" not in text, repr(text)


def test_hostile_error_message_reaches_no_terminal(cli_env: CliEnv, hostile_url: str) -> None:
    env = {"CSCAPI_TARGET": hostile_url, "CSCAPI_SCENARIOS": "crowdsecurity/ssh-bf"}
    for args in (["machines", "register"], ["-v", "machines", "register", "--json"]):
        result = cli_env.invoke(args, env=env)
        assert result.exit_code != 0
        assert "evil" in result.stderr  # the text is shown, its control characters escaped
        assert "\\x1b]0;pwned" in result.stderr
        _no_control(result.stdout)
        _no_control(result.stderr)


def test_hostile_list_names_reach_no_terminal(capi_env: CliEnv, emulator) -> None:
    register(capi_env)
    emulator.admin.publish_blocklist(HOSTILE, ["192.0.2.223"])
    try:
        for args in (["decisions", "refresh", "--force"], ["decisions", "refresh", "--force", "--json"]):
            result = capi_env.invoke(args)
            assert result.exit_code == 0, result.output
            assert "evil" in result.stdout
            _no_control(result.stdout)
            _no_control(result.stderr)
        for args in (
            ["decisions", "check", "192.0.2.223"],
            ["decisions", "stats"],
            ["decisions", "check", "--json", "192.0.2.223"],
        ):
            result = capi_env.invoke(args)
            assert result.exit_code == 0 and "evil" in result.stdout, result.output
            _no_control(result.stdout)
    finally:
        emulator.admin.remove_blocklist(HOSTILE)


def test_clean_escapes_every_control_character() -> None:
    from cscapi.cli._output import clean, esc, to_json

    assert clean("a\x1b[2Jb\x07c\x9bd\u202ee\tf") == "a\\x1b[2Jb\\x07c\\x9bd\\u202ee\tf"
    assert clean("one\ntwo") == "one\\x0atwo" and clean("one\ntwo", keep_newlines=True) == "one\ntwo"
    assert esc("[x]\x1b") == "\\[x]\\x1b"
    assert "\x9b" not in to_json({"name": "a\x9bb\x1b"}) and json.loads(to_json({"n": "a\x9bb"})) == {"n": "a\x9bb"}


# ---- 12. no storage key needed to queue; the config writer follows no symlink ----------------------------------


def test_signals_add_needs_no_storage_key(capi_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from cscapi.secrets import generate_key

    key = generate_key()
    ok(capi_env.invoke(["machines", "register", "--json"], env={"CSCAPI_STORAGE_KEY": key}))
    monkeypatch.delenv("CSCAPI_STORAGE_KEY", raising=False)
    added = ok(
        capi_env.invoke(["signals", "add", "--ip", "203.0.113.5", "--scenario", "crowdsecurity/ssh-bf", "--json"])
    )
    assert added["queued"] == 1
    assert ok(capi_env.invoke(["signals", "list", "--json"]))[0]["source"] == "203.0.113.5"
    # what needs the machine's password still says so (exit 6), with the key it works
    assert_user_error(capi_env.invoke(["signals", "push"]), 6, "CSCAPI_STORAGE_KEY")
    assert ok(capi_env.invoke(["signals", "push", "--json"], env={"CSCAPI_STORAGE_KEY": key}))["sent"] == 1


def test_config_writer_follows_no_planted_symlink(cli_env: CliEnv, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    cli_env.config_path.parent.mkdir(parents=True)
    tmp = cli_env.config_path.with_name("config.toml.tmp")
    os.symlink(victim, tmp)
    assert_user_error(cli_env.invoke(["init"]), 2, "symbolic link", str(tmp))
    assert victim.read_text() == "precious\n" and not cli_env.config_path.exists()
    # a dangling link is not followed either (O_EXCL|O_NOFOLLOW would create its target)
    tmp.unlink()
    os.symlink(tmp_path / "created-through-link", tmp)
    assert_user_error(cli_env.invoke(["init"]), 2, "symbolic link")
    assert not (tmp_path / "created-through-link").exists()
    # a stale file of ours (a crashed write) is replaced
    tmp.unlink()
    tmp.write_text("stale")
    assert cli_env.invoke(["init"]).exit_code == 0
    assert cli_env.config_path.stat().st_mode & 0o777 == 0o600 and not tmp.exists()


def test_demo_says_how_to_reach_cscapi_outside_an_active_venv(cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setenv("PATH", "/nonexistent")  # the README installs into .venv without activating it
    result = cli_env.invoke(["demo"])
    assert result.exit_code == 0, result.output
    if sys.prefix != sys.base_prefix:  # the tests run in the project's venv
        assert f"source {sys.prefix}/bin/activate" in result.stdout
