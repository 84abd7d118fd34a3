"""Schema versions: a new database is created at the current version, an older one is upgraded in a transaction,
a newer one is refused, and a database of the legacy cscapi 0.7.0 SDK is imported (built here with plain SQL)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from conftest import require_module
from cscapi._sql import migrations
from cscapi.errors import StorageError
from cscapi.models import QueueCounts
from cscapi.sql_storage import SQLStorage
from test_storage_support import MACHINE_A, MACHINE_B, make_signals


def run_sql(url: str, *statements: str, params: list[dict[str, Any]] | None = None) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement), params or [{}])
    finally:
        engine.dispose()


def query(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def test_new_database_gets_the_current_version(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        assert storage.schema_version == migrations.CURRENT_VERSION == 6
        assert storage.schema_version_found == 0
    assert sorted(row[0] for row in query(database_url, "SELECT version FROM schema_version")) == [1, 2, 3, 4, 5, 6]
    with SQLStorage(database_url) as storage:  # reopening: nothing to do
        assert storage.schema_version_found == 6


def test_a_newer_database_is_refused_and_left_untouched(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        storage.add_signals(make_signals(2))
    run_sql(database_url, "INSERT INTO schema_version (version, description, applied_at) VALUES (7, 'future', 'x')")
    with pytest.raises(StorageError) as info:
        SQLStorage(database_url)
    assert "schema version 7" in str(info.value)
    assert "upgrade cscapi" in str(info.value).lower()
    assert len(query(database_url, "SELECT alert_id FROM signals")) == 2


def test_an_older_database_is_upgraded_step_by_step(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with SQLStorage(database_url) as storage:
        storage.add_signals(make_signals(3))

    def probe(conn: Any, ctx: migrations.MigrationContext) -> None:
        conn.execute(text("CREATE TABLE v2_probe (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO v2_probe (id) SELECT alert_id FROM signals"))

    now = migrations.CURRENT_VERSION
    monkeypatch.setattr(
        migrations, "MIGRATIONS", [*migrations.MIGRATIONS, migrations.Migration(now + 1, "probe", probe)]
    )
    with SQLStorage(database_url) as storage:
        assert storage.schema_version_found == now
        assert storage.schema_version == now + 1
        assert storage.count_signals() == QueueCounts(queued=3)
    assert sorted(row[0] for row in query(database_url, "SELECT version FROM schema_version")) == [*range(1, now + 2)]
    assert len(query(database_url, "SELECT id FROM v2_probe")) == 3


def test_a_failing_step_leaves_the_version_unchanged(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    SQLStorage(database_url).close()

    def broken(conn: Any, ctx: migrations.MigrationContext) -> None:
        conn.execute(text("CREATE TABLE half_done (id INTEGER PRIMARY KEY)"))
        conn.execute(text("SELECT no_such_column FROM signals"))

    now = migrations.CURRENT_VERSION
    broken_step = migrations.Migration(now + 1, "broken", broken)
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, broken_step])
    with pytest.raises(StorageError) as info:
        SQLStorage(database_url)
    assert "opening the storage failed" in str(info.value)
    assert sorted(row[0] for row in query(database_url, "SELECT version FROM schema_version")) == [*range(1, now + 1)]
    if not database_url.startswith("mysql"):  # MariaDB commits DDL implicitly; the others roll it back
        engine = create_engine(database_url)
        assert not inspect(engine).has_table("half_done")
        engine.dispose()


def signal_indexes(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {str(index["name"]) for index in inspect(engine).get_indexes("signals")}
    finally:
        engine.dispose()


def test_version_2_drops_the_claim_token_index_of_a_version_1_database(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        storage.add_signals(make_signals(4))
    assert "ix_signals_claim_token" not in signal_indexes(database_url)  # a new database never has it
    # Rebuild a version 1 database as version 1 created it: with the index, without the later version rows.
    run_sql(
        database_url,
        "CREATE INDEX ix_signals_claim_token ON signals (claim_token)",
        "DELETE FROM schema_version WHERE version >= 2",
    )
    assert "ix_signals_claim_token" in signal_indexes(database_url)
    with SQLStorage(database_url) as storage:
        assert storage.schema_version_found == 1
        claim = storage.claim_signals(3, lease_seconds=60)
        assert len(claim.signals) == 3
        assert storage.mark_sent(claim) == 3
        assert storage.count_signals() == QueueCounts(queued=1, sent=3)
    assert "ix_signals_claim_token" not in signal_indexes(database_url)
    assert sorted(row[0] for row in query(database_url, "SELECT version FROM schema_version")) == [1, 2, 3, 4, 5, 6]
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            ctx = migrations.MigrationContext(engine=engine, encrypt_secret=lambda c, v: v)
            migrations._v2(conn, ctx)  # idempotent: MariaDB may re-run it after a crash between DDL and the version
    finally:
        engine.dispose()
    assert "ix_signals_claim_token" not in signal_indexes(database_url)


def signal_columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {str(column["name"]) for column in inspect(engine).get_columns("signals")}
    finally:
        engine.dispose()


def test_version_3_drops_the_attempts_column_of_a_version_2_database(database_url: str) -> None:
    stored = make_signals(3, MACHINE_A) + make_signals(2, MACHINE_B, start=10)
    with SQLStorage(database_url) as storage:
        storage.add_signals(stored)
        claim = storage.claim_signals(2, lease_seconds=3600)
        storage.claim_signals(1, lease_seconds=3600)
        assert storage.quarantine(claim, [int(claim.signals[0].alert_id or 0)], "refused") == 1
    assert "attempts" not in signal_columns(database_url)  # a new database never has it
    before = query(database_url, "SELECT * FROM signals ORDER BY alert_id")
    # A version 2 database: the column (as version 2 filled it), without the version 3 row.
    run_sql(
        database_url,
        "ALTER TABLE signals ADD COLUMN attempts INTEGER DEFAULT 0 NOT NULL",
        "UPDATE signals SET attempts = 2 WHERE status = 'claimed'",
        "DELETE FROM schema_version WHERE version >= 3",
    )
    with SQLStorage(database_url) as storage:
        assert storage.schema_version_found == 2
        assert "attempts" not in signal_columns(database_url)
        assert query(database_url, "SELECT * FROM signals ORDER BY alert_id") == before  # every row kept as it was
        assert storage.count_signals() == QueueCounts(queued=2, claimed=2, quarantined=1)
        assert storage.add_signals(make_signals(1, start=20)) == 1  # the queue works on the rebuilt table
        assert storage.add_signals(stored) == 0  # uuids are still unique
        assert storage.requeue_quarantined() == 1
        assert len(storage.claim_signals(10, lease_seconds=60).signals) == 4
        assert storage.count_signals() == QueueCounts(claimed=6)
        assert "ix_signals_destination_status_alert_id" in signal_indexes(database_url)
    assert sorted(row[0] for row in query(database_url, "SELECT version FROM schema_version")) == [1, 2, 3, 4, 5, 6]
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            ctx = migrations.MigrationContext(engine=engine, encrypt_secret=lambda c, v: v)
            migrations._v3(conn, ctx)  # idempotent: MariaDB may re-run it after a crash between DDL and the version
    finally:
        engine.dispose()
    assert "attempts" not in signal_columns(database_url)


# ---- the legacy cscapi 0.7.0 database -----------------------------------------------------------------------------

LEGACY_DDL = [
    """CREATE TABLE machine_models (id INTEGER PRIMARY KEY, machine_id VARCHAR(128) UNIQUE, token TEXT,
       password TEXT, scenarios TEXT, is_failing BOOLEAN)""",
    """CREATE TABLE signal_models (alert_id INTEGER PRIMARY KEY, created_at TEXT, machine_id VARCHAR(128),
       scenario_version TEXT, message TEXT, uuid TEXT, start_at TEXT, scenario_trust TEXT, scenario_hash TEXT,
       scenario TEXT, stop_at TEXT, sent BOOLEAN)""",
    """CREATE TABLE source_models (id INTEGER PRIMARY KEY, scope TEXT, ip TEXT, latitude FLOAT, as_number TEXT,
       `range` TEXT, cn TEXT, value TEXT, as_name TEXT, longitude FLOAT, signal_id INTEGER)""",
    """CREATE TABLE decision_models (id INTEGER PRIMARY KEY, duration TEXT, uuid TEXT, scenario TEXT, origin TEXT,
       scope TEXT, simulated BOOLEAN, until TEXT, type TEXT, value TEXT, signal_id INTEGER)""",
    """CREATE TABLE context_models (id INTEGER PRIMARY KEY, value TEXT, `key` TEXT, signal_id INTEGER)""",
]


def legacy_ddl(url: str) -> list[str]:
    quote = "`" if url.startswith("mysql") else '"'
    return [statement.replace("`", quote) for statement in LEGACY_DDL]


def build_legacy_database(url: str) -> None:
    """What cscapi 0.7.0 leaves behind: 3 unsent signals (two with the same uuid), 1 sent, 2 machines."""
    q = '"' if not url.startswith("mysql") else "`"
    run_sql(url, *legacy_ddl(url))
    run_sql(
        url,
        "INSERT INTO machine_models (id, machine_id, token, password, scenarios, is_failing) "
        "VALUES (:id, :machine_id, :token, :password, :scenarios, :is_failing)",
        params=[
            {
                "id": 1,
                "machine_id": MACHINE_A,
                "token": "old-token",
                "password": "legacy-pw-a",
                "scenarios": "crowdsecurity/ssh-bf",
                "is_failing": True,
            },
            {
                "id": 2,
                "machine_id": MACHINE_B,
                "token": None,
                "password": "legacy-pw-b",
                "scenarios": "",
                "is_failing": False,
            },
        ],
    )
    signal = {
        "created_at": "2023-11-17 10:20:46 +0000",
        "machine_id": MACHINE_A,
        "scenario_version": "0.1",
        "message": "legacy",
        "start_at": "2023-11-17 10:20:40 +0000",
        "scenario_trust": "manual",
        "scenario_hash": "h",
        "scenario": "crowdsecurity/ssh-bf",
        "stop_at": "2023-11-17 10:20:46 +0000",
    }
    run_sql(
        url,
        "INSERT INTO signal_models (alert_id, created_at, machine_id, scenario_version, message, uuid, start_at, "
        "scenario_trust, scenario_hash, scenario, stop_at, sent) VALUES (:alert_id, :created_at, :machine_id, "
        ":scenario_version, :message, :uuid, :start_at, :scenario_trust, :scenario_hash, :scenario, :stop_at, :sent)",
        params=[
            {**signal, "alert_id": 1, "uuid": "u-1", "sent": False},
            {**signal, "alert_id": 2, "uuid": "u-2", "sent": None, "machine_id": MACHINE_B},
            {**signal, "alert_id": 3, "uuid": "u-3", "sent": True},
            {**signal, "alert_id": 4, "uuid": "u-1", "sent": False},  # 0.7.0 stored duplicates twice
            {**signal, "alert_id": 5, "uuid": None, "sent": False},
        ],
    )
    run_sql(
        url,
        f"INSERT INTO source_models (id, scope, ip, {q}range{q}, cn, value, as_name, as_number, latitude, longitude, "
        "signal_id) VALUES (:id, 'ip', :ip, NULL, 'FR', :ip, 'AS-X', '64500', 48.8, 2.3, :signal_id)",
        params=[{"id": i, "ip": f"198.51.100.{i}", "signal_id": i} for i in range(1, 6)],
    )
    run_sql(
        url,
        "INSERT INTO decision_models (id, duration, uuid, scenario, origin, scope, simulated, until, type, value, "
        "signal_id) VALUES (:id, '24h', 'd', 'crowdsecurity/ssh-bf', 'crowdsec', 'ip', :simulated, NULL, 'ban', "
        ":value, :signal_id)",
        params=[{"id": 100 + i, "value": f"198.51.100.{i}", "signal_id": i, "simulated": False} for i in range(1, 6)],
    )
    run_sql(
        url,
        f"INSERT INTO context_models (id, value, {q}key{q}, signal_id) VALUES (:id, :value, 'target_user', :signal_id)",
        params=[{"id": i, "value": f"user{i}", "signal_id": i} for i in range(1, 6)],
    )


def test_legacy_database_is_imported(database_url: str) -> None:
    build_legacy_database(database_url)
    with SQLStorage(database_url) as storage:
        signals = storage.get_signals(limit=10)
        # unsent only (#3 was sent), the duplicate uuid once, a uuid given to the one without
        assert [s.message for s in signals] == ["legacy"] * 3
        by_uuid = {s.uuid: s for s in signals}
        assert {"u-1", "u-2"} <= set(by_uuid) and len(by_uuid) == 3
        first = by_uuid["u-1"]
        assert first.created_at == "2023-11-17T10:20:46.000000Z"
        assert first.start_at == "2023-11-17T10:20:40.000000Z"
        assert first.source is not None and first.source.value == "198.51.100.1" and first.source.cn == "FR"
        assert first.source.latitude == pytest.approx(48.8)
        assert first.decisions is not None and first.decisions[0].duration == "24h"
        assert first.decisions[0].id == 101 and first.decisions[0].simulated is False
        assert first.context is not None and first.context[0].value == "user1"
        assert by_uuid["u-2"].machine_id == MACHINE_B
        assert storage.count_signals() == QueueCounts(queued=3)

        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None
        assert machine.password == "legacy-pw-a" and machine.token == "old-token"
        assert machine.is_failing is False  # the permanent legacy flag is not carried over
        assert machine.registered is True
        assert {m.machine_id for m in storage.list_machines()} == {MACHINE_A, MACHINE_B}
        claim = storage.claim_signals(limit=10, lease_seconds=60)
        assert len(claim) == 3
    # the legacy tables are left as they were, and a reopen does not import twice
    assert len(query(database_url, "SELECT alert_id FROM signal_models")) == 5
    with SQLStorage(database_url) as storage:
        assert storage.count_signals() == QueueCounts(claimed=3)


def test_legacy_import_encrypts_the_secrets_when_a_key_is_set(database_url: str) -> None:
    require_module("cryptography")
    build_legacy_database(database_url)
    with SQLStorage(database_url, encryption_key="a long passphrase for the test") as storage:
        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None and machine.password == "legacy-pw-a"
    raw = query(database_url, f"SELECT password, token FROM machines WHERE machine_id = '{MACHINE_A}'")[0]
    assert raw[0].startswith("enc:v1:") and "legacy-pw-a" not in raw[0]
    assert raw[1].startswith("enc:v1:")


def test_an_unrelated_signals_table_is_refused_not_reused(database_url: str) -> None:
    run_sql(database_url, "CREATE TABLE signals (id INTEGER PRIMARY KEY, body TEXT)")
    with pytest.raises(StorageError) as info:
        SQLStorage(database_url)
    assert "'signals'" in str(info.value) and "did not create" in str(info.value)
    assert len(query(database_url, "SELECT id FROM signals")) == 0  # left as it was


def test_legacy_database_with_machines_only(database_url: str) -> None:
    run_sql(database_url, legacy_ddl(database_url)[0])
    run_sql(
        database_url,
        "INSERT INTO machine_models (id, machine_id, token, password, scenarios, is_failing) "
        "VALUES (1, :m, NULL, 'pw', NULL, NULL)",
        params=[{"m": MACHINE_A}],
    )
    with SQLStorage(database_url) as storage:
        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None and machine.password == "pw" and machine.token is None
        assert storage.count_signals() == QueueCounts()


# ---- version 6: a claim is a live lease on a queued row -----------------------------------------------------------


def test_version_6_turns_claimed_rows_into_leases_of_queued_rows(database_url: str) -> None:
    from datetime import timedelta

    from cscapi._sql.schema import format_utc
    from cscapi.storage import Claim
    from cscapi.timeutil import utcnow

    stored = make_signals(5, MACHINE_A)
    with SQLStorage(database_url) as storage:
        storage.add_signals(stored)
        claim = storage.claim_signals(2, lease_seconds=3600)
        # The new representation: a claim changes no indexed column, the rows stay queued.
        assert [row[0] for row in query(database_url, "SELECT status FROM signals ORDER BY alert_id")] == ["queued"] * 5
        assert storage.count_signals() == QueueCounts(queued=3, claimed=2)
        storage.mark_sent(claim)
        ids = [int(s.alert_id or 0) for s in stored]
    # A version 5 database as version 5 wrote it: a live claim, a lapsed claim (status 'claimed'), and no fillfactor.
    live, lapsed = format_utc(utcnow() + timedelta(hours=1)), format_utc(utcnow() - timedelta(hours=1))
    statements = [
        f"UPDATE signals SET status = 'claimed', claim_token = 'old-live', claimed_until = '{live}' "
        f"WHERE alert_id = {ids[2]}",
        f"UPDATE signals SET status = 'claimed', claim_token = 'old-lapsed', claimed_until = '{lapsed}' "
        f"WHERE alert_id = {ids[3]}",
        "DELETE FROM schema_version WHERE version >= 6",
    ]
    if database_url.startswith("postgresql"):
        statements.append("ALTER TABLE signals RESET (fillfactor)")
    run_sql(database_url, *statements)
    with SQLStorage(database_url) as storage:
        assert storage.schema_version_found == 5
        statuses = [row[0] for row in query(database_url, "SELECT status FROM signals ORDER BY alert_id")]
        assert statuses == ["sent", "sent", "queued", "queued", "queued"]
        assert storage.count_signals() == QueueCounts(queued=2, claimed=1, sent=2)  # the lapsed claim is queued
        taken = storage.claim_signals(10, lease_seconds=60)
        assert sorted(int(s.alert_id or 0) for s in taken.signals) == [ids[3], ids[4]]  # never the live claim
        old = Claim(token="old-lapsed", signals=[], expires_at=utcnow())
        assert storage.mark_sent(old, [ids[3]]) == 0  # re-claimed: the old holder touches nothing
        kept = Claim(token="old-live", signals=[], expires_at=utcnow())
        assert storage.extend_claim(kept, [ids[2]], 60) == [ids[2]]  # the live claim is still held by its token
        assert storage.mark_sent(kept, [ids[2]]) == 1
        assert storage.mark_sent(taken) == 2
        assert storage.count_signals() == QueueCounts(sent=5)
    if database_url.startswith("postgresql"):
        options = query(database_url, "SELECT reloptions FROM pg_class WHERE relname = 'signals'")
        assert f"fillfactor={migrations.SIGNALS_FILLFACTOR}" in (options[0][0] or [])
    assert sorted(row[0] for row in query(database_url, "SELECT version FROM schema_version")) == [1, 2, 3, 4, 5, 6]
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            ctx = migrations.MigrationContext(engine=engine, encrypt_secret=lambda c, v: v)
            migrations._v6(conn, ctx)  # idempotent: MariaDB may re-run it after a crash between DDL and the version
    finally:
        engine.dispose()
    with SQLStorage(database_url) as storage:
        assert storage.count_signals() == QueueCounts(sent=5)
