"""The tables of the signal queue, as SQLAlchemy Core metadata (no ORM).

Datetimes are stored as fixed-width UTC ISO 8601 strings (``2026-11-21T22:46:44.123456Z``): portable across SQLite,
PostgreSQL and MariaDB, exact to the microsecond, readable in a SQL shell, and ordered correctly as text.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator

__all__ = [
    "CAPI",
    "CLAIMED",
    "DESTINATIONS",
    "LAPI",
    "QUARANTINED",
    "QUEUED",
    "SENT",
    "UTCDateTime",
    "agent_leases",
    "format_utc",
    "login_locks",
    "machines",
    "metadata",
    "parse_utc",
    "schema_version",
    "signals",
    "storage_meta",
]

QUEUED = "queued"
CLAIMED = "claimed"
SENT = "sent"
QUARANTINED = "quarantined"

# Where a queued signal goes (version 5): CrowdSec's Central API (everything before) or a local engine's LAPI.
CAPI = "capi"
LAPI = "lapi"
DESTINATIONS = (CAPI, LAPI)

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_utc(value: datetime) -> str:
    """Render a datetime as the stored text; a naive datetime is read as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime(_FORMAT)


def parse_utc(text: str) -> datetime:
    """Read the stored text back into an aware UTC datetime."""
    return datetime.strptime(text, _FORMAT).replace(tzinfo=timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime stored as fixed-width text (see the module docstring)."""

    impl = String(32)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):  # already formatted (legacy import, raw comparisons)
            return value
        return format_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return parse_utc(value)


# MySQL's TEXT holds 64 KiB: a signal with a large context could pass that, so payloads get MEDIUMTEXT there.
_LONG_TEXT = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# SQLite only auto-increments an INTEGER PRIMARY KEY; the others get a 64-bit id.
_ID = BigInteger().with_variant(Integer(), "sqlite")

# uuids compare exactly everywhere: MariaDB's default collation would fold case (and call "ABC" == "abc").
_UUID = String(64).with_variant(mysql.VARCHAR(64, collation="utf8mb4_bin"), "mysql", "mariadb")

metadata = MetaData()

signals = Table(
    "signals",
    metadata,
    Column("alert_id", _ID, primary_key=True, autoincrement=True),
    Column("uuid", _UUID, nullable=False),
    # One row per (destination, uuid): a signal queued for CAPI and LAPI is two rows, claimed and sent apart.
    Column("destination", String(8), nullable=False, default=CAPI, server_default=CAPI),
    Column("machine_id", String(128), nullable=True, index=True),
    Column("scenario", String(255), nullable=True),
    Column("created_at", String(64), nullable=True),
    Column("payload", _LONG_TEXT, nullable=False),
    Column("status", String(16), nullable=False, default=QUEUED),
    Column("claim_token", String(64), nullable=True),  # no index: claims are updated by alert_id (see v2)
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("sent_at", UTCDateTime(), nullable=True),
    Column("quarantine_reason", Text(), nullable=True),
    Column("added_at", UTCDateTime(), nullable=False),
    UniqueConstraint("destination", "uuid", name="uq_signals_destination_uuid"),
    Index("ix_signals_destination_status_alert_id", "destination", "status", "alert_id"),
)

machines = Table(
    "machines",
    metadata,
    Column("machine_id", String(128), primary_key=True),
    Column("password", Text(), nullable=True),
    Column("token", Text(), nullable=True),
    Column("scenarios", Text(), nullable=True),
    Column("is_failing", Boolean(), nullable=False, default=False),
    Column("token_expires_at", UTCDateTime(), nullable=True),
    Column("login_banned_until", UTCDateTime(), nullable=True),
    Column("failing_until", UTCDateTime(), nullable=True),
    Column("failure_reason", Text(), nullable=True),
    Column("registered", Boolean(), nullable=False, default=False),
    Column("organization_id", String(255), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)


def _lease_table(name: str, key: Column[str]) -> Table:
    """A table of leases: one row per ``key``, held by ``holder`` until ``expires_at`` (see ``cscapi._sql.locks``)."""
    return Table(
        name,
        metadata,
        key,
        Column("holder", String(255), nullable=False),
        Column("expires_at", UTCDateTime(), nullable=False),
    )


login_locks = _lease_table("login_locks", Column("machine_id", String(128), primary_key=True))
# Named leases that are not a machine's login (version 4): the agent's "one agent per storage" lease.
agent_leases = _lease_table("agent_leases", Column("name", String(64), primary_key=True))


schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer(), primary_key=True, autoincrement=False),
    Column("description", String(255), nullable=False),
    Column("applied_at", UTCDateTime(), nullable=False),
)

storage_meta = Table(
    "storage_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text(), nullable=False),
)
