"""The signal queue on SQL: add signals, claim them under a lease, then extend, mark sent, release or quarantine
what a claim still holds; requeue, list, count and prune.

:class:`SignalQueue` is the queue part of :class:`cscapi.sql_storage.SQLStorage` and reads on its own: it needs only
the plumbing of :class:`~cscapi._sql.engine.SQLEngine` (``_tx``, ``_run``, ``_alert_id_in``, ``_skip_locked``) and
two tables: ``signals`` (its rows) and ``machines`` (a claim skips the signals of a machine cooling down). Its public
methods are the queue contract of :class:`cscapi.storage.StorageInterface`: a claim is a random token plus a lease
(``claimed_until``) on rows that stay ``queued`` (claimed = a live lease: a claim changes no indexed column); every
later call acts only on rows still carrying that token, so a sender whose lease lapsed and was re-claimed by another
touches nothing. Concurrent claimers never get the same row: ``FOR UPDATE SKIP LOCKED``
on PostgreSQL and MariaDB >= 10.6, ``BEGIN IMMEDIATE`` on SQLite. See ``docs/storage.md``.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, case, delete, exists, func, or_, select, update

from cscapi.errors import ValidationError
from cscapi.models import QueueCounts, Signal
from cscapi.storage import Claim, check_destinations
from cscapi.timeutil import utcnow

from . import schema
from .bulk import COPY_MIN_ROWS, PG_BULK_INSERT, json_batches, pg_copy, raw_insert, raw_lookup, row_tuples
from .codec import signal_from_row, signal_row
from .dialects import insert_ignore
from .engine import SQLEngine, chunks, int_ids, positive

__all__ = ["SignalQueue"]

_S = schema.signals
_M = schema.machines
_MAX_REASON = 4000  # characters of a server's reason kept with a quarantined signal


class SignalQueue(SQLEngine):
    """The durable signal queue: claims with leases on the ``signals`` table (see the module docstring)."""

    supports_destinations = True

    def add_signals(self, signals: Iterable[Signal], destinations: Sequence[str] = (schema.CAPI,)) -> int:
        """Queue signals in one transaction, once per destination (``capi``, ``lapi``: one row each); a uuid already
        queued for that destination is skipped. Returns how many rows were new; each signal's ``alert_id`` is its
        row of the first destination."""
        wanted = check_destinations(destinations)
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

        def insert(conn: Connection) -> tuple[int, dict[str, int]]:
            total, first = 0, None
            for destination in wanted:
                added, ids = self._insert_signals(conn, rows, destination)
                total += added
                first = ids if first is None else first
            return total, first or {}

        added, ids = self._run("adding signals", insert)
        for signal in items:
            assert signal.uuid is not None
            signal.alert_id = ids.get(signal.uuid)
        return added

    def _insert_signals(
        self, conn: Connection, rows: list[dict[str, Any]], destination: str = schema.CAPI
    ) -> tuple[int, dict[str, int]]:
        """Insert the rows for ``destination``, skipping uuids it has. Returns (how many were new, the alert id of
        every uuid there)."""
        for row in rows:
            row["destination"] = destination
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
        elif self._backend == "postgresql" and len(rows) >= COPY_MIN_ROWS and (copied := pg_copy(conn, rows)):
            return len(rows), copied  # see cscapi._sql.bulk: COPY in a savepoint, none of the uuids was queued
        elif self._backend == "postgresql":  # see cscapi._sql.bulk: one JSON parameter, RETURNING the new ids
            for batch in json_batches(rows):
                for uuid, alert_id in conn.exec_driver_sql(PG_BULK_INSERT, {"batch": batch}):
                    ids[uuid] = int(alert_id)
            added = len(ids)
            missing = [row["uuid"] for row in rows if row["uuid"] not in ids]
        elif self._mark is not None:  # SQLite, MariaDB: the driver's executemany on tuples (see cscapi._sql.bulk)
            added = conn.exec_driver_sql(raw_insert(self._backend, self._mark), row_tuples(rows)).rowcount
            uuids = [row["uuid"] for row in rows]
            for chunk in chunks(uuids):
                lookup = raw_lookup(self._mark, len(chunk))
                for uuid, alert_id in conn.exec_driver_sql(lookup, (destination, *chunk)):
                    ids[uuid] = int(alert_id)
            return int(added), ids
        else:  # another driver: SQLAlchemy's executemany (PyMySQL folds it into multi-row INSERTs)
            added = conn.execute(stmt, rows).rowcount
            missing = [row["uuid"] for row in rows]
        for chunk in chunks(missing):
            found = select(_S.c.uuid, _S.c.alert_id).where(_S.c.destination == destination, _S.c.uuid.in_(chunk))
            for uuid, alert_id in conn.execute(found):
                ids[uuid] = int(alert_id)
        return int(added), ids

    def claim_signals(
        self,
        limit: int,
        lease_seconds: float,
        machine_ids: Sequence[str] | None = None,
        *,
        destination: str = schema.CAPI,
    ) -> Claim:
        """Claim up to ``limit`` queued (or lease-expired) signals of ``destination``, oldest first; for CAPI only
        those of machines not cooling down (a CAPI machine's cool-down says nothing about a LAPI)."""
        (destination,) = check_destinations((destination,))
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError(f"limit must be a positive integer, not {limit!r}", field="limit")
        if not positive(lease_seconds):
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
        # A claim changes no indexed column: the row stays ``queued`` and "claimed" is a live lease (``claimed_until``
        # not yet passed, with the claim's token). So one select walks the (destination, status, alert_id) index in
        # order, skips the rows under a live lease and stops at ``limit``; the update touches only unindexed columns
        # (PostgreSQL rewrites the row in place: a HOT update, see schema version 6).
        claimable = or_(_S.c.claimed_until.is_(None), _S.c.claimed_until < now)
        stmt = select(_S.c.alert_id, _S.c.payload).where(
            _S.c.destination == destination, _S.c.status == schema.QUEUED, claimable
        )
        if destination == schema.CAPI:
            stmt = stmt.where(~cooling)
        if machine_ids is not None:
            stmt = stmt.where(_S.c.machine_id.in_(list(machine_ids)))
        stmt = stmt.order_by(_S.c.alert_id).limit(limit)
        if self._skip_locked:
            stmt = stmt.with_for_update(skip_locked=True)
        elif self._backend != "sqlite":
            stmt = stmt.with_for_update()  # old MariaDB/MySQL: claimers wait in turn

        values = {"claim_token": token, "claimed_until": expires_at}

        def claim(conn: Connection) -> list[Any]:
            rows = list(conn.execute(stmt).all())
            for among in self._alert_id_in([int(row[0]) for row in rows]):
                conn.execute(update(_S).where(among).values(**values))
            return rows

        if self._backend == "postgresql":
            # The same select (and row locks) and the update as one statement: one round trip, no id list sent back.
            pick = stmt.with_only_columns(_S.c.alert_id).cte("pick")
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
        held = and_(_S.c.claim_token == claim.token, _S.c.status == schema.QUEUED)
        ids = int_ids(signal_ids, "signal_ids")
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
        if not positive(lease_seconds):
            raise ValidationError(f"lease_seconds must be positive, not {lease_seconds!r}", field="lease_seconds")
        ids = sorted(set(int_ids(signal_ids, "signal_ids") or []))
        if not ids:
            return []
        now = utcnow()
        held = and_(_S.c.claim_token == claim.token, _S.c.status == schema.QUEUED, _S.c.claimed_until > now)
        values = {"claimed_until": now + timedelta(seconds=float(lease_seconds))}
        returning = bool(self.engine.dialect.update_returning)

        def extend(conn: Connection) -> list[int]:
            kept: list[int] = []
            if returning:
                for among in self._alert_id_in(ids):
                    stmt = update(_S).where(held, among).values(**values).returning(_S.c.alert_id)
                    kept.extend(int(row[0]) for row in conn.execute(stmt))
                return sorted(kept)
            for chunk in chunks(ids):
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
        values = {"claim_token": None, "claimed_until": None}  # still queued: only the lease goes
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

    def requeue_quarantined(self, signal_ids: Sequence[int] | None = None, *, destination: str = schema.CAPI) -> int:
        """Put quarantined signals of ``destination`` (all, or these ids) back in the queue. Returns how many."""
        ids = int_ids(signal_ids, "signal_ids")
        (destination,) = check_destinations((destination,))
        base = update(_S).where(_S.c.status == schema.QUARANTINED, _S.c.destination == destination)
        values = {"status": schema.QUEUED, "quarantine_reason": None}
        count = 0
        with self._tx("requeuing quarantined signals") as conn:
            if ids is None:
                count = conn.execute(base.values(**values)).rowcount
            else:
                for among in self._alert_id_in(ids):
                    count += conn.execute(base.where(among).values(**values)).rowcount
        return int(count)

    def list_quarantined(self, limit: int = 100, *, destination: str = schema.CAPI) -> list[tuple[Signal, str]]:
        """Quarantined signals of ``destination`` with the server's reason, oldest first."""
        (destination,) = check_destinations((destination,))
        stmt = (
            select(_S.c.alert_id, _S.c.payload, _S.c.quarantine_reason)
            .where(_S.c.status == schema.QUARANTINED, _S.c.destination == destination)
            .order_by(_S.c.alert_id)
            .limit(int(limit))
        )
        with self._tx("listing quarantined signals", write=False) as conn:
            rows = list(conn.execute(stmt).all())
        return [(signal_from_row(a, p, schema.QUARANTINED), str(r or "")) for a, p, r in rows]

    def count_signals(self, machine_id: str | None = None, *, destination: str = schema.CAPI) -> QueueCounts:
        """Signals of ``destination`` per state; a claim whose lease ran out counts as queued (anyone may claim it)."""
        (destination,) = check_destinations((destination,))
        now = utcnow()
        # One statement, so the counts are one consistent snapshot on every database.
        state = case(
            (and_(_S.c.status == schema.QUEUED, _S.c.claimed_until >= now), schema.CLAIMED), else_=_S.c.status
        ).label("state")
        stmt = select(state, func.count()).where(_S.c.destination == destination).group_by("state")
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

    def prune(
        self, *, sent_before: datetime | None = None, quarantined: bool = False, destination: str = schema.CAPI
    ) -> int:
        """Delete sent signals of ``destination`` (all, or those sent before ``sent_before``) and, if asked, every
        quarantined one."""
        (destination,) = check_destinations((destination,))
        sent = _S.c.status == schema.SENT
        if sent_before is not None:
            sent = and_(sent, _S.c.sent_at < sent_before)
        condition = or_(sent, _S.c.status == schema.QUARANTINED) if quarantined else sent
        with self._tx("pruning signals") as conn:
            return int(conn.execute(delete(_S).where(_S.c.destination == destination, condition)).rowcount)
