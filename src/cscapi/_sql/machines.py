"""The machines on SQL: credentials and state per machine, passwords and tokens encrypted at rest when a key is set,
and the rotation of that key.
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import Connection, delete, select, update

from cscapi.errors import StorageError, ValidationError
from cscapi.models import Machine
from cscapi.storage_crypto import KEY_ENV_VAR, SecretBox, is_encrypted, new_salt
from cscapi.timeutil import utcnow

from . import schema
from .codec import check_length
from .dialects import insert_ignore
from .engine import SQLEngine

__all__ = ["MachineStore"]

_M = schema.machines
_META = schema.storage_meta
_KEY_CHECK = "cscapi-storage-key-check"


class MachineStore(SQLEngine):
    """Machine CRUD on the ``machines`` table, with the secret box (per-database salt and key check in
    ``storage_meta``)."""

    _key: str | bytes | None
    _box: SecretBox | None

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
