"""Short leases on SQL: the per-machine login locks and the agent's lease (one agent per storage).

A lease is a row (key, holder, expires_at): taken by an insert-or-ignore, or by an update of a row whose lease ran out;
renewed by one ``UPDATE ... WHERE holder = us`` (no gap in which another caller could take it); released by deleting
it only if we still hold it. Nothing ever waits.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Connection, delete, update

from cscapi.errors import ValidationError
from cscapi.timeutil import utcnow

from . import schema
from .codec import check_length
from .dialects import insert_ignore
from .engine import SQLEngine, positive

__all__ = ["LeaseLocks"]

_L = schema.login_locks


class LeaseLocks(SQLEngine):
    """Login locks (``login_locks``, one per machine) and the agent's lease."""

    def acquire_login_lock(self, machine_id: str, holder: str, ttl_seconds: float) -> bool:
        """Become the one caller logging in for ``machine_id`` (or take over an expired lock); never waits."""
        if not positive(ttl_seconds):
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
        if not positive(ttl_seconds):
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
