"""The durable signal queue and machine store on SQL: SQLite (default), PostgreSQL and MariaDB/MySQL.

``SQLStorage`` implements :class:`cscapi.storage.StorageInterface` on SQLAlchemy 2 Core. Every call checks a
connection out of the engine's pool and runs in its own transaction, so one instance is safe to share between
threads (and ``asyncio.to_thread``); processes each open their own instance on the same database. Concurrent
senders never claim the same signal: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB >= 10.6, ``BEGIN
IMMEDIATE`` on SQLite. See ``docs/storage.md``.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import random
import secrets as _secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    and_,
    any_,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import SQLAlchemyError

from cscapi._sql import schema
from cscapi._sql.bulk import PG_BULK_INSERT, json_batches, placeholder, raw_insert, raw_lookup, row_tuples
from cscapi._sql.codec import check_length, signal_from_row, signal_row
from cscapi._sql.dialects import (
    build_engine,
    insert_ignore,
    is_memory_sqlite,
    mask_url,
    normalize_url,
    supports_skip_locked,
)
from cscapi._sql.migrations import current_version, ensure_schema
from cscapi.errors import CAPIError, StorageError, ValidationError
from cscapi.models import Machine, QueueCounts, Signal
from cscapi.storage import Claim, StorageInterface
from cscapi.storage_crypto import KEY_ENV_VAR, SecretBox, is_encrypted, key_from_env, new_salt
from cscapi.timeutil import utcnow

__all__ = ["SQLStorage"]


_S = schema.signals
_M = schema.machines
_L = schema.login_locks
_META = schema.storage_meta
_RETRIES = 5
_MAX_REASON = 4000  # characters of a server's reason kept with a quarantined signal
_CHUNK = 500  # ids per IN (...) list: well under every database's bound-parameter limit
_KEY_CHECK = "cscapi-storage-key-check"
_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pg_ids(ids: Sequence[int]) -> ColumnElement[Any]:
    """``ANY`` of one ``bigint[]`` parameter sent as array text: psycopg then parses a short statement with one
    parameter instead of one bind per id (rendering and parsing those took up to half of a large send)."""
    text = "{" + ",".join(map(str, ids)) + "}"
    return any_(cast(literal(text), ARRAY(BigInteger)))


def _describe(exc: SQLAlchemyError) -> str:
    """A one-line account of a database error: the driver's message, never the SQL parameters."""
    orig = getattr(exc, "orig", None)
    source = orig if orig is not None else exc
    lines = [line.strip() for line in str(source).splitlines() if line.strip()]
    message = " ".join(lines[:2])[:300] if lines else type(source).__name__
    if orig is not None:
        message = f"{type(orig).__name__}: {message}"
    return message


def _is_transient(exc: BaseException | None) -> bool:
    """True for errors that a retry of the whole transaction cures: deadlocks and lock-wait timeouts."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) in {"40P01", "40001", "55P03"}:  # PostgreSQL
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return len(args) > 0 and args[0] in {1213, 1205}  # MariaDB/MySQL: deadlock, lock wait timeout


def _positive(seconds: Any) -> bool:
    """True for a finite number of seconds above zero."""
    return (
        isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds) and seconds > 0
    )


def _ids(values: Sequence[int] | None, what: str) -> list[int] | None:
    if values is None:
        return None
    try:  # Signal objects are accepted too (an older legacy API passed them)
        return [int(v.alert_id if isinstance(v, Signal) else v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationError(f"{what} must be a list of integer alert ids", field=what) from None


class SQLStorage(StorageInterface):
    """Signals and machines in a SQL database, chosen by URL.

    ``connection_string``: ``sqlite:///cscapi.db`` (a new file is created mode 0600), ``sqlite://`` (in memory),
    ``postgresql+psycopg://user:pw@host/db`` (or ``postgresql://``), ``mysql+pymysql://user:pw@host/db`` (or
    ``mysql://``). ``encryption_key`` (default: the ``CSCAPI_STORAGE_KEY`` environment variable) encrypts the
    machines' passwords and tokens; ``engine_options`` are passed to ``sqlalchemy.create_engine``.
    """

    def __init__(
        self,
        connection_string: str = "sqlite:///cscapi.db",
        *,
        encryption_key: str | bytes | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._url = normalize_url(connection_string)
        self._where = mask_url(self._url)
        self._key = encryption_key if encryption_key else key_from_env()
        self._box: SecretBox | None = None
        self.engine: Engine = build_engine(self._url, engine_options)
        self._backend = self.engine.dialect.name
        self._mark = placeholder(str(getattr(self.engine.dialect.dbapi, "paramstyle", "")))
        # preserve_rowcount: SQLAlchemy 2.1 only keeps rowcount for UPDATE/DELETE unless asked (INSERT IGNORE counts).
        self._read_engine = self.engine.execution_options(preserve_rowcount=True)
        self._write_engine = self.engine.execution_options(preserve_rowcount=True, cscapi_write=True)
        # One in-memory SQLite connection is shared by every thread: serialise the transactions on it.
        self._memory = is_memory_sqlite(self._url)
        self._closed = False
        self._serial: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self._memory else contextlib.nullcontext()
        )
        try:
            with self._errors("opening the storage"):
                self.schema_version_found = ensure_schema(
                    self.engine, encrypt_secret=self._encrypt_in, where=self._where
                )
                if self._key and self._box is None:
                    with self._tx("setting up encryption") as conn:
                        self._box_for(conn)
                self._skip_locked = supports_skip_locked(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        if not self._memory:  # a forked child keeps its private copy of an in-memory database
            _after_fork.add(self)

    # ---- plumbing ---------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"SQLStorage({self._where!r}, encrypted={bool(self._key)})"

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._where

    @property
    def schema_version(self) -> int:
        """The schema version this code writes (the database is at this version once opened)."""
        return current_version()

    @property
    def encrypted(self) -> bool:
        """True when passwords and tokens are encrypted at rest."""
        return bool(self._key)

    def __enter__(self) -> SQLStorage:
        return self

    def close(self) -> None:
        """Close the pooled connections; a file or server database reconnects on next use, an in-memory one is gone."""
        self._closed = self._memory
        self.engine.dispose()

    @contextlib.contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except CAPIError:
            raise
        except SQLAlchemyError as exc:
            message = _describe(exc)
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
        ``IN`` lists of at most ``_CHUNK`` binds elsewhere. ``ids`` must be integers (see ``_ids``)."""
        if not ids:
            return
        if self._backend == "postgresql":
            yield _S.c.alert_id == _pg_ids(ids)
            return
        for chunk in _chunks(ids):
            yield _S.c.alert_id.in_(chunk)

    def _run(self, operation: str, body: Callable[[Connection], _T]) -> _T:
        """Run ``body`` in a write transaction, retried a few times when the database reports a deadlock."""
        for attempt in range(_RETRIES):
            try:
                with self._tx(operation) as conn:
                    return body(conn)
            except StorageError as exc:
                if attempt + 1 < _RETRIES and _is_transient(exc.__cause__):
                    time.sleep(random.uniform(0, 0.005 * 2**attempt))
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- secrets ----------------------------------------------------------------------------------------

    def _meta(self, conn: Connection, key: str) -> str | None:
        value = conn.execute(select(_META.c.value).where(_META.c.key == key)).scalar()
        return None if value is None else str(value)

    def _meta_setdefault(self, conn: Connection, key: str, value: str) -> str:
        conn.execute(insert_ignore(self.engine, _META), {"key": key, "value": value})
        stored = self._meta(conn, key)
        assert stored is not None
        return stored

    def _box_for(self, conn: Connection) -> SecretBox | None:
        """The secret box, built on first use: per-database salt, and a check that the key is the right one."""
        if not self._key:
            return None
        if self._box is None:
            salt_text = self._meta_setdefault(conn, "kdf_salt", base64.b64encode(new_salt()).decode("ascii"))
            box = SecretBox(self._key, base64.b64decode(salt_text))
            check = self._meta(conn, "key_check")
            if check is None:
                check = self._meta_setdefault(conn, "key_check", box.encrypt(_KEY_CHECK))
            if box.decrypt(check, what=f"the key check of {self._where}") != _KEY_CHECK:
                raise StorageError(f"Cannot decrypt the key check of {self._where}: wrong {KEY_ENV_VAR}?")
            self._box = box
        return self._box

    def _encrypt_in(self, conn: Connection, value: str | None) -> str | None:
        if value is None or is_encrypted(value):
            return value
        box = self._box_for(conn)
        return box.encrypt(value) if box is not None else value

    def _decrypt(self, value: str | None, what: str) -> str | None:
        if value is None or not is_encrypted(value):
            return value
        if self._box is None:
            raise StorageError(
                f"The {what} is encrypted but no encryption key was given.",
                hint=f"Pass encryption_key= or set {KEY_ENV_VAR} to the key the database was written with.",
            )
        return self._box.decrypt(value, what=f"the {what}")

    def rotate_encryption_key(self, new_key: str | bytes | None) -> int:
        """Re-encrypt every stored password and token with ``new_key`` (None: store them in plain text again).

        One transaction: on any error nothing changes. The instance then uses the new key; other processes must be
        restarted with it (they would refuse to open the database with the old one). Returns the machines rewritten.
        """
        with self._tx("rotating the encryption key") as conn:
            rows = conn.execute(select(_M.c.machine_id, _M.c.password, _M.c.token)).all()
            plain = [
                (m, self._decrypt(p, f"password of machine {m}"), self._decrypt(t, f"token of machine {m}"))
                for m, p, t in rows
            ]
            conn.execute(delete(_META).where(_META.c.key.in_(["kdf_salt", "key_check"])))
            old_key, old_box = self._key, self._box
            self._key, self._box = (new_key or None), None
            try:
                for machine_id, password, token in plain:
                    conn.execute(
                        update(_M)
                        .where(_M.c.machine_id == machine_id)
                        .values(password=self._encrypt_in(conn, password), token=self._encrypt_in(conn, token))
                    )
                self._box_for(conn)  # a key check (and salt) even when there is no machine yet
            except BaseException:
                self._key, self._box = old_key, old_box
                raise
        return len(plain)

    # ---- the queue --------------------------------------------------------------------------------------

    def add_signals(self, signals: Iterable[Signal]) -> int:
        """Queue signals in one transaction; a uuid already stored is skipped. Returns how many were new."""
        if isinstance(signals, Signal):
            signals = [signals]
        items = list(signals)
        if not items:
            return 0
        now = schema.format_utc(utcnow())
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for signal in items:
            row = signal_row(signal, now)
            if row["uuid"] not in seen:
                seen.add(row["uuid"])
                rows.append(row)
        added, ids = self._run("adding signals", lambda conn: self._insert_signals(conn, rows))
        for signal in items:
            assert signal.uuid is not None
            signal.alert_id = ids.get(signal.uuid)
        return added

    def _insert_signals(self, conn: Connection, rows: list[dict[str, Any]]) -> tuple[int, dict[str, int]]:
        """Insert the rows, skipping stored uuids. Returns (how many were new, the alert id of every uuid)."""
        stmt = insert_ignore(self.engine, _S)
        ids: dict[str, int] = {}
        if len(rows) == 1:  # the fast path of a web request: one INSERT, no extra query when it is new
            row = rows[0]
            alert_id: Any = None
            if self._backend == "postgresql":
                alert_id = conn.execute(stmt.returning(_S.c.alert_id), row).scalar()
                added = 0 if alert_id is None else 1
            else:
                result = conn.execute(stmt, row)
                added = result.rowcount
                alert_id = result.lastrowid if added == 1 else None
            if alert_id is not None:
                return added, {row["uuid"]: int(alert_id)}
            missing = [row["uuid"]]
        elif self._backend == "postgresql":  # see cscapi._sql.bulk: one JSON parameter, RETURNING the new ids
            for batch in json_batches(rows):
                for uuid, alert_id in conn.exec_driver_sql(PG_BULK_INSERT, {"batch": batch}):
                    ids[uuid] = int(alert_id)
            added = len(ids)
            missing = [row["uuid"] for row in rows if row["uuid"] not in ids]
        elif self._mark is not None:  # SQLite, MariaDB: the driver's executemany on tuples (see cscapi._sql.bulk)
            added = conn.exec_driver_sql(raw_insert(self._backend, self._mark), row_tuples(rows)).rowcount
            uuids = [row["uuid"] for row in rows]
            for chunk in _chunks(uuids):
                for uuid, alert_id in conn.exec_driver_sql(raw_lookup(self._mark, len(chunk)), tuple(chunk)):
                    ids[uuid] = int(alert_id)
            return int(added), ids
        else:  # another driver: SQLAlchemy's executemany (PyMySQL folds it into multi-row INSERTs)
            added = conn.execute(stmt, rows).rowcount
            missing = [row["uuid"] for row in rows]
        for chunk in _chunks(missing):
            for uuid, alert_id in conn.execute(select(_S.c.uuid, _S.c.alert_id).where(_S.c.uuid.in_(chunk))):
                ids[uuid] = int(alert_id)
        return int(added), ids

    def claim_signals(self, limit: int, lease_seconds: float, machine_ids: Sequence[str] | None = None) -> Claim:
        """Claim up to ``limit`` queued (or lease-expired) signals, oldest first, of machines not cooling down."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError(f"limit must be a positive integer, not {limit!r}", field="limit")
        if not _positive(lease_seconds):
            raise ValidationError(f"lease_seconds must be positive, not {lease_seconds!r}", field="lease_seconds")
        now = utcnow()
        expires_at = now + timedelta(seconds=float(lease_seconds))
        token = _secrets.token_hex(16)
        if machine_ids is not None and not machine_ids:
            return Claim(token=token, signals=[], expires_at=expires_at)
        cooling = exists().where(
            _M.c.machine_id == _S.c.machine_id,
            or_(_M.c.failing_until > now, _M.c.login_banned_until > now),
        )
        # Two index-friendly selects (queued; claimed with a lapsed lease) rather than one OR that would scan
        # every sent row: each walks the (status, alert_id) index in order and stops at ``limit``.
        base = select(_S.c.alert_id, _S.c.payload).where(~cooling).order_by(_S.c.alert_id).limit(limit)
        if machine_ids is not None:
            base = base.where(_S.c.machine_id.in_(list(machine_ids)))
        selects = [
            base.where(_S.c.status == schema.QUEUED),
            base.where(_S.c.status == schema.CLAIMED, _S.c.claimed_until < now),
        ]
        if self._skip_locked:
            selects = [stmt.with_for_update(skip_locked=True) for stmt in selects]
        elif self._backend != "sqlite":
            selects = [stmt.with_for_update() for stmt in selects]  # old MariaDB/MySQL: claimers wait in turn

        values = {
            "status": schema.CLAIMED,
            "claim_token": token,
            "claimed_until": expires_at,
        }

        def claim(conn: Connection) -> list[Any]:
            found = [row for stmt in selects for row in conn.execute(stmt).all()]
            rows = sorted(found, key=lambda row: int(row[0]))[:limit]
            for among in self._alert_id_in([int(row[0]) for row in rows]):
                conn.execute(update(_S).where(among).values(**values))
            return rows

        if self._backend == "postgresql":
            # The same selects (and row locks) as one statement: lock both candidate sets, keep the oldest ``limit``,
            # update them and return their payloads. One round trip, no id list sent back (~25% faster claims).
            # (PostgreSQL refuses FOR UPDATE inside a UNION: each locking select is a CTE of its own.)
            locked = [stmt.with_only_columns(_S.c.alert_id).cte(f"found_{i}") for i, stmt in enumerate(selects)]
            found = union_all(*[select(cte.c.alert_id) for cte in locked]).subquery("found")
            pick = select(found.c.alert_id).order_by(found.c.alert_id).limit(limit).cte("pick")
            claim_all = (
                update(_S)
                .where(_S.c.alert_id == pick.c.alert_id)
                .values(**values)
                .returning(_S.c.alert_id, _S.c.payload)
            )

            def claim_at_once(conn: Connection) -> list[Any]:
                return sorted(conn.execute(claim_all).all(), key=lambda row: int(row[0]))

            claim = claim_at_once

        rows = self._run("claiming signals", claim)
        claimed = [signal_from_row(alert_id, payload, schema.CLAIMED) for alert_id, payload in rows]
        return Claim(token=token, signals=claimed, expires_at=expires_at)

    def _update_claimed(
        self, operation: str, claim: Claim, signal_ids: Sequence[int] | None, values: dict[str, Any]
    ) -> int:
        """Apply ``values`` to the rows this claim still holds (a re-claimed row has another token: untouched)."""
        held = and_(_S.c.claim_token == claim.token, _S.c.status == schema.CLAIMED)
        ids = _ids(signal_ids, "signal_ids")
        # By primary key, not by token alone: no index-range locks (MariaDB deadlocked on those).
        ids = [int(s.alert_id) for s in claim.signals if s.alert_id is not None] if ids is None else sorted(set(ids))

        def apply(conn: Connection) -> int:
            count = 0
            for among in self._alert_id_in(ids):
                count += conn.execute(update(_S).where(held, among).values(**values)).rowcount
            return count

        return int(self._run(operation, apply)) if ids else 0

    def extend_claim(self, claim: Claim, signal_ids: Sequence[int], lease_seconds: float) -> list[int]:
        """Extend by ``lease_seconds`` from now the lease on the ``signal_ids`` this claim still holds (its token,
        lease not run out); returns those ids, sorted. One ``UPDATE ... RETURNING`` (PostgreSQL, SQLite); MariaDB has
        no ``UPDATE ... RETURNING``: its row count, and a read of the held ids only when some were lost."""
        if not _positive(lease_seconds):
            raise ValidationError(f"lease_seconds must be positive, not {lease_seconds!r}", field="lease_seconds")
        ids = sorted(set(_ids(signal_ids, "signal_ids") or []))
        if not ids:
            return []
        now = utcnow()
        held = and_(_S.c.claim_token == claim.token, _S.c.status == schema.CLAIMED, _S.c.claimed_until > now)
        values = {"claimed_until": now + timedelta(seconds=float(lease_seconds))}
        returning = bool(self.engine.dialect.update_returning)

        def extend(conn: Connection) -> list[int]:
            kept: list[int] = []
            if returning:
                for among in self._alert_id_in(ids):
                    stmt = update(_S).where(held, among).values(**values).returning(_S.c.alert_id)
                    kept.extend(int(row[0]) for row in conn.execute(stmt))
                return sorted(kept)
            for chunk in _chunks(ids):
                among = _S.c.alert_id.in_(chunk)
                if conn.execute(update(_S).where(held, among).values(**values)).rowcount == len(chunk):
                    kept.extend(chunk)
                else:  # some were lost: the held rows left with a live lease are exactly the ones just extended
                    kept.extend(int(row[0]) for row in conn.execute(select(_S.c.alert_id).where(held, among)))
            return sorted(kept)

        return self._run("extending the lease of claimed signals", extend)

    def mark_sent(self, claim: Claim, signal_ids: Sequence[int] | None = None) -> int:
        """Mark the claim's signals sent (all, or these ids). Returns how many were still held and marked."""
        values = {"status": schema.SENT, "sent_at": utcnow(), "claim_token": None, "claimed_until": None}
        return self._update_claimed("marking signals sent", claim, signal_ids, values)

    def release_claim(self, claim: Claim, signal_ids: Sequence[int] | None = None) -> int:
        """Put the claim's signals back in the queue (all, or these ids). Returns how many."""
        values = {"status": schema.QUEUED, "claim_token": None, "claimed_until": None}
        return self._update_claimed("releasing claimed signals", claim, signal_ids, values)

    def quarantine(self, claim: Claim, signal_ids: Sequence[int], reason: str) -> int:
        """Set the claim's ``signal_ids`` aside with ``reason``: never sent again unless requeued."""
        values = {
            "status": schema.QUARANTINED,
            "quarantine_reason": str(reason)[:_MAX_REASON],
            "claim_token": None,
            "claimed_until": None,
        }
        return self._update_claimed("quarantining signals", claim, list(signal_ids), values)

    def requeue_quarantined(self, signal_ids: Sequence[int] | None = None) -> int:
        """Put quarantined signals (all, or these ids) back in the queue. Returns how many."""
        ids = _ids(signal_ids, "signal_ids")
        base = update(_S).where(_S.c.status == schema.QUARANTINED)
        values = {"status": schema.QUEUED, "quarantine_reason": None}
        count = 0
        with self._tx("requeuing quarantined signals") as conn:
            if ids is None:
                count = conn.execute(base.values(**values)).rowcount
            else:
                for among in self._alert_id_in(ids):
                    count += conn.execute(base.where(among).values(**values)).rowcount
        return int(count)

    def list_quarantined(self, limit: int = 100) -> list[tuple[Signal, str]]:
        """Quarantined signals with the server's reason, oldest first."""
        stmt = (
            select(_S.c.alert_id, _S.c.payload, _S.c.quarantine_reason)
            .where(_S.c.status == schema.QUARANTINED)
            .order_by(_S.c.alert_id)
            .limit(int(limit))
        )
        with self._tx("listing quarantined signals", write=False) as conn:
            rows = conn.execute(stmt).all()
        return [(signal_from_row(a, p, schema.QUARANTINED), str(r or "")) for a, p, r in rows]

    def count_signals(self, machine_id: str | None = None) -> QueueCounts:
        """Signals per state; a claim whose lease ran out counts as queued (anyone may claim it again)."""
        now = utcnow()
        # One statement, so the counts are one consistent snapshot on every database.
        state = case(
            (and_(_S.c.status == schema.CLAIMED, _S.c.claimed_until < now), schema.QUEUED), else_=_S.c.status
        ).label("state")
        stmt = select(state, func.count()).group_by("state")
        if machine_id is not None:
            stmt = stmt.where(_S.c.machine_id == machine_id)
        with self._tx("counting signals", write=False) as conn:
            counts = {str(status): int(n) for status, n in conn.execute(stmt)}
        return QueueCounts(
            queued=counts.get(schema.QUEUED, 0),
            claimed=counts.get(schema.CLAIMED, 0),
            sent=counts.get(schema.SENT, 0),
            quarantined=counts.get(schema.QUARANTINED, 0),
        )

    def prune(self, *, sent_before: datetime | None = None, quarantined: bool = False) -> int:
        """Delete sent signals (all, or those sent before ``sent_before``) and, if asked, every quarantined one."""
        sent = _S.c.status == schema.SENT
        if sent_before is not None:
            sent = and_(sent, _S.c.sent_at < sent_before)
        condition = or_(sent, _S.c.status == schema.QUARANTINED) if quarantined else sent
        with self._tx("pruning signals") as conn:
            return int(conn.execute(delete(_S).where(condition)).rowcount)

    # ---- legacy 0.7.0 surface ---------------------------------------------------------------------------

    def get_signals(
        self,
        limit: int,
        offset: int = 0,
        sent: bool | None = None,
        is_failing: bool | None = None,
    ) -> list[Signal]:
        """Signals by ``alert_id``; ``sent=False`` means queued or claimed (not quarantined).

        ``is_failing=True`` keeps the signals of machines failing now: cooling down (``failing_until`` in the future),
        or flagged ``is_failing`` with no end set; ``False`` the others (machines never stored included).
        """
        stmt = select(_S.c.alert_id, _S.c.payload, _S.c.status).order_by(_S.c.alert_id)
        if sent is True:
            stmt = stmt.where(_S.c.status == schema.SENT)
        elif sent is False:
            stmt = stmt.where(_S.c.status.in_([schema.QUEUED, schema.CLAIMED]))
        if is_failing is not None:
            failing = exists().where(
                _M.c.machine_id == _S.c.machine_id,
                or_(
                    _M.c.failing_until > utcnow(),
                    and_(_M.c.is_failing == True, _M.c.failing_until.is_(None)),  # noqa: E712 - SQL comparison
                ),
            )
            stmt = stmt.where(failing if is_failing else ~failing)
        stmt = stmt.limit(int(limit)).offset(int(offset))
        with self._tx("reading signals", write=False) as conn:
            rows = conn.execute(stmt).all()
        return [signal_from_row(a, p, s) for a, p, s in rows]

    def update_or_create_signal(self, signal: Signal) -> bool:
        """Store one signal, matched by ``alert_id`` then by ``uuid`` (never duplicated); True when created."""
        now = utcnow()
        row = signal_row(signal, now)
        by_id = select(_S.c.alert_id, _S.c.status)

        def store(conn: Connection) -> tuple[bool, int]:
            found = None
            if signal.alert_id is not None:
                found = conn.execute(by_id.where(_S.c.alert_id == signal.alert_id)).first()
            if found is None:
                found = conn.execute(by_id.where(_S.c.uuid == row["uuid"])).first()
            if found is None:
                added, ids = self._insert_signals(conn, [row])
                if added:
                    return True, ids[row["uuid"]]
                found = conn.execute(by_id.where(_S.c.uuid == row["uuid"])).one()
            alert_id, status = found
            values = {k: row[k] for k in ("uuid", "machine_id", "scenario", "created_at", "payload")}
            if signal.sent and status != schema.SENT:
                values.update(status=schema.SENT, sent_at=now, claim_token=None, claimed_until=None)
            elif not signal.sent and status == schema.SENT:
                values.update(status=schema.QUEUED, sent_at=None)
            conn.execute(update(_S).where(_S.c.alert_id == alert_id).values(**values))
            return False, int(alert_id)

        created, signal.alert_id = self._run("storing a signal", store)
        return created

    def mass_update_signals(self, signal_ids: Sequence[int], changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` to these signals; only ``sent`` (True: sent, False: queued again) is supported."""
        unknown = sorted(set(changes) - {"sent"})
        if unknown:
            raise ValidationError(
                f"mass_update_signals cannot change {', '.join(unknown)}; only 'sent' is supported",
                field="changes",
            )
        ids = _ids(signal_ids, "signal_ids") or []
        if "sent" not in changes or not ids:
            return
        if changes["sent"]:
            values: dict[str, Any] = {"status": schema.SENT, "sent_at": utcnow()}
        else:
            values = {"status": schema.QUEUED, "sent_at": None}
        values.update(claim_token=None, claimed_until=None)
        with self._tx("updating signals") as conn:
            for among in self._alert_id_in(ids):
                conn.execute(update(_S).where(among).values(**values))

    def delete_signals(self, signal_ids: Sequence[int]) -> None:
        """Delete the signals with these ``alert_id``s."""
        ids = _ids(signal_ids, "signal_ids") or []
        with self._tx("deleting signals") as conn:
            for among in self._alert_id_in(ids):
                conn.execute(delete(_S).where(among))

    def delete_machines(self, machine_ids: Sequence[str]) -> None:
        """Delete these machines (their signals stay queued and their login locks are dropped)."""
        ids = [m.machine_id if isinstance(m, Machine) else str(m) for m in machine_ids]
        with self._tx("deleting machines") as conn:
            for chunk in _chunks(ids):
                conn.execute(delete(_M).where(_M.c.machine_id.in_(chunk)))
                conn.execute(delete(_L).where(_L.c.machine_id.in_(chunk)))

    # ---- machines ---------------------------------------------------------------------------------------

    def _machine_from_row(self, row: Any) -> Machine:
        machine_id = row.machine_id
        return Machine(
            machine_id=machine_id,
            password=self._decrypt(row.password, f"password of machine {machine_id}"),
            token=self._decrypt(row.token, f"token of machine {machine_id}"),
            scenarios=row.scenarios,
            is_failing=bool(row.is_failing),
            token_expires_at=row.token_expires_at,
            login_banned_until=row.login_banned_until,
            failing_until=row.failing_until,
            failure_reason=row.failure_reason,
            registered=bool(row.registered),
            organization_id=row.organization_id,
            created_at=row.created_at,
        )

    def get_machine_by_id(self, machine_id: str) -> Machine | None:
        """The stored machine (secrets decrypted), or None."""
        with self._tx("reading a machine", write=False) as conn:
            row = conn.execute(select(_M).where(_M.c.machine_id == machine_id)).first()
        return None if row is None else self._machine_from_row(row)

    def list_machines(self) -> list[Machine]:
        """Every stored machine, oldest first."""
        with self._tx("listing machines", write=False) as conn:
            rows = conn.execute(select(_M).order_by(_M.c.created_at, _M.c.machine_id)).all()
        return [self._machine_from_row(row) for row in rows]

    def machine_ids(self) -> list[str]:
        """The stored machines' ids, oldest first, without reading their secrets (works without the encryption key)."""
        with self._tx("listing machines", write=False) as conn:
            rows = conn.execute(select(_M.c.machine_id).order_by(_M.c.created_at, _M.c.machine_id)).all()
        return [str(row.machine_id) for row in rows]

    def update_or_create_machine(self, machine: Machine) -> bool:
        """Store every field of the machine (secrets encrypted when a key is set); True when it was created."""
        if not isinstance(machine, Machine) or not machine.machine_id:
            raise ValidationError("a Machine with a machine_id is required", field="machine_id")
        check_length("machine_id", machine.machine_id, 128)
        check_length("organization_id", machine.organization_id, 255)
        created_at = machine.created_at or utcnow()

        def store(conn: Connection) -> bool:
            values: dict[str, Any] = {
                "password": self._encrypt_in(conn, machine.password),
                "token": self._encrypt_in(conn, machine.token),
                "scenarios": machine.scenarios,
                "is_failing": bool(machine.is_failing),
                "token_expires_at": machine.token_expires_at,
                "login_banned_until": machine.login_banned_until,
                "failing_until": machine.failing_until,
                "failure_reason": machine.failure_reason,
                "registered": bool(machine.registered),
                "organization_id": machine.organization_id,
            }
            if machine.created_at is not None:
                values["created_at"] = machine.created_at
            where = _M.c.machine_id == machine.machine_id
            if conn.execute(update(_M).where(where).values(**values)).rowcount:
                return False
            inserted = conn.execute(
                insert_ignore(self.engine, _M),
                {**values, "machine_id": machine.machine_id, "created_at": created_at},
            ).rowcount
            if not inserted:  # created concurrently in between: update it
                conn.execute(update(_M).where(where).values(**values))
            return bool(inserted)

        created = self._run("storing a machine", store)
        if created:
            machine.created_at = created_at
        return created

    def acquire_login_lock(self, machine_id: str, holder: str, ttl_seconds: float) -> bool:
        """Become the one caller logging in for ``machine_id`` (or take over an expired lock); never waits."""
        if not _positive(ttl_seconds):
            raise ValidationError(f"ttl_seconds must be positive, not {ttl_seconds!r}", field="ttl_seconds")
        check_length("machine_id", machine_id, 128)
        check_length("holder", holder, 255)
        now = utcnow()
        values = {"holder": holder, "expires_at": now + timedelta(seconds=float(ttl_seconds))}

        def take(conn: Connection) -> bool:
            if conn.execute(insert_ignore(self.engine, _L), {**values, "machine_id": machine_id}).rowcount:
                return True
            taken = conn.execute(
                update(_L).where(_L.c.machine_id == machine_id, _L.c.expires_at < now).values(**values)
            ).rowcount
            return bool(taken)

        return self._run("taking a login lock", take)

    def renew_login_lock(self, machine_id: str, holder: str, ttl_seconds: float) -> bool:
        """Extend the lock by ``ttl_seconds`` from now if ``holder`` still holds it (one UPDATE: no gap in which
        another caller could take it); False if someone else took it over after it lapsed (or nobody holds it)."""
        if not _positive(ttl_seconds):
            raise ValidationError(f"ttl_seconds must be positive, not {ttl_seconds!r}", field="ttl_seconds")
        expires = utcnow() + timedelta(seconds=float(ttl_seconds))

        def renew(conn: Connection) -> bool:
            stmt = update(_L).where(_L.c.machine_id == machine_id, _L.c.holder == holder).values(expires_at=expires)
            return bool(conn.execute(stmt).rowcount)

        return self._run("renewing a login lock", renew)

    def release_login_lock(self, machine_id: str, holder: str) -> None:
        """Release the lock if ``holder`` still holds it (someone who took over an expired lock keeps it)."""
        with self._tx("releasing a login lock") as conn:
            conn.execute(delete(_L).where(_L.c.machine_id == machine_id, _L.c.holder == holder))


class _ForkGuard:
    """After ``fork()``, the child must not reuse the parent's pooled connections: drop them (without closing)."""

    def __init__(self) -> None:
        self._storages: weakref.WeakSet[SQLStorage] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def add(self, storage: SQLStorage) -> None:
        self._storages.add(storage)

    def _reset(self) -> None:
        for storage in list(self._storages):
            storage.engine.dispose(close=False)


_after_fork = _ForkGuard()
