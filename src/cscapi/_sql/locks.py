"""Short leases on SQL: the per-machine login locks and the agent's lease (one agent per storage).

A lease is a row (key, holder, expires_at): taken by an insert-or-ignore, or by an update of a row whose lease ran out;
renewed by one ``UPDATE ... WHERE holder = us`` (no gap in which another caller could take it); released by deleting
it only if we still hold it. Nothing ever waits.

The agent's lease is the row ``cscapi-agent`` of ``agent_leases`` (schema version 4). Agents before version 4 took a
``login_locks`` row under that pseudo machine id instead: while such a row is live (an older agent running through the
upgrade), ``acquire_agent_lease`` refuses, so a new agent never runs beside an old one it can see. An old agent does
not see the new table, though: stop the older agents before starting upgraded ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Connection, Table, delete, select, update

from cscapi.errors import ValidationError
from cscapi.storage import AGENT_LEASE_KEY
from cscapi.timeutil import utcnow

from . import schema
from .codec import check_length
from .dialects import insert_ignore
from .engine import SQLEngine, positive

__all__ = ["LeaseLocks"]

_L = schema.login_locks
_A = schema.agent_leases


def _expiry(ttl_seconds: float) -> tuple[datetime, datetime]:
    """Now, and when a lease of ``ttl_seconds`` taken now expires; a ValidationError unless positive."""
    if not positive(ttl_seconds):
        raise ValidationError(f"ttl_seconds must be positive, not {ttl_seconds!r}", field="ttl_seconds")
    now = utcnow()
    return now, now + timedelta(seconds=float(ttl_seconds))


class LeaseLocks(SQLEngine):
    """Login locks (``login_locks``, one per machine) and the agent's lease (``agent_leases``)."""

    def _take(self, conn: Connection, table: Table, key: Column[str], name: str, now: datetime, values: Any) -> bool:
        """Insert the lease row ``name`` of ``table``, or take it over if its lease ran out; True when ours."""
        if conn.execute(insert_ignore(self.engine, table), {**values, key.name: name}).rowcount:
            return True
        taken = conn.execute(update(table).where(key == name, table.c.expires_at < now).values(**values)).rowcount
        return bool(taken)

    def _renew(self, operation: str, table: Table, key: Column[str], name: str, holder: str, ttl: float) -> bool:
        """Extend ``holder``'s lease ``name`` to ``ttl`` seconds from now; False when it is not ``holder``'s."""
        expires = _expiry(ttl)[1]
        stmt = update(table).where(key == name, table.c.holder == holder).values(expires_at=expires)
        return self._run(operation, lambda conn: bool(conn.execute(stmt).rowcount))

    def _release(self, operation: str, table: Table, key: Column[str], name: str, holder: str) -> None:
        """Delete the lease row ``name`` if ``holder`` still holds it (one who took over a lapsed lease keeps it)."""
        with self._tx(operation) as conn:
            conn.execute(delete(table).where(key == name, table.c.holder == holder))

    # ---- login locks ------------------------------------------------------------------------------------

    def acquire_login_lock(self, machine_id: str, holder: str, ttl_seconds: float) -> bool:
        """Become the one caller logging in for ``machine_id`` (or take over an expired lock); never waits."""
        now, expires = _expiry(ttl_seconds)
        check_length("machine_id", machine_id, 128)
        check_length("holder", holder, 255)
        values = {"holder": holder, "expires_at": expires}
        return self._run(
            "taking a login lock", lambda conn: self._take(conn, _L, _L.c.machine_id, machine_id, now, values)
        )

    def renew_login_lock(self, machine_id: str, holder: str, ttl_seconds: float) -> bool:
        """Extend the lock by ``ttl_seconds`` from now if ``holder`` still holds it (one UPDATE: no gap in which
        another caller could take it); False if someone else took it over after it lapsed (or nobody holds it)."""
        return self._renew("renewing a login lock", _L, _L.c.machine_id, machine_id, holder, ttl_seconds)

    def release_login_lock(self, machine_id: str, holder: str) -> None:
        """Release the lock if ``holder`` still holds it (someone who took over an expired lock keeps it)."""
        self._release("releasing a login lock", _L, _L.c.machine_id, machine_id, holder)

    # ---- the agent's lease ------------------------------------------------------------------------------

    def acquire_agent_lease(self, holder: str, ttl_seconds: float) -> bool:
        """Become the one agent on this storage (or take over a lapsed lease); never waits. Refused while an agent
        of a cscapi before schema version 4 holds a live old-style lease (see the module docstring)."""
        now, expires = _expiry(ttl_seconds)
        check_length("holder", holder, 255)
        values = {"holder": holder, "expires_at": expires}
        older = select(_L.c.holder).where(_L.c.machine_id == AGENT_LEASE_KEY, _L.c.expires_at >= now)

        def take(conn: Connection) -> bool:
            if conn.execute(older).first() is not None:
                return False
            return self._take(conn, _A, _A.c.name, AGENT_LEASE_KEY, now, values)

        return self._run("taking the agent's lease", take)

    def renew_agent_lease(self, holder: str, ttl_seconds: float) -> bool:
        """Extend ``holder``'s agent lease to ``ttl_seconds`` from now (one UPDATE); False if another agent took
        it over after it lapsed (or nobody holds it)."""
        return self._renew("renewing the agent's lease", _A, _A.c.name, AGENT_LEASE_KEY, holder, ttl_seconds)

    def release_agent_lease(self, holder: str) -> None:
        """Give the agent's lease back if ``holder`` still holds it."""
        self._release("releasing the agent's lease", _A, _A.c.name, AGENT_LEASE_KEY, holder)
