"""The cscapi 0.7.0 storage methods on SQL (``get_signals``, ``update_or_create_signal``, ``mass_update_signals``,
``delete_signals``, ``delete_machines``), kept so that 0.7.0 code calling them directly still works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, or_, select, update

from cscapi.errors import ValidationError
from cscapi.models import Machine, Signal
from cscapi.timeutil import utcnow

from . import schema
from .codec import signal_from_row, signal_row
from .engine import chunks, int_ids
from .queue import SignalQueue

__all__ = ["LegacyCRUD"]

_S = schema.signals
_M = schema.machines
_L = schema.login_locks


class LegacyCRUD(SignalQueue):
    """The 0.7.0 CRUD surface, on the queue's tables (a queue subclass: storing one signal inserts it as the queue
    does)."""

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
        stmt = stmt.where(_S.c.destination == schema.CAPI)  # the 0.7.0 surface is CAPI's queue
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
        by_id = select(_S.c.alert_id, _S.c.status).where(_S.c.destination == schema.CAPI)

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
        ids = int_ids(signal_ids, "signal_ids") or []
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
        ids = int_ids(signal_ids, "signal_ids") or []
        with self._tx("deleting signals") as conn:
            for among in self._alert_id_in(ids):
                conn.execute(delete(_S).where(among))

    def delete_machines(self, machine_ids: Sequence[str]) -> None:
        """Delete these machines (their signals stay queued and their login locks are dropped)."""
        ids = [m.machine_id if isinstance(m, Machine) else str(m) for m in machine_ids]
        with self._tx("deleting machines") as conn:
            for chunk in chunks(ids):
                conn.execute(delete(_M).where(_M.c.machine_id.in_(chunk)))
                conn.execute(delete(_L).where(_L.c.machine_id.in_(chunk)))
