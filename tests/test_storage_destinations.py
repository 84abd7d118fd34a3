"""One signal queue, two destinations (CAPI and a local LAPI): a signal queued for both is two rows claimed, sent,
quarantined, counted and pruned apart; CAPI stays the default everywhere; schema version 5 upgrades a version 4
database on SQLite, PostgreSQL and MariaDB (old rows become CAPI's, rerun harmless)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Column, Index, MetaData, Table, create_engine, inspect, select, text

from cscapi._sql import migrations, schema
from cscapi.errors import ValidationError
from cscapi.models import Machine, QueueCounts, Signal
from cscapi.sql_storage import SQLStorage
from cscapi.storage import IncompatibleStorageError, StorageInterface, check_destinations, queue_signals
from cscapi.timeutil import utcnow
from test_storage_support import MACHINE_A, make_signals


@pytest.fixture
def storage(database_url: str) -> Iterator[SQLStorage]:
    with SQLStorage(database_url) as st:
        yield st


def rows(url: str) -> list[tuple[str, str, str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT destination, uuid, status FROM signals ORDER BY alert_id")).all()
            return [(str(d), str(u), str(s)) for d, u, s in found]
    finally:
        engine.dispose()


def test_a_signal_queued_for_both_is_two_rows_sent_apart(storage: SQLStorage, database_url: str) -> None:
    signals = make_signals(3)
    assert storage.add_signals(signals, destinations=("capi", "lapi")) == 6
    assert storage.add_signals(signals, destinations=("capi", "lapi")) == 0  # unique per (destination, uuid)
    assert storage.add_signals(signals) == 0
    assert sorted(rows(database_url)) == sorted((d, s.uuid or "", "queued") for d in ("capi", "lapi") for s in signals)
    assert storage.count_signals() == QueueCounts(queued=3)  # CAPI by default
    assert storage.count_signals(destination="lapi") == QueueCounts(queued=3)

    lapi = storage.claim_signals(10, lease_seconds=60, destination="lapi")
    assert sorted(s.uuid or "" for s in lapi.signals) == sorted(s.uuid or "" for s in signals)
    assert len(storage.claim_signals(10, lease_seconds=60, destination="lapi")) == 0  # never two senders
    capi = storage.claim_signals(10, lease_seconds=60)  # CAPI's rows are untouched by LAPI's claim
    assert len(capi) == 3
    assert {s.alert_id for s in capi.signals}.isdisjoint({s.alert_id for s in lapi.signals})

    first = int(lapi.signals[0].alert_id or 0)
    assert storage.extend_claim(lapi, [first], 120) == [first]
    assert storage.quarantine(lapi, [first], "refused by LAPI") == 1
    assert storage.mark_sent(lapi) == 2
    assert storage.release_claim(capi) == 3
    assert storage.count_signals(destination="lapi") == QueueCounts(sent=2, quarantined=1)
    assert storage.count_signals() == QueueCounts(queued=3)
    assert [reason for _, reason in storage.list_quarantined(destination="lapi")] == ["refused by LAPI"]
    assert storage.list_quarantined() == []
    assert storage.requeue_quarantined() == 0  # CAPI has none
    assert storage.requeue_quarantined(destination="lapi") == 1
    assert storage.prune() == 0
    assert storage.prune(destination="lapi") == 2
    assert storage.count_signals(destination="lapi") == QueueCounts(queued=1)
    assert len(storage.get_signals(limit=10)) == 3  # the 0.7.0 surface reads CAPI's queue only


def test_lapi_claims_ignore_a_capi_machine_cooling_down(storage: SQLStorage) -> None:
    storage.add_signals(make_signals(2, MACHINE_A), destinations="both")
    cooling = Machine(machine_id=MACHINE_A, password="p" * 32, failing_until=utcnow() + timedelta(hours=1))
    storage.update_or_create_machine(cooling)
    assert len(storage.claim_signals(10, lease_seconds=60)) == 0
    assert len(storage.claim_signals(10, lease_seconds=60, destination="lapi")) == 2


def test_destinations_are_checked(sqlite_url: str) -> None:
    assert check_destinations("both") == ("capi", "lapi")
    assert check_destinations(("lapi", "lapi")) == ("lapi",)
    with SQLStorage(sqlite_url) as storage:
        for bad in ((), ("cap",), "elsewhere"):
            with pytest.raises(ValidationError) as info:
                storage.add_signals(make_signals(1), destinations=bad)
            assert "destination" in str(info.value)
        with pytest.raises(ValidationError):
            storage.claim_signals(1, 60, destination="nowhere")
        assert storage.count_signals() == QueueCounts()


def test_a_storage_without_destinations_queues_for_capi_and_refuses_lapi() -> None:
    from cscapi.legacy_storage import LegacyStorageAdapter
    from test_legacy_storage import MemoryLegacyStorage

    adapter = LegacyStorageAdapter(MemoryLegacyStorage())
    assert isinstance(adapter, StorageInterface) and not adapter.supports_destinations
    assert queue_signals(adapter, make_signals(2)) == 2  # CAPI: the storage is called as before
    with pytest.raises(IncompatibleStorageError) as info:
        queue_signals(adapter, make_signals(1, start=5), ("capi", "lapi"))
    assert "LAPI" in str(info.value) and "SQLStorage" in (info.value.hint or "")
    assert adapter.count_signals() == QueueCounts(queued=2)  # nothing half-queued


# ---- version 5 on a version 4 database ----------------------------------------------------------------------------


def _v4_signals(metadata: MetaData) -> Table:
    """The signals table as versions 1 to 4 created it: uuid unique alone, no destination."""
    columns = [Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in schema.signals.columns]
    for column in columns:
        if column.name == "uuid":
            column.unique = True
    kept = [c for c in columns if c.name != "destination"]
    table = Table("signals", metadata, *kept)
    Index("ix_signals_status_alert_id", table.c.status, table.c.alert_id)
    return table


def make_version_4(url: str, signals: int) -> list[Signal]:
    """A version 4 database holding ``signals`` queued signals; returns them."""
    stored = make_signals(signals)
    with SQLStorage(url) as storage:
        storage.add_signals(stored)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            old_rows = [dict(row) for row in conn.execute(select(schema.signals)).mappings()]
            conn.execute(text("DROP TABLE signals"))
            table = _v4_signals(MetaData())
            table.create(conn)
            conn.execute(table.insert(), [{k: v for k, v in r.items() if k != "destination"} for r in old_rows])
            conn.execute(text("DELETE FROM schema_version WHERE version >= 5"))
    finally:
        engine.dispose()
    return stored


def shape(url: str) -> tuple[set[str], set[str], list[Any]]:
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        columns = {str(c["name"]) for c in inspector.get_columns("signals")}
        indexes = {str(i["name"]) for i in inspector.get_indexes("signals") if not i.get("unique")}
        uniques = sorted(list(u["column_names"]) for u in inspector.get_unique_constraints("signals"))
        return columns, indexes, uniques
    finally:
        engine.dispose()


def test_version_5_upgrades_a_version_4_database(database_url: str) -> None:
    stored = make_version_4(database_url, 3)
    uuids = [s.uuid or "" for s in stored]
    columns, indexes, uniques = shape(database_url)
    assert "destination" not in columns and "ix_signals_status_alert_id" in indexes and ["uuid"] in uniques
    with SQLStorage(database_url) as storage:
        assert storage.schema_version_found == 4
        assert rows(database_url) == [("capi", u, "queued") for u in uuids]  # old rows are CAPI's
        assert storage.count_signals() == QueueCounts(queued=3)
        again = [Signal.from_dict(s.to_dict()) for s in stored]
        assert storage.add_signals(again) == 0  # still unique for CAPI
        assert storage.add_signals(again, destinations=("lapi",)) == 3  # the uuid alone is no longer unique
        assert len(storage.claim_signals(10, 60, destination="lapi")) == 3
        assert len(storage.claim_signals(10, 60)) == 3
    columns, indexes, uniques = shape(database_url)
    assert "destination" in columns
    assert "ix_signals_destination_status_alert_id" in indexes and "ix_signals_status_alert_id" not in indexes
    assert ["uuid"] not in uniques
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:  # idempotent: MariaDB may re-run it after a crash between DDL and the version
            migrations._v5(conn, migrations.MigrationContext(engine=engine, encrypt_secret=lambda c, v: v))
    finally:
        engine.dispose()
    assert shape(database_url) == (columns, indexes, uniques)
    assert len(rows(database_url)) == 6
