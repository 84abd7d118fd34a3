"""Schema versions: an ordered list of migration steps, applied in one locked transaction when a database is opened.

Version 1 is the initial schema; it also imports a database written by the legacy ``cscapi`` 0.7.0 SDK (tables
``signal_models``, ``machine_models``, ...): its unsent signals and its machines, the legacy tables being left as
they were. A database newer than this code is refused, never downgraded or half-read.

To change the schema: append ``Migration(n, "what", _vn)`` whose step alters the tables as the previous versions left
them (``_v1`` creates only its frozen table list; later tables are created by their own step, as ``_v4`` does).
"""

from __future__ import annotations

import json
import logging
import uuid as uuid_module
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, delete, func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from cscapi.errors import StorageError
from cscapi.models import Signal
from cscapi.storage import AGENT_LEASE_KEY
from cscapi.timeutil import format_rfc3339, parse_timestamp, utcnow

from . import schema
from .codec import signal_row
from .dialects import insert_ignore

__all__ = [
    "CURRENT_VERSION",
    "MIGRATIONS",
    "Migration",
    "MigrationContext",
    "current_version",
    "ensure_schema",
    "read_version",
]

logger = logging.getLogger("cscapi.storage")

SecretEncoder = Callable[[Connection, str | None], str | None]


@dataclass
class MigrationContext:
    """What a step may need beyond the connection: the engine (for dialect-specific SQL) and the secret encoder."""

    engine: Engine
    encrypt_secret: SecretEncoder


@dataclass(frozen=True)
class Migration:
    """One step from ``version - 1`` to ``version``."""

    version: int
    description: str
    apply: Callable[[Connection, MigrationContext], None]


# ---- version 1: the initial schema (+ the legacy 0.7.0 import) ------------------------------------------------

_V1_TABLES = ("signals", "machines", "login_locks", "schema_version", "storage_meta")


def _refuse_foreign_tables(conn: Connection, names: tuple[str, ...] = _V1_TABLES) -> None:
    """A table of ours that exists already must be ours: an application's own ``signals`` table is not touched."""
    inspector = inspect(conn)
    for name in names:
        if not inspector.has_table(name):
            continue
        have = {column["name"] for column in inspector.get_columns(name)}
        want = {column.name for column in schema.metadata.tables[name].columns}
        if not want <= have:
            raise StorageError(
                f"The database already has a table {name!r} that cscapi did not create "
                f"(it lacks {', '.join(sorted(want - have))}).",
                hint="Point cscapi at its own database (or schema), or rename that table.",
            )


def _v1(conn: Connection, ctx: MigrationContext) -> None:
    _refuse_foreign_tables(conn)
    schema.metadata.create_all(conn, tables=[schema.metadata.tables[name] for name in _V1_TABLES], checkfirst=True)
    if inspect(conn).has_table("signal_models") or inspect(conn).has_table("machine_models"):
        import_legacy(conn, ctx)


# ---- version 2: no index on claim_token ------------------------------------------------------------------------

_DROPPED_INDEX = "ix_signals_claim_token"


def _v2(conn: Connection, ctx: MigrationContext) -> None:
    """Drop the ``claim_token`` index (version 1 databases created before it was removed from the schema).

    Every statement on claimed rows selects them by ``alert_id`` (primary key), so the index was never read; but
    each claim and each release updates ``claim_token``, and maintaining the index was a large share of a
    claim's UPDATE on PostgreSQL (figures: docs/benchmarks.md). Idempotent: MariaDB commits DDL at once, so this
    step may run again after a crash.
    """
    if not any(index.get("name") == _DROPPED_INDEX for index in inspect(conn).get_indexes("signals")):
        return
    if ctx.engine.dialect.name in {"mysql", "mariadb"}:
        conn.exec_driver_sql(f"DROP INDEX {_DROPPED_INDEX} ON signals")
    else:
        conn.exec_driver_sql(f"DROP INDEX {_DROPPED_INDEX}")


# ---- version 3: no attempts column ------------------------------------------------------------------------------

_DROPPED_COLUMN = "attempts"


def _v3(conn: Connection, ctx: MigrationContext) -> None:
    """Drop ``signals.attempts`` (databases created before version 3).

    Each claim incremented it and a requeue reset it, but nothing ever read it: a claim count says nothing sound
    about a signal (a claim also ends in a release when its machine fails, or in a lapsed lease when its sender
    dies), and a signal CAPI refuses is quarantined at once by the batch split. Idempotent, like ``_v2``.
    On SQLite the table is rebuilt (``DROP COLUMN`` needs SQLite 3.35, and the column has no default to fall back
    on), inside the migration's transaction.
    """
    if not any(column["name"] == _DROPPED_COLUMN for column in inspect(conn).get_columns("signals")):
        return
    if ctx.engine.dialect.name != "sqlite":
        conn.exec_driver_sql(f"ALTER TABLE signals DROP COLUMN {_DROPPED_COLUMN}")
        return
    _rebuild_sqlite_signals(conn, "signals_before_v3")


def _rebuild_sqlite_signals(conn: Connection, old_name: str) -> None:
    """SQLite: rebuild ``signals`` as the current schema has it, copying every row (the columns both tables have;
    a new column takes its default), inside the migration's transaction."""
    have = {column["name"] for column in inspect(conn).get_columns("signals")}
    for index in inspect(conn).get_indexes("signals"):  # index names are per database: free them for the new table
        conn.exec_driver_sql(f'DROP INDEX "{index["name"]}"')
    conn.exec_driver_sql(f"ALTER TABLE signals RENAME TO {old_name}")
    schema.signals.create(conn)
    columns = ", ".join(column.name for column in schema.signals.columns if column.name in have)
    conn.exec_driver_sql(f"INSERT INTO signals ({columns}) SELECT {columns} FROM {old_name}")
    conn.exec_driver_sql(f"DROP TABLE {old_name}")


# ---- version 4: the agent's lease in a table of its own ---------------------------------------------------------


def _v4(conn: Connection, ctx: MigrationContext) -> None:
    """Create ``agent_leases``: the agent's lease had borrowed a ``login_locks`` row under the pseudo machine id
    ``cscapi-agent``. Such a row that has lapsed is deleted; a live one (an agent of an older cscapi running during
    the upgrade) is left to that agent, and honoured by the new code until it lapses or is released (see
    ``cscapi._sql.locks``). Idempotent, like ``_v2``.
    """
    _refuse_foreign_tables(conn, ("agent_leases",))
    schema.agent_leases.create(conn, checkfirst=True)
    locks = schema.login_locks
    conn.execute(delete(locks).where(locks.c.machine_id == AGENT_LEASE_KEY, locks.c.expires_at < utcnow()))


# ---- version 5: a destination per queued signal (CAPI or a local LAPI) -------------------------------------------

_V5_UNIQUE = "uq_signals_destination_uuid"
_V5_INDEX = "ix_signals_destination_status_alert_id"
_V4_INDEX = "ix_signals_status_alert_id"


def _v5(conn: Connection, ctx: MigrationContext) -> None:
    """Add ``signals.destination`` (``capi`` for every existing row): a signal queued for CAPI and for a local LAPI
    is two rows, so the unique key becomes (destination, uuid) and the claim index (destination, status, alert_id).
    Idempotent, like ``_v2`` (each change is checked first). SQLite rebuilds the table, as ``_v3`` does."""
    backend = ctx.engine.dialect.name
    if backend == "sqlite":
        if "destination" not in {column["name"] for column in inspect(conn).get_columns("signals")}:
            _rebuild_sqlite_signals(conn, "signals_before_v5")
        return
    mysql = backend in {"mysql", "mariadb"}
    if "destination" not in {column["name"] for column in inspect(conn).get_columns("signals")}:
        conn.exec_driver_sql(f"ALTER TABLE signals ADD COLUMN destination VARCHAR(8) NOT NULL DEFAULT '{schema.CAPI}'")
    inspector = inspect(conn)
    uniques = inspector.get_unique_constraints("signals")
    if not any(unique.get("name") == _V5_UNIQUE for unique in uniques):
        conn.exec_driver_sql(f"ALTER TABLE signals ADD CONSTRAINT {_V5_UNIQUE} UNIQUE (destination, uuid)")
    for unique in uniques:  # the version 1 key on uuid alone
        if list(unique.get("column_names") or []) == ["uuid"] and unique.get("name"):
            if mysql:
                conn.exec_driver_sql(f"ALTER TABLE signals DROP INDEX `{unique['name']}`")
            else:
                conn.exec_driver_sql(f'ALTER TABLE signals DROP CONSTRAINT "{unique["name"]}"')
    indexes = {str(index.get("name")) for index in inspect(conn).get_indexes("signals")}
    if _V5_INDEX not in indexes:
        conn.exec_driver_sql(f"CREATE INDEX {_V5_INDEX} ON signals (destination, status, alert_id)")
    if _V4_INDEX in indexes:
        conn.exec_driver_sql(f"DROP INDEX {_V4_INDEX} ON signals" if mysql else f"DROP INDEX {_V4_INDEX}")


# ---- version 6: a claim changes no indexed column ----------------------------------------------------------------

# PostgreSQL leaves this share of each heap page free, so a claim (which changes only unindexed columns) rewrites the
# row in the same page: a HOT update, with no new index entries.
SIGNALS_FILLFACTOR = 50


def _v6(conn: Connection, ctx: MigrationContext) -> None:
    """A claimed row stays ``queued``: "claimed" is a live lease (``claimed_until`` not passed, with the claim's
    token). Rows an older version marked ``claimed`` become ``queued`` with their token and lease kept, so a live
    claim is still a claim and a lapsed one is claimable, as before. On PostgreSQL the table gets a fillfactor (new
    pages only). Idempotent, like ``_v2``."""
    signals = schema.signals
    conn.execute(
        signals.update().where(signals.c.status == schema.CLAIMED).values(status=schema.QUEUED),
    )
    if ctx.engine.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ALTER TABLE signals SET (fillfactor = {SIGNALS_FILLFACTOR})")


MIGRATIONS: list[Migration] = [
    Migration(1, "initial schema (imports a cscapi 0.7.0 database)", _v1),
    Migration(2, "drop the unused claim_token index (faster claims)", _v2),
    Migration(3, "drop the never-read attempts column", _v3),
    Migration(4, "the agent's lease in its own table (agent_leases)", _v4),
    Migration(5, "a destination per queued signal (capi, lapi)", _v5),
    Migration(6, "a claim is a live lease on a queued row (no indexed column changes)", _v6),
]
CURRENT_VERSION = MIGRATIONS[-1].version


def current_version() -> int:
    """The version this code migrates to: the last step's."""
    return MIGRATIONS[-1].version


# ---- legacy import --------------------------------------------------------------------------------------------


def _reflect(conn: Connection, name: str) -> Table | None:
    if not inspect(conn).has_table(name):
        return None
    return Table(name, MetaData(), autoload_with=conn)


def _normalise_time(value: Any) -> Any:
    """Legacy timestamps (``2023-11-17 10:20:46 +0000``) in RFC 3339 with microseconds; unreadable ones unchanged."""
    if value is None or value == "":
        return value
    try:
        return format_rfc3339(parse_timestamp(value))
    except ValueError:
        return value


def _children(conn: Connection, table: Table | None, signal_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {}
    if table is None or not signal_ids or "signal_id" not in table.c:
        return found
    order = [table.c.id] if "id" in table.c else []
    for row in conn.execute(select(table).where(table.c.signal_id.in_(signal_ids)).order_by(*order)).mappings():
        item = {k: v for k, v in row.items() if k not in {"signal_id"}}
        found.setdefault(int(row["signal_id"]), []).append(item)
    return found


def _legacy_signals(conn: Connection) -> Iterator[Signal]:
    signals = _reflect(conn, "signal_models")
    if signals is None:
        return
    sources = _reflect(conn, "source_models")
    decisions = _reflect(conn, "decision_models")
    contexts = _reflect(conn, "context_models")
    unsent = signals.c.sent.is_(None) | (signals.c.sent == False)  # noqa: E712 - SQL comparison
    last_id = -1
    while True:
        rows = list(
            conn.execute(
                select(signals).where(unsent, signals.c.alert_id > last_id).order_by(signals.c.alert_id).limit(500)
            ).mappings()
        )
        if not rows:
            return
        last_id = int(rows[-1]["alert_id"])
        ids = [int(r["alert_id"]) for r in rows]
        source_rows = _children(conn, sources, ids)
        decision_rows = _children(conn, decisions, ids)
        context_rows = _children(conn, contexts, ids)
        for row in rows:
            data = {k: v for k, v in row.items() if k not in {"alert_id", "sent"}}
            for name in ("created_at", "start_at", "stop_at"):
                data[name] = _normalise_time(data.get(name))
            source = source_rows.get(int(row["alert_id"]))
            if source:
                data["source"] = {k: v for k, v in source[0].items() if k != "id"}
            data["decisions"] = decision_rows.get(int(row["alert_id"])) or None
            data["context"] = [
                {k: v for k, v in c.items() if k != "id"} for c in context_rows.get(int(row["alert_id"]), [])
            ] or None
            if data["decisions"]:
                for decision in data["decisions"]:
                    if isinstance(decision.get("simulated"), int):
                        decision["simulated"] = bool(decision["simulated"])
            if not data.get("uuid"):
                data["uuid"] = str(uuid_module.uuid4())
            yield Signal.from_dict(data)


def import_legacy(conn: Connection, ctx: MigrationContext) -> tuple[int, int]:
    """Copy the unsent signals and the machines of a cscapi 0.7.0 database. Returns (signals, machines) imported."""
    now = utcnow()
    insert_signal = insert_ignore(ctx.engine, schema.signals)
    imported_signals = 0
    batch: list[dict[str, Any]] = []
    for signal in _legacy_signals(conn):
        batch.append(signal_row(signal, now))
        if len(batch) >= 500:
            imported_signals += conn.execute(insert_signal, batch).rowcount or 0
            batch = []
    if batch:
        imported_signals += conn.execute(insert_signal, batch).rowcount or 0

    imported_machines = 0
    legacy_machines = _reflect(conn, "machine_models")
    if legacy_machines is not None:
        insert_machine = insert_ignore(ctx.engine, schema.machines)
        for row in conn.execute(select(legacy_machines)).mappings():
            if not row.get("machine_id"):
                continue
            password = row.get("password")
            values = {
                "machine_id": row["machine_id"],
                "password": ctx.encrypt_secret(conn, password),
                "token": ctx.encrypt_secret(conn, row.get("token")),
                "scenarios": row.get("scenarios") or "",
                # The legacy "failing" flag was permanent; here a failing machine is retried after a cool-down.
                "is_failing": False,
                "registered": bool(password),
                "created_at": now,
            }
            imported_machines += conn.execute(insert_machine, values).rowcount or 0
    conn.execute(
        insert_ignore(ctx.engine, schema.storage_meta),
        {
            "key": "legacy_import",
            "value": json.dumps({"signals": imported_signals, "machines": imported_machines, "at": now.isoformat()}),
        },
    )
    logger.info(
        "imported %d unsent signals and %d machines from the cscapi 0.7.0 tables (left in place)",
        imported_signals,
        imported_machines,
    )
    return imported_signals, imported_machines


# ---- running the steps ----------------------------------------------------------------------------------------


def read_version(conn: Connection) -> int:
    """The database's schema version: 0 when it has no ``schema_version`` table yet."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    value = conn.execute(select(func.max(schema.schema_version.c.version))).scalar()
    return int(value or 0)


def _refuse_newer(version: int, where: str) -> None:
    if version > current_version():
        raise StorageError(
            f"The database {where} has schema version {version}, newer than this cscapi understands "
            f"({current_version()}).",
            hint="Upgrade cscapi (pip install -U cscapi) to use this database; it was left untouched.",
        )


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the database's migration lock (one migrator at a time)."""
    backend = engine.dialect.name
    if backend == "sqlite":
        with engine.connect().execution_options(cscapi_write=True) as conn, conn.begin():
            yield conn
    elif backend == "postgresql":
        with engine.connect() as conn, conn.begin():
            key = zlib.crc32(b"cscapi schema migration")
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            yield conn
    else:  # MariaDB/MySQL: DDL commits implicitly, so a named lock serialises migrators instead.
        with engine.connect() as conn:
            name = f"cscapi_schema_{conn.exec_driver_sql('SELECT DATABASE()').scalar()}"[:64]
            got = conn.execute(text("SELECT GET_LOCK(:name, 120)"), {"name": name}).scalar()
            conn.commit()
            if got != 1:
                raise StorageError("Timed out waiting for another process to finish migrating the database.")
            try:
                with conn.begin():
                    yield conn
            finally:
                try:
                    conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                    conn.commit()
                except SQLAlchemyError:  # never mask the step's own error; closing the session frees the lock
                    conn.invalidate()


def ensure_schema(engine: Engine, *, encrypt_secret: SecretEncoder, where: str) -> int:
    """Bring the database up to the current version (creating it if empty). Returns the version found at open."""
    with engine.connect() as conn:
        found = read_version(conn)
        conn.rollback()
    _refuse_newer(found, where)
    if found == current_version():
        return found
    ctx = MigrationContext(engine=engine, encrypt_secret=encrypt_secret)
    with _schema_lock(engine) as conn:
        conn.execution_options(preserve_rowcount=True)
        current = read_version(conn)  # another process may have migrated meanwhile
        _refuse_newer(current, where)
        for step in MIGRATIONS:
            if step.version <= current:
                continue
            logger.info(
                "migrating the signal storage %s to schema version %d: %s", where, step.version, step.description
            )
            step.apply(conn, ctx)
            conn.execute(
                schema.schema_version.insert(),
                {"version": step.version, "description": step.description, "applied_at": utcnow()},
            )
    return found
