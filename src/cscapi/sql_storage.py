"""The durable signal queue and machine store on SQL: SQLite (default), PostgreSQL and MariaDB/MySQL.

``SQLStorage`` implements :class:`cscapi.storage.StorageInterface` on SQLAlchemy 2 Core. Every call checks a
connection out of the engine's pool and runs in its own transaction, so one instance is safe to share between
threads (and ``asyncio.to_thread``); processes each open their own instance on the same database. Concurrent
senders never claim the same signal: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB >= 10.6, ``BEGIN
IMMEDIATE`` on SQLite. See ``docs/storage.md``.

The class is composed of one part per concern, each a module of ``cscapi._sql``: ``engine`` (pool, transactions,
retries, fork), ``queue`` (claims and leases), ``machines`` (machines, encryption, key rotation), ``locks`` (login
locks, the agent's lease) and ``legacy`` (the 0.7.0 CRUD methods); ``migrations`` brings the schema up to date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cscapi._sql.dialects import supports_skip_locked
from cscapi._sql.engine import fork_guard
from cscapi._sql.legacy import LegacyCRUD
from cscapi._sql.locks import LeaseLocks
from cscapi._sql.machines import MachineStore
from cscapi._sql.migrations import current_version, ensure_schema
from cscapi._sql.queue import SignalQueue
from cscapi.storage import StorageInterface
from cscapi.storage_crypto import key_from_env

__all__ = ["SQLStorage"]


class SQLStorage(LegacyCRUD, SignalQueue, MachineStore, LeaseLocks, StorageInterface):
    """Signals and machines in a SQL database, chosen by URL.

    ``connection_string``: ``sqlite:///cscapi.db`` (a new file is created mode 0600), ``sqlite://`` (in memory),
    ``postgresql+psycopg://user:pw@host/db`` (or ``postgresql://``), ``mysql+pymysql://user:pw@host/db`` (or
    ``mysql://``). ``encryption_key`` (default: the ``CSCAPI_STORAGE_KEY`` environment variable) encrypts the
    machines' passwords and tokens; ``engine_options`` are passed to ``sqlalchemy.create_engine``.

    The methods live in the parts this class is made of (see the module docstring); it adds only opening (schema
    migration, encryption set-up) and the lifecycle.
    """

    def __init__(
        self,
        connection_string: str = "sqlite:///cscapi.db",
        *,
        encryption_key: str | bytes | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._key = encryption_key if encryption_key else key_from_env()
        self._box = None
        self._open_engine(connection_string, engine_options)
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
            fork_guard.track(self)

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
