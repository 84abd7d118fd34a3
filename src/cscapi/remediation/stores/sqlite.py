"""``sqlite:///path.db``: the decision state shared by the processes of one host (stdlib ``sqlite3``, WAL mode).

One row holds the current version and its serialised state (written in one transaction, read in one SELECT); the
refresh lock is a row with a token and an expiry; counters are rows updated with ``UPSERT`` arithmetic, so
concurrent increments from several processes are never lost.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from cscapi.errors import ConfigurationError, DecisionStoreError
from cscapi.redact import mask_url
from cscapi.remediation.state import State, StateFormatError, decode_state, encode_state
from cscapi.remediation.stores.base import (
    CACHE_PREFIX,
    Counters,
    DecisionStore,
    LocalDecisions,
    _pack,
    bucket_ttl,
    leak,
    log,
)

_CACHE_SWEEP = 1000  # cache_put calls between two sweeps of the expired cache entries

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cscapi_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), version TEXT NOT NULL, blob BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cscapi_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL);
CREATE TABLE IF NOT EXISTS cscapi_counters (
    origin TEXT NOT NULL, remediation TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (origin, remediation)
);
CREATE TABLE IF NOT EXISTS cscapi_local_decisions (
    ip TEXT NOT NULL, type TEXT NOT NULL, until REAL NOT NULL, scenario TEXT, PRIMARY KEY (ip, type)
);
CREATE TABLE IF NOT EXISTS cscapi_buckets (
    key TEXT PRIMARY KEY, level REAL NOT NULL, last REAL NOT NULL, until REAL NOT NULL, expires REAL NOT NULL
);
"""


def path_from_uri(uri: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not uri.startswith("sqlite:///"):
        raise ConfigurationError(
            f"a SQLite decision store URI looks like sqlite:///path/decisions.db, not {mask_url(uri)!r}"
        )
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        raise ConfigurationError("the SQLite decision store needs a file path (use memory:// for one process)")
    return path


class SQLiteStore(DecisionStore):
    """Decision store in a SQLite file; safe for threads (a connection each) and processes (WAL, busy timeout).

    Why this size: one short method per operation of the ``DecisionStore`` contract (state, lock, counters, meta,
    cache, local decisions, buckets), each a statement or one transaction.
    """

    shared = True

    def __init__(self, uri: str, *, timeout: float = 10.0) -> None:
        self.uri = mask_url(uri)
        self.path = path_from_uri(uri)
        self._timeout = timeout
        self._local = threading.local()
        parent = Path(self.path).parent
        if not parent.exists():
            raise ConfigurationError(f"the directory of the SQLite decision store does not exist: {parent}")
        self._run(lambda c: c.executescript(_SCHEMA))

    # ---- connection handling --------------------------------------------------------------------------------

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        file_id = self._file_id()
        if conn is not None and getattr(self._local, "file_id", None) != file_id:
            # the file was replaced or deleted under us: an open connection would keep reading the old one forever
            log.warning("decision store %s: the file was replaced; reopening it", self.path)
            if getattr(self._local, "pid", None) == os.getpid():
                conn.close()
            conn = None
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._local.conn, self._local.pid, self._local.file_id = conn, os.getpid(), self._file_id()
        return conn

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._conn())
        except sqlite3.Error as exc:
            raise DecisionStoreError(f"SQLite decision store {self.path!r} failed: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise DecisionStoreError(f"SQLite decision store {self.path!r} failed: {exc}") from exc

    # ---- state ----------------------------------------------------------------------------------------------

    def version(self) -> str | None:
        row = self._run(lambda c: c.execute("SELECT version FROM cscapi_state WHERE id = 1").fetchone())
        return None if row is None else str(row[0])

    def load(self) -> tuple[str | None, State | None]:
        row = self._run(lambda c: c.execute("SELECT version, blob FROM cscapi_state WHERE id = 1").fetchone())
        if row is None:
            return None, None
        if not row[1]:  # a cleared store: a version, no state
            return str(row[0]), None
        try:
            return str(row[0]), decode_state(row[1])
        except StateFormatError as exc:
            log.warning("decision store %s: %s; starting from an empty state", self.path, exc)
            return str(row[0]), None

    def commit(self, state: State, version: str, token: str, clean: bool) -> None:
        blob = encode_state(state)
        with self._tx() as c:
            row = c.execute("SELECT value FROM cscapi_kv WHERE key = 'lock'").fetchone()
            if row is None or row[0] != token:
                raise DecisionStoreError("the refresh lock was lost before the commit (cleared or expired)")
            c.execute(
                "INSERT INTO cscapi_state (id, version, blob) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version, blob = excluded.blob",
                (version, blob),
            )
            if clean:
                c.execute("DELETE FROM cscapi_kv WHERE key = 'dirty'")

    def is_dirty(self) -> bool:
        return self._run(lambda c: c.execute("SELECT 1 FROM cscapi_kv WHERE key = 'dirty'").fetchone()) is not None

    def mark_dirty(self) -> None:
        self.set_meta("dirty", "1", key_is_internal=True)

    def acquire_lock(self, token: str, ttl: float) -> bool:
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT expires FROM cscapi_kv WHERE key = 'lock'").fetchone()
            if row is not None and row[0] is not None and row[0] > now:
                return False
            c.execute(
                "INSERT INTO cscapi_kv (key, value, expires) VALUES ('lock', ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
                (token, now + ttl),
            )
            return True

    def release_lock(self, token: str) -> None:
        self._run(lambda c: c.execute("DELETE FROM cscapi_kv WHERE key = 'lock' AND value = ?", (token,)))

    # ---- counters and meta ----------------------------------------------------------------------------------

    def incr_counter(self, origin: str, remediation: str, delta: int = 1) -> None:
        self._run(
            lambda c: c.execute(
                "INSERT INTO cscapi_counters (origin, remediation, count) VALUES (?, ?, ?) "
                "ON CONFLICT (origin, remediation) DO UPDATE SET count = count + excluded.count",
                (origin, remediation, delta),
            )
        )

    def incr_counters(self, counts: Counters, batch_id: str | None = None) -> None:
        """Every count in one transaction (all added, or none on a failure: the outcome is known, no id needed)."""
        if not counts:
            return
        with self._tx() as c:
            c.executemany(
                "INSERT INTO cscapi_counters (origin, remediation, count) VALUES (?, ?, ?) "
                "ON CONFLICT (origin, remediation) DO UPDATE SET count = count + excluded.count",
                [(o, r, n) for (o, r), n in counts.items()],
            )

    # ---- local decisions ------------------------------------------------------------------------------------

    def add_local_decision(self, ip: str, type_: str, until: float, scenario: str) -> None:
        """Upsert the decision (the later expiry wins), drop the expired ones and bump the local version, in one
        transaction."""
        with self._tx() as c:
            c.execute("DELETE FROM cscapi_local_decisions WHERE until <= ?", (time.time(),))
            c.execute(
                "INSERT INTO cscapi_local_decisions (ip, type, until, scenario) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (ip, type) DO UPDATE SET until = MAX(until, excluded.until), scenario = CASE WHEN "
                "excluded.until > until THEN excluded.scenario ELSE scenario END",
                (ip, type_, until, scenario),
            )
            self._bump_local(c)

    @staticmethod
    def _bump_local(c: sqlite3.Connection) -> None:
        c.execute(
            "INSERT INTO cscapi_kv (key, value) VALUES ('local_version', '1') "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
        )

    def leak_bucket(self, key: str, capacity: int, leak_seconds: float, blackhole: float, now: float) -> bool:
        """Read, leak, pour and write back in one ``BEGIN IMMEDIATE`` transaction (workers serialise on it); every
        1000 pours, delete the buckets past their expiry."""
        with self._tx() as c:
            row = c.execute("SELECT level, last, until FROM cscapi_buckets WHERE key = ?", (key,)).fetchone()
            level, last, until = (0.0, now, 0.0) if row is None else (float(row[0]), float(row[1]), float(row[2]))
            over, level, until = leak(level, last, until, now, capacity, leak_seconds, blackhole)
            c.execute(
                "INSERT INTO cscapi_buckets (key, level, last, until, expires) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET level = excluded.level, last = excluded.last, "
                "until = excluded.until, expires = excluded.expires",
                (key, level, now, until, now + bucket_ttl(capacity, leak_seconds, blackhole)),
            )
            self._pours = getattr(self, "_pours", 0) + 1
            if self._pours % 1000 == 0:
                c.execute("DELETE FROM cscapi_buckets WHERE expires <= ?", (now,))
        return over

    def local_version(self) -> str | None:
        row = self._run(lambda c: c.execute("SELECT value FROM cscapi_kv WHERE key = 'local_version'").fetchone())
        return None if row is None else str(row[0])

    def local_decisions(self, now: float) -> tuple[str | None, LocalDecisions]:
        def read(c: sqlite3.Connection) -> tuple[str | None, LocalDecisions]:
            c.execute("BEGIN")
            try:
                row = c.execute("SELECT value FROM cscapi_kv WHERE key = 'local_version'").fetchone()
                rows = c.execute(
                    "SELECT ip, type, until, scenario FROM cscapi_local_decisions WHERE until > ?", (now,)
                ).fetchall()
            finally:
                c.execute("COMMIT")
            live = [(str(ip), str(t), float(u), str(s or "")) for ip, t, u, s in rows]
            return (None if row is None else str(row[0])), live

        return self._run(read)

    def counters(self) -> Counters:
        rows = self._run(lambda c: c.execute("SELECT origin, remediation, count FROM cscapi_counters").fetchall())
        return {(o, r): int(n) for o, r, n in rows if n}

    def decr_counters(self, pushed: Counters) -> None:
        with self._tx() as c:
            c.executemany(
                "UPDATE cscapi_counters SET count = count - ? WHERE origin = ? AND remediation = ?",
                [(n, o, r) for (o, r), n in pushed.items()],
            )
            c.execute("DELETE FROM cscapi_counters WHERE count = 0")

    def get_meta(self, key: str) -> str | None:
        row = self._run(lambda c: c.execute("SELECT value FROM cscapi_kv WHERE key = ?", ("meta:" + key,)).fetchone())
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str, *, key_is_internal: bool = False) -> None:
        name = key if key_is_internal else "meta:" + key
        self._run(
            lambda c: c.execute(
                "INSERT INTO cscapi_kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        )

    def cache_put(self, key: str, value: str, expires_at: float, now: float) -> None:
        """Upsert the entry; every ``_CACHE_SWEEP`` puts, delete the expired ones (the table stays bounded)."""
        self.set_meta(CACHE_PREFIX + key, _pack(value, expires_at))
        self._cache_puts = getattr(self, "_cache_puts", 0) + 1
        if self._cache_puts % _CACHE_SWEEP == 0:
            self._run(
                lambda c: c.execute(
                    "DELETE FROM cscapi_kv WHERE key LIKE ? AND "
                    "CAST(substr(value, 1, instr(value, char(9)) - 1) AS REAL) <= ?",
                    ("meta:" + CACHE_PREFIX + "%", now),
                )
            )

    def clear(self) -> None:
        # a "cleared" version with no state: other workers know the store was emptied on purpose, not lost
        cleared = f"cleared-{time.time_ns():x}-{uuid.uuid4().hex[:12]}"
        with self._tx() as c:
            c.execute(
                "INSERT INTO cscapi_state (id, version, blob) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version, blob = excluded.blob",
                (cleared, b""),
            )
            c.execute("DELETE FROM cscapi_kv WHERE key IN ('lock', 'dirty')")
            if c.execute("DELETE FROM cscapi_local_decisions").rowcount:
                self._bump_local(c)

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None
