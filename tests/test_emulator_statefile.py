"""``--state FILE`` safety: a file that is not an emulator state is refused (never adopted, never changed), state files
are private (0600), machine passwords are hashed with scrypt, and the admin token can stay off the command line."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cscapi.emulator import EmulatorConfig, LoginRateLimit
from cscapi.emulator.embedded import is_loopback_host
from cscapi.emulator.persistence import FORMAT_VERSION
from cscapi.emulator.server import ADMIN_TOKEN_ENV, admin_token_from, build_parser, config_from_args
from cscapi.emulator.state import EmulatorState
from cscapi.errors import ConfigurationError

MID = "s" * 48


def state_at(path: Path) -> EmulatorState:
    return EmulatorState(
        EmulatorConfig(community_size=5, state_path=str(path), login_rate_limit=LoginRateLimit(enabled=False))
    )


def client_database(path: Path) -> bytes:
    """A real client's ``cscapi.db`` (the library's storage, no network) with a machine and a queued signal."""
    from cscapi.models import Machine
    from cscapi.sql_storage import SQLStorage
    from cscapi.utils import create_signal

    storage = SQLStorage(f"sqlite:///{path}")
    storage.update_or_create_machine(Machine(machine_id="c" * 48, password="pw"))
    storage.add_signals([create_signal("192.0.2.1", "crowdsecurity/ssh-bf", None, "c" * 48)])
    storage.close()
    return path.read_bytes()


def test_a_clients_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "cscapi.db"
    before = client_database(db)
    mode = stat.S_IMODE(db.stat().st_mode)
    with pytest.raises(ConfigurationError) as info:
        state_at(db)
    assert "not a cscapi emulator state file" in str(info.value) and "tables the emulator never writes" in str(
        info.value
    )
    assert db.read_bytes() == before and stat.S_IMODE(db.stat().st_mode) == mode
    # the server refuses it with a clear error and a non-zero exit status, before listening
    proc = subprocess.run(
        [sys.executable, "-m", "cscapi.emulator", "--port", "0", "--state", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not a cscapi emulator state file" in proc.stderr and "Traceback" not in proc.stderr
    assert "listening" not in proc.stdout
    assert db.read_bytes() == before


def test_other_files_are_refused_and_new_or_empty_ones_accepted(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    os.chmod(text, 0o644)
    with pytest.raises(ConfigurationError, match="not an SQLite database"):
        state_at(text)
    assert text.read_text() == "hello\n" and stat.S_IMODE(text.stat().st_mode) == 0o644  # not even chmod-ed
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("CREATE TABLE cscapi_emulator (format_version INTEGER NOT NULL)")
        conn.execute("INSERT INTO cscapi_emulator VALUES (?)", (FORMAT_VERSION + 1,))
    with pytest.raises(ConfigurationError, match="format version"):
        state_at(newer)
    empty = tmp_path / "empty.db"
    empty.touch()
    state_at(empty).close()
    fresh = tmp_path / "sub" / "new.db"
    fresh.parent.mkdir()
    state = state_at(fresh)
    state.register(MID, "pw")
    state.close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600  # it holds the token-signing secret
    with sqlite3.connect(fresh) as conn:
        assert conn.execute("SELECT format_version FROM cscapi_emulator").fetchall() == [(FORMAT_VERSION,)]
    reopened = state_at(fresh)  # its own file: accepted, with its machine
    assert MID in reopened.machines
    reopened.reset()  # /admin/reset keeps the marker
    reopened.close()
    state_at(fresh).close()


def test_a_state_file_from_before_the_marker_is_adopted_and_made_private(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    state = state_at(path)
    state.register(MID, "pw")
    state.close()
    with sqlite3.connect(path) as conn:  # what 0.7.0 wrote: the same tables, no marker, mode 0644
        conn.execute("DROP TABLE cscapi_emulator")
        body = json.loads(conn.execute("SELECT body FROM machines").fetchone()[0])
        body["password_salt"] = "ab12"
        body["password_hash"] = hashlib.sha256(b"ab12:pw").hexdigest()  # 0.7.0's salted SHA-256
        conn.execute("UPDATE machines SET body = ?", (json.dumps(body),))
    os.chmod(path, 0o644)
    old = state_at(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    old.login(MID, "pw", [], "127.0.0.1")  # the old hash still works, and is upgraded to scrypt
    assert old.machines[MID].password_hash.startswith("scrypt$")
    old.close()


def test_machine_passwords_are_hashed_with_scrypt_and_a_salt_each(tmp_path: Path) -> None:
    path = tmp_path / "emu.db"
    state = state_at(path)
    state.register(MID, "same-password")
    state.register("t" * 48, "same-password")
    state.close()
    with sqlite3.connect(path) as conn:
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM machines")]
    hashes = [b["password_hash"] for b in bodies]
    assert all(h.startswith("scrypt$") for h in hashes) and hashes[0] != hashes[1]
    _, n, r, p, key = hashes[0].split("$")
    assert int(n) >= 2**13 and int(r) == 8 and int(p) == 1 and len(key) == 64
    assert all(len(b["password_salt"]) == 32 for b in bodies)  # 16 random bytes each
    raw = path.read_bytes()
    assert b"same-password" not in raw
    again = state_at(path)
    again.login(MID, "same-password", [], "127.0.0.1")
    with pytest.raises(Exception, match="invalid machine_id or password"):
        again.login(MID, "other", [], "127.0.0.1")
    again.close()


def test_admin_token_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    parse = build_parser().parse_args
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    assert config_from_args(parse(["--admin-token-file", str(token_file)])).admin_token == "from-the-file"
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-the-env")
    assert config_from_args(parse([])).admin_token == "from-the-env"
    assert config_from_args(parse(["--admin-token-file", str(token_file)])).admin_token == "from-the-file"
    assert config_from_args(parse(["--admin-token", "from-argv"])).admin_token == "from-argv"
    assert admin_token_from(parse([]))[1] == f"${ADMIN_TOKEN_ENV}"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        config_from_args(parse(["--admin-token-file", str(tmp_path / "empty")]))
    with pytest.raises(ConfigurationError, match="cannot read"):
        config_from_args(parse(["--admin-token-file", str(tmp_path / "missing")]))


def test_server_takes_the_token_from_a_file_and_keeps_it_off_the_banner(tmp_path: Path) -> None:
    import httpx

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-admin-token\n")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "cscapi.emulator", "--port", "0", "--community-size", "1"),
            *("--admin-token-file", str(token_file), "--log-level", "warning"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        banner = proc.stdout.readline()
        url = first.split("listening on ", 1)[1].split()[0]
        assert "s3cret" not in banner and f"(from {token_file})" in banner
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("admin/state").status_code == 401
            r = http.get("admin/state", headers={"Authorization": "Bearer s3cret-admin-token"})
            assert r.status_code == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "s3cret" not in out + err and "warning: listening" not in err  # loopback: no warning


def test_non_loopback_hosts_are_told_apart() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.org"):  # only classified, never bound
        assert not is_loopback_host(host), host
