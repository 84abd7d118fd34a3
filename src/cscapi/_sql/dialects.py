"""What differs between SQLite, PostgreSQL and MariaDB/MySQL: URLs, engine setup, insert-or-ignore, row locking.

Every engine hook here is attached to *our* engine only (``event.listen(engine, ...)``), never to the ``Engine``
class: the host application's own engines stay untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Insert, Table, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from cscapi import redact
from cscapi.errors import ConfigurationError

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "build_engine",
    "insert_ignore",
    "is_memory_sqlite",
    "mask_url",
    "normalize_url",
    "supports_skip_locked",
]

logger = logging.getLogger("cscapi.storage")

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Bare schemes are mapped to the drivers cscapi ships extras for.
_DRIVER_FOR_SCHEME = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_EXTRA_FOR_BACKEND = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


def mask_url(url: str | URL) -> str:
    """The URL with its password (userinfo or query parameter) replaced by ``***``: safe for logs, errors, reprs.

    A thin adapter, not a second masker: it takes a SQLAlchemy ``URL`` too (rendered as SQLAlchemy reads it) and says
    so when SQLAlchemy cannot parse the text; the masking is :func:`cscapi.redact.mask_url`'s.
    """
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        return "<unparsable database URL>"
    return redact.mask_url(parsed.render_as_string(hide_password=False))


def normalize_url(connection_string: str) -> URL:
    """Parse the connection string; map ``postgresql://`` to psycopg 3 and ``mysql://`` to PyMySQL."""
    if not isinstance(connection_string, str) or not connection_string.strip():
        raise ConfigurationError(
            "The storage connection string is empty.",
            hint="Pass e.g. 'sqlite:///cscapi.db', 'postgresql+psycopg://user:pw@host/db' or 'mysql+pymysql://...'.",
        )
    try:
        url = make_url(connection_string.strip())
    except (ArgumentError, ValueError):
        raise ConfigurationError(
            "The storage connection string cannot be parsed as a database URL.",
            hint="Use the form 'dialect+driver://user:password@host:port/database', e.g. 'sqlite:///cscapi.db'.",
        ) from None
    mapped = _DRIVER_FOR_SCHEME.get(url.drivername)
    if mapped is not None:
        url = url.set(drivername=mapped)
    backend = url.get_backend_name()
    if backend not in {"sqlite", "postgresql", "mysql", "mariadb"}:
        raise ConfigurationError(
            f"Unsupported storage back end {backend!r} in {mask_url(url)}.",
            hint="cscapi stores signals in SQLite, PostgreSQL or MariaDB/MySQL.",
        )
    if backend in {"mysql", "mariadb"} and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


def is_memory_sqlite(url: URL) -> bool:
    """True for ``sqlite://`` and ``sqlite:///:memory:`` (one in-process database)."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    if database in {"", ":memory:"}:
        return True
    in_memory = database.startswith("file::memory:") or "mode=memory" in database or url.query.get("mode") == "memory"
    return database.startswith("file:") and in_memory


def _create_private_sqlite_file(url: URL) -> None:
    """Create a new SQLite file with mode 0600 before SQLite does (it would use the umask, often 0644)."""
    database = url.database or ""
    if database.startswith("file:") or url.query.get("uri"):
        return  # SQLite URI filenames: the caller controls the file
    path = Path(database)  # as SQLite will open it (no ~ expansion)
    if path.exists():
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                logger.warning(
                    "The SQLite database %s is accessible to other users (mode %04o) and holds machine credentials; "
                    "consider: chmod 600 %s",
                    path,
                    mode,
                    path,
                )
        return
    if not path.parent.is_dir():
        raise ConfigurationError(
            f"The directory of the SQLite database {str(path)!r} does not exist.",
            hint="Create the directory first, or point the connection string at an existing one.",
        )
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # created concurrently by another process: fine
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot create the SQLite database {str(path)!r}: {exc.strerror}.",
            hint="Check the directory's permissions.",
        ) from None
    os.close(fd)


def _enable_wal(cursor: Any) -> None:
    """Switch the database file to WAL (persistent: usually already done). The switch needs a moment of exclusive
    access and SQLite reports "database is locked" at once, without waiting, when several connections open a new
    file together: retry it for up to the busy timeout."""
    import sqlite3  # only SQLite connections get here (a Python built without sqlite3 may still use PostgreSQL)

    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0.001, 0.01))


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Per-connection SQLite setup: we issue BEGIN ourselves, WAL, relaxed fsync, foreign keys, busy wait."""
    # Let SQLAlchemy's "begin" event (below) open transactions, so DDL and BEGIN IMMEDIATE behave as written.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    """Open write transactions with BEGIN IMMEDIATE (take the write lock first: no deadlock on upgrade)."""
    if conn.get_execution_options().get("cscapi_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


ENGINE_LOGGING_NAME = "cscapi"
"""Our engines log as ``sqlalchemy.engine.Engine.cscapi`` (statements at INFO, parameters hidden, never rows)."""


def _drop_debug(record: logging.LogRecord) -> bool:
    """Filter of our engines' logger: SQLAlchemy logs each result row at DEBUG, secrets included."""
    return record.levelno > logging.DEBUG


def _quiet_rows(engine: Engine) -> None:
    """Keep result rows of ``engine`` out of the logs even when ``sqlalchemy.engine`` is at DEBUG.

    The filter sits on this engine's own named logger (``logging_name``), so other engines and the logging
    configuration of the process are untouched; SQL statements still log at INFO with their parameters hidden.
    """
    named = getattr(engine.logger, "logger", engine.logger)  # echo=... wraps the named logger in an InstanceLogger
    if isinstance(named, logging.Logger) and _drop_debug not in named.filters:
        named.addFilter(_drop_debug)


def build_engine(url: URL, engine_options: Mapping[str, Any] | None = None) -> Engine:
    """Create the engine for ``url`` with per-dialect defaults; ``engine_options`` override them."""
    backend = url.get_backend_name()
    # hide_parameters: never echo bound values (tokens) in errors or INFO logs; logging_name: our own engine logger,
    # whose DEBUG records (result rows: plaintext tokens of an unencrypted storage) _drop_debug filters out.
    options: dict[str, Any] = {"hide_parameters": True, "logging_name": ENGINE_LOGGING_NAME}
    if backend == "sqlite":
        options["connect_args"] = {"check_same_thread": False}
        if is_memory_sqlite(url):
            options["poolclass"] = StaticPool
        else:
            _create_private_sqlite_file(url)
    else:
        options["pool_pre_ping"] = True
        options["pool_recycle"] = 3600
        if backend in {"mysql", "mariadb"}:
            # READ COMMITTED: no gap locks, so concurrent claimers skip each other's rows instead of waiting.
            options["isolation_level"] = "READ COMMITTED"
    if engine_options:
        extra = dict(engine_options)
        if "connect_args" in extra and "connect_args" in options:
            options["connect_args"] = {**options["connect_args"], **extra.pop("connect_args")}
        options.update(extra)
    try:
        engine = create_engine(url, **options)
    except ImportError as exc:
        extra_name = _EXTRA_FOR_BACKEND.get(backend, "all")
        shipped = _DRIVER_FOR_SCHEME.get(backend, "")
        if url.drivername == shipped:
            hint = f"Install it with: pip install 'cscapi[{extra_name}]'"
        else:
            hint = (
                f"Install the package that provides it, or use the driver cscapi ships: "
                f"{shipped}:// (pip install 'cscapi[{extra_name}]')."
            )
        raise ConfigurationError(
            f"The database driver for {url.drivername!r} is not installed ({exc.name or exc}).", hint=hint
        ) from None
    except (ArgumentError, TypeError) as exc:
        raise ConfigurationError(f"Invalid storage engine options for {mask_url(url)}: {exc}") from None
    _quiet_rows(engine)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def insert_ignore(engine: Engine, table: Table) -> Insert:
    """``INSERT`` that silently skips rows whose primary or unique key already exists, in this dialect's words."""
    backend = engine.dialect.name
    if backend == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    if backend == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    return table.insert().prefix_with("IGNORE")


def supports_skip_locked(engine: Engine) -> bool:
    """True when ``SELECT ... FOR UPDATE SKIP LOCKED`` is available (PostgreSQL, MariaDB >= 10.6, MySQL >= 8)."""
    dialect = engine.dialect
    if dialect.name == "postgresql":
        return True
    if dialect.name in {"mysql", "mariadb"}:
        version = dialect.server_version_info or ()
        if getattr(dialect, "is_mariadb", False):
            return tuple(version[:2]) >= (10, 6)
        return tuple(version[:1]) >= (8,)
    return False
