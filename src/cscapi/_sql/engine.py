"""The plumbing every part of :class:`cscapi.sql_storage.SQLStorage` shares: the engine and its pool, transactions,
retries on deadlocks, database errors as :class:`StorageError`, id lists, and dropping pooled connections after fork().
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import BigInteger, ColumnElement, Connection, Engine, any_, cast, literal
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from cscapi.errors import CAPIError, StorageError, ValidationError
from cscapi.models import Signal

from . import schema
from .bulk import placeholder
from .dialects import build_engine, is_memory_sqlite, mask_url, normalize_url

__all__ = ["CHUNK", "RETRIES", "SQLEngine", "chunks", "describe", "int_ids", "is_transient", "pg_ids", "positive"]

_S = schema.signals
RETRIES = 5  # attempts of a transaction the database aborted as a deadlock
CHUNK = 500  # ids per IN (...) list: well under every database's bound-parameter limit
_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    """``items`` in slices of at most ``size``: one ``IN (...)`` list each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pg_ids(ids: Sequence[int]) -> ColumnElement[Any]:
    """``ANY`` of one ``bigint[]`` parameter sent as array text: psycopg then parses a short statement with one
    parameter instead of one bind per id (rendering and parsing those dominated a large send)."""
    text = "{" + ",".join(map(str, ids)) + "}"
    return any_(cast(literal(text), ARRAY(BigInteger)))


def describe(exc: SQLAlchemyError) -> str:
    """A one-line account of a database error: the driver's message, never the SQL parameters."""
    orig = getattr(exc, "orig", None)
    source = orig if orig is not None else exc
    lines = [line.strip() for line in str(source).splitlines() if line.strip()]
    message = " ".join(lines[:2])[:300] if lines else type(source).__name__
    if orig is not None:
        message = f"{type(orig).__name__}: {message}"
    return message


def is_transient(exc: BaseException | None) -> bool:
    """True for errors that a retry of the whole transaction cures: deadlocks and lock-wait timeouts."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) in {"40P01", "40001", "55P03"}:  # PostgreSQL
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return len(args) > 0 and args[0] in {1213, 1205}  # MariaDB/MySQL: deadlock, lock wait timeout


def positive(seconds: Any) -> bool:
    """True for a finite number of seconds above zero."""
    return (
        isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds) and seconds > 0
    )


def int_ids(values: Sequence[int] | None, what: str) -> list[int] | None:
    """``values`` as integer alert ids (None stays None), or a ValidationError naming ``what``."""
    if values is None:
        return None
    try:  # Signal objects are accepted too (an older legacy API passed them)
        return [int(v.alert_id if isinstance(v, Signal) else v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationError(f"{what} must be a list of integer alert ids", field=what) from None


class SQLEngine:
    """The engine and transaction plumbing that the parts of ``SQLStorage`` (queue, machines, locks, legacy) share.

    ``_open_engine`` sets it up; every public call then runs in its own transaction (``_tx``, or ``_run`` to retry
    a deadlock), on a connection checked out of the pool, so one instance is safe to share between threads.
    """

    engine: Engine
    _url: URL
    _where: str
    _backend: str
    _mark: str | None
    _read_engine: Engine
    _write_engine: Engine
    _memory: bool
    _closed: bool
    _serial: contextlib.AbstractContextManager[Any]
    _skip_locked: bool

    def _open_engine(self, connection_string: str, engine_options: Mapping[str, Any] | None) -> None:
        """Build the engine (and its pool) for ``connection_string``; no connection is made yet."""
        self._url = normalize_url(connection_string)
        self._where = mask_url(self._url)
        self.engine = build_engine(self._url, engine_options)
        self._backend = self.engine.dialect.name
        self._mark = placeholder(str(getattr(self.engine.dialect.dbapi, "paramstyle", "")))
        # preserve_rowcount: SQLAlchemy 2.1 only keeps rowcount for UPDATE/DELETE unless asked (INSERT IGNORE counts).
        self._read_engine = self.engine.execution_options(preserve_rowcount=True)
        self._write_engine = self.engine.execution_options(preserve_rowcount=True, cscapi_write=True)
        # One in-memory SQLite connection is shared by every thread: serialise the transactions on it.
        self._memory = is_memory_sqlite(self._url)
        self._closed = False
        self._serial = threading.RLock() if self._memory else contextlib.nullcontext()
        self._skip_locked = False

    @contextlib.contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except CAPIError:
            raise
        except SQLAlchemyError as exc:
            message = describe(exc)
            password = self._url.password
            if isinstance(password, str) and len(password) >= 4:  # a driver echoing the DSN: mask it too
                message = message.replace(password, "***")
            raise StorageError(f"{operation} failed on {self._where}: {message}") from exc

    @contextlib.contextmanager
    def _tx(self, operation: str, *, write: bool = True) -> Iterator[Connection]:
        """A connection in a transaction (``BEGIN IMMEDIATE`` on SQLite when ``write``), errors wrapped."""
        if self._closed:
            raise StorageError(f"{operation} failed: this in-memory storage was closed and its data is gone.")
        engine = self._write_engine if write else self._read_engine
        with self._errors(operation), self._serial, engine.connect() as conn, conn.begin():
            yield conn

    def _alert_id_in(self, ids: Sequence[int]) -> Iterator[ColumnElement[bool]]:
        """``alert_id`` among ``ids``, as few conditions as the dialect allows: one array parameter on PostgreSQL,
        ``IN`` lists of at most ``CHUNK`` binds elsewhere. ``ids`` must be integers (see ``int_ids``)."""
        if not ids:
            return
        if self._backend == "postgresql":
            yield _S.c.alert_id == pg_ids(ids)
            return
        for chunk in chunks(ids):
            yield _S.c.alert_id.in_(chunk)

    def _run(self, operation: str, body: Callable[[Connection], _T]) -> _T:
        """Run ``body`` in a write transaction, retried a few times when the database reports a deadlock."""
        for attempt in range(RETRIES):
            try:
                with self._tx(operation) as conn:
                    return body(conn)
            except StorageError as exc:
                if attempt + 1 < RETRIES and is_transient(exc.__cause__):
                    time.sleep(random.uniform(0, 0.005 * 2**attempt))
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover


class _ForkGuard:
    """After ``fork()``, a child must not reuse the parent's pooled connections: it drops them (without closing them:
    they are the parent's).

    One ``os.register_at_fork`` hook per process, registered when the first storage is tracked (not at import: a
    program that never opens a storage gets no hook); storages are tracked weakly, so a collected one is forgotten.
    """

    def __init__(self) -> None:
        self._storages: weakref.WeakSet[SQLEngine] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.registered = False

    def track(self, storage: SQLEngine) -> None:
        """Drop ``storage``'s pooled connections in every child forked from now on."""
        with self._lock:
            if not self.registered and hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=self._reset)
                self.registered = True
            self._storages.add(storage)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork
        for storage in list(self._storages):
            storage.engine.dispose(close=False)


fork_guard = _ForkGuard()
