"""Optional SQLite persistence of the emulator's state (``--state FILE``), with the standard ``sqlite3`` module.

Rows hold JSON blobs; the in-memory state stays the source of truth while running and is rebuilt from the file at
start. Every call happens under the state's lock, on one connection shared across threads.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections.abc import Iterable
from typing import Any

from cscapi.errors import ConfigurationError

__all__ = ["FORMAT_VERSION", "StateFile"]

log = logging.getLogger("cscapi.emulator")

#: Version of the file layout, kept in the marker table ``cscapi_emulator``. A file without that table is only
#: adopted when it is empty, or is a state file written before the marker existed (exactly our tables and columns).
FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS machines (machine_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signals (seq INTEGER PRIMARY KEY AUTOINCREMENT, machine_id TEXT NOT NULL,
                                    body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (scope TEXT NOT NULL, value TEXT NOT NULL, scenario TEXT NOT NULL,
                                      body TEXT NOT NULL, PRIMARY KEY (scope, value, scenario));
CREATE TABLE IF NOT EXISTS tombstones (scope TEXT NOT NULL, value TEXT NOT NULL, scenario TEXT NOT NULL,
                                       body TEXT NOT NULL, PRIMARY KEY (scope, value, scenario));
CREATE TABLE IF NOT EXISTS lists (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, body TEXT NOT NULL);
"""

_TABLES = ("meta", "machines", "signals", "decisions", "tombstones", "lists", "records")
_MARKER = "cscapi_emulator"
#: The columns of every table of a state file written before the marker table (0.7.0), to recognise one.
_LEGACY_COLUMNS = {
    "meta": {"key", "value"},
    "machines": {"machine_id", "body"},
    "signals": {"seq", "machine_id", "body"},
    "decisions": {"scope", "value", "scenario", "body"},
    "tombstones": {"scope", "value", "scenario", "body"},
    "lists": {"kind", "id", "body"},
    "records": {"seq", "kind", "body"},
}


def _create_private(path: str) -> None:
    """Create ``path`` empty with mode 0600 (it will hold the token-signing secret); an existing file is left
    alone here (its mode is only tightened once it is known to be an emulator state file)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigurationError(f"cannot create the emulator state file {path}: {exc.strerror}") from None
    os.close(fd)


def _tighten_mode(path: str) -> None:
    """Drop group and other permissions of a state file written by an older emulator (0644 by default)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode) and mode & 0o077:
            os.chmod(path, stat.S_IMODE(mode) & 0o700)
            log.warning("emulator state file %s was readable by others: its mode is now %o", path, mode & 0o700)
    except OSError as exc:
        log.warning("could not restrict the permissions of emulator state file %s: %s", path, exc.strerror)


def _not_a_state(path: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"{path} is not a cscapi emulator state file ({why}); refusing to use it",
        hint="Give --state a new file name (it is created) or a file an earlier emulator run created; "
        "never a client's database such as cscapi.db.",
    )


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class StateFile:
    """The emulator's state file (``--state``): the tables behind a persistent emulator; each method is one
    transaction. Not to be confused with the remediation engine's decision store
    (``cscapi.remediation.stores.sqlite.SQLiteStore``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        _create_private(path)
        try:
            self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the emulator state file {path}: {exc}") from None
        try:
            self._check_marker()
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            self._migrate_decision_keys()
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {_MARKER} (format_version INTEGER NOT NULL)")
            if self.conn.execute(f"SELECT count(*) FROM {_MARKER}").fetchone()[0] == 0:
                self.conn.execute(f"INSERT INTO {_MARKER} (format_version) VALUES (?)", (FORMAT_VERSION,))
        except BaseException:
            self.conn.close()
            raise
        _tighten_mode(path)

    def _check_marker(self) -> None:
        """Refuse a file that is not an emulator state: not SQLite, another program's database, or a newer format.

        An empty file (or an empty SQLite database) is fine, and so is a state file from before the marker table.
        """
        try:
            tables = {name for (name,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise _not_a_state(self.path, f"not an SQLite database: {exc}") from None
        tables.discard("sqlite_sequence")
        if not tables:
            return
        if _MARKER in tables:
            row = self.conn.execute(f"SELECT max(format_version) FROM {_MARKER}").fetchone()
            version = row[0] if row else None
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise _not_a_state(self.path, f"format version {version!r}; this emulator reads up to {FORMAT_VERSION}")
            return
        foreign = sorted(tables - set(_TABLES))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise _not_a_state(self.path, f"it has tables the emulator never writes: {shown}")
        for table in tables:
            columns = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            expected = _LEGACY_COLUMNS[table]
            if columns != expected and not (
                table in {"decisions", "tombstones"} and columns == expected - {"scenario"}
            ):
                raise _not_a_state(self.path, f"table {table} has columns {', '.join(sorted(columns))}")

    def _migrate_decision_keys(self) -> None:
        """Files written before decisions were keyed by scenario (one decision per value): add the column, in place."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(decisions)")}
        if "scenario" in columns:
            return
        ops: list[tuple[str, Iterable[Any]]] = []
        for table in ("decisions", "tombstones"):
            rows = [
                (s, v, json.loads(b)["scenario"], b)
                for s, v, b in self.conn.execute(f"SELECT scope, value, body FROM {table} ORDER BY rowid")
            ]
            ops += [
                (f"DROP TABLE {table}", ()),
                (
                    f"CREATE TABLE {table} (scope TEXT NOT NULL, value TEXT NOT NULL, scenario TEXT NOT NULL, "
                    "body TEXT NOT NULL, PRIMARY KEY (scope, value, scenario))",
                    (),
                ),
            ]
            if rows:
                ops.append((f"INSERT INTO {table} (scope, value, scenario, body) VALUES (?, ?, ?, ?)", rows))
        self._tx(ops)

    def close(self) -> None:
        """Close the connection (the file stays)."""
        self.conn.close()

    def _tx(self, statements: Iterable[tuple[str, Iterable[Any]]]) -> None:
        cur = self.conn.cursor()
        cur.execute("BEGIN")
        try:
            for sql, params in statements:
                cur.executemany(sql, params) if isinstance(params, list) else cur.execute(sql, tuple(params))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # ---- writes ----------------------------------------------------------------------------------------------

    def set_meta(self, **values: Any) -> None:
        """Store small named values (secret, version, rate-limit counters...)."""
        rows = [(k, _dump(v)) for k, v in values.items()]
        self._tx([("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows)])

    def save_machine(self, machine_id: str, body: dict[str, Any]) -> None:
        """Insert or replace one machine."""
        self._tx([("INSERT OR REPLACE INTO machines (machine_id, body) VALUES (?, ?)", (machine_id, _dump(body)))])

    def add_signals(self, rows: list[dict[str, Any]]) -> None:
        """Append received signal records."""
        self._tx(
            [("INSERT INTO signals (machine_id, body) VALUES (?, ?)", [(r["machine_id"], _dump(r)) for r in rows])]
        )

    def save_decisions(
        self,
        upserts: list[dict[str, Any]],
        tombstones: list[dict[str, Any]],
        removed_tombstones: list[tuple[str, str, str]],
        version: int,
    ) -> None:
        """Apply one change of the community list: decisions added or changed, decisions turned into tombstones.

        Decisions and tombstones are keyed ``(scope, value, scenario)``."""
        ops: list[tuple[str, Iterable[Any]]] = []
        if upserts:
            keys = [(d["scope"], d["value"], d["scenario"]) for d in upserts]
            ops.append(
                (
                    "INSERT OR REPLACE INTO decisions (scope, value, scenario, body) VALUES (?, ?, ?, ?)",
                    [(*key, _dump(d)) for key, d in zip(keys, upserts)],
                )
            )
            ops.append(("DELETE FROM tombstones WHERE scope = ? AND value = ? AND scenario = ?", keys))
        if tombstones:
            keys = [(t["scope"], t["value"], t["scenario"]) for t in tombstones]
            ops.append(("DELETE FROM decisions WHERE scope = ? AND value = ? AND scenario = ?", keys))
            ops.append(
                (
                    "INSERT OR REPLACE INTO tombstones (scope, value, scenario, body) VALUES (?, ?, ?, ?)",
                    [(*key, _dump(t)) for key, t in zip(keys, tombstones)],
                )
            )
        if removed_tombstones:
            ops.append(
                ("DELETE FROM tombstones WHERE scope = ? AND value = ? AND scenario = ?", list(removed_tombstones))
            )
        ops.append(("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", ("version", _dump(version))))
        self._tx(ops)

    def save_list(self, kind: str, list_id: str, body: dict[str, Any] | None) -> None:
        """Store (or, with ``body=None``, delete) a published blocklist or allowlist."""
        if body is None:
            self._tx([("DELETE FROM lists WHERE kind = ? AND id = ?", (kind, list_id))])
        else:
            self._tx([("INSERT OR REPLACE INTO lists (kind, id, body) VALUES (?, ?, ?)", (kind, list_id, _dump(body)))])

    def add_record(self, kind: str, body: dict[str, Any]) -> None:
        """Append one received payload (metrics, usage metrics, enrollment, deleted or synced decisions)."""
        self._tx([("INSERT INTO records (kind, body) VALUES (?, ?)", (kind, _dump(body)))])

    def wipe(self) -> None:
        """Delete everything (admin reset)."""
        self._tx([(f"DELETE FROM {table}", ()) for table in _TABLES])  # the marker table stays

    # ---- reads -----------------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """Every meta value."""
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every body of ``machines``, ``signals``, ``decisions`` or ``tombstones``, in insertion order."""
        if table not in {"machines", "signals", "decisions", "tombstones"}:
            raise ValueError(table)
        order = "seq" if table == "signals" else "rowid"
        return [json.loads(body) for (body,) in self.conn.execute(f"SELECT body FROM {table} ORDER BY {order}")]

    def lists(self, kind: str) -> list[dict[str, Any]]:
        """Every published list of a kind."""
        sql = "SELECT body FROM lists WHERE kind = ? ORDER BY rowid"
        return [json.loads(body) for (body,) in self.conn.execute(sql, (kind,))]

    def records(self) -> list[tuple[str, dict[str, Any]]]:
        """Every received payload with its kind."""
        return [
            (kind, json.loads(body)) for kind, body in self.conn.execute("SELECT kind, body FROM records ORDER BY seq")
        ]


#: The name this class had before 0.8 (it clashed with the remediation engine's ``SQLiteStore``); kept for imports.
SQLiteStore = StateFile
