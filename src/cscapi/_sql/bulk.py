"""Bulk insertion of signals on PostgreSQL: a whole batch as ONE JSON parameter, expanded by the server in order.

psycopg is slow at many small parameters (it parses a statement with 9 parameters per row, and dumps arrays in
Python), while one large string is cheap to send: ``json_to_recordset`` expands it, ``position`` keeps the caller's
order (so alert ids follow it), ``RETURNING`` gives the new rows' ids: faster than executemany for large batches.
(MariaDB's ``JSON_TABLE`` was slower than PyMySQL's multi-row executemany, so MariaDB does not use this.) Figures:
docs/benchmarks.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from .schema import CAPI, format_utc

__all__ = [
    "COPY_MIN_ROWS",
    "PG_BULK_INSERT",
    "json_batches",
    "pg_copy",
    "placeholder",
    "raw_insert",
    "raw_lookup",
    "row_tuples",
]

# column -> its type in the JSON record. The payload travels as a JSON *string* (escaped once more): as a nested
# JSON object it would be re-parsed, and a NUL in a message (escaped in the payload) would then be refused.
_COLUMNS = {
    "uuid": "varchar",
    "destination": "varchar",
    "machine_id": "varchar",
    "scenario": "varchar",
    "created_at": "varchar",
    "payload": "text",
    "status": "varchar",
    "added_at": "varchar",
    "sent_at": "varchar",
}
_NAMES = ", ".join(_COLUMNS)

PG_BULK_INSERT = (
    f"INSERT INTO signals ({_NAMES}) SELECT {_NAMES} FROM json_to_recordset(%(batch)s::json) AS batch("
    + ", ".join(f"{name} {kind}" for name, kind in _COLUMNS.items())
    + ", position int) ORDER BY position ON CONFLICT (destination, uuid) DO NOTHING RETURNING uuid, alert_id"
)

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # one encoder, not one per row

# One statement per few MB: bounded memory on the server for huge batches.
MAX_BATCH_CHARS = 4_000_000


def _time(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else format_utc(value)


def _item(row: dict[str, Any], position: int) -> str:
    """One record as JSON text."""
    item = {name: row[name] for name in _COLUMNS if name != "destination"}
    item["destination"] = row.get("destination", CAPI)
    item["added_at"] = _time(row["added_at"])
    item["sent_at"] = _time(row["sent_at"])
    item["position"] = position
    return _encode(item)


def json_batches(rows: list[dict[str, Any]], max_chars: int = MAX_BATCH_CHARS) -> Iterator[str]:
    """The rows as JSON arrays of at most ``max_chars`` characters each (one row alone may exceed it)."""
    parts: list[str] = []
    size = 0
    for position, row in enumerate(rows):
        text = _item(row, position)
        if parts and size + len(text) + 1 > max_chars:
            yield "[" + ",".join(parts) + "]"
            parts, size = [], 0
        parts.append(text)
        size += len(text) + 1
    if parts:
        yield "[" + ",".join(parts) + "]"


# ---- SQLite and MariaDB/MySQL: executemany of plain tuples on the driver's own SQL ------------------------------
# SQLAlchemy's executemany builds and type-processes one parameter dict per row (about half of a 10,000-row add on
# SQLite); the driver takes tuples directly. Values are the ones ``codec.signal_row`` checked, times formatted here.


def placeholder(paramstyle: str) -> str | None:
    """The positional marker of a DB-API ``paramstyle`` (None: use SQLAlchemy's statement instead)."""
    return {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(paramstyle)


def raw_insert(backend: str, mark: str) -> str:
    """INSERT of one row (for executemany) that skips a uuid already stored."""
    values = ", ".join([mark] * len(_COLUMNS))
    if backend == "sqlite":
        return f"INSERT INTO signals ({_NAMES}) VALUES ({values}) ON CONFLICT DO NOTHING"
    return f"INSERT IGNORE INTO signals ({_NAMES}) VALUES ({values})"


def raw_lookup(mark: str, count: int) -> str:
    """The alert ids of ``count`` uuids of one destination (parameters: the destination, then the uuids)."""
    return f"SELECT uuid, alert_id FROM signals WHERE destination = {mark} AND uuid IN ({', '.join([mark] * count)})"


def row_tuples(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows as tuples in ``raw_insert``'s column order."""
    return [
        (
            row["uuid"],
            row.get("destination", CAPI),
            row["machine_id"],
            row["scenario"],
            row["created_at"],
            row["payload"],
            row["status"],
            _time(row["added_at"]),
            _time(row["sent_at"]),
        )
        for row in rows
    ]


# ---- PostgreSQL, large batches: COPY with ids taken from the sequence first ---------------------------------------
# COPY parses rows far faster than INSERT ... SELECT FROM json_to_recordset, but has no ON CONFLICT and no RETURNING:
# the ids come from the table's sequence first (in the caller's order), and the COPY runs inside a savepoint, so a
# uuid already queued (a unique violation) rolls back only the COPY and the caller takes the JSON path instead.

COPY_MIN_ROWS = 64  # below this, the three extra round trips (ids, savepoint, release) cost more than COPY saves

PG_NEXT_IDS = "SELECT nextval(pg_get_serial_sequence('signals', 'alert_id')) FROM generate_series(1, %(n)s)"
PG_COPY = f"COPY signals (alert_id, {_NAMES}) FROM STDIN"


def pg_copy(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int] | None:
    """COPY ``rows`` (each with its ``destination``) into ``signals``; returns the new alert id of every uuid, or
    None (nothing written) when one of them is already queued for its destination."""
    import psycopg  # only reached on PostgreSQL, whose driver is psycopg 3

    ids = sorted(int(row[0]) for row in conn.exec_driver_sql(PG_NEXT_IDS, {"n": len(rows)}))
    raw: psycopg.Connection[Any] = conn.connection.dbapi_connection  # type: ignore[assignment]
    try:
        with conn.begin_nested(), raw.cursor() as cursor, cursor.copy(PG_COPY) as copy:
            for alert_id, values in zip(ids, row_tuples(rows), strict=True):
                copy.write_row((alert_id, *values))
    except psycopg.errors.UniqueViolation:
        return None
    except psycopg.Error as exc:  # wrapped as SQLAlchemy would: the storage's error handling and retries apply
        raise DBAPIError.instance(PG_COPY, None, exc, psycopg.Error) from exc
    return {row["uuid"]: alert_id for alert_id, row in zip(ids, rows, strict=True)}
