"""The agent's lease (one agent per storage) in its own table, schema version 4: taken, renewed, released and taken
over like a login lock, never in ``login_locks``; a database of version 3 is migrated, and a live lease an older agent
holds there during the upgrade is honoured."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine

from cscapi._sql import migrations
from cscapi.agent import AgentLock
from cscapi.errors import AlreadyRunningError, ValidationError
from cscapi.legacy_storage import LegacyStorageAdapter
from cscapi.sql_storage import SQLStorage
from cscapi.storage import AGENT_LEASE_KEY
from test_legacy_storage import MemoryLegacyStorage
from test_storage_migrations import query, run_sql

FAR = "2999-01-01T00:00:00.000000Z"
PAST = "2000-01-01T00:00:00.000000Z"


def agent_rows(url: str) -> tuple[list[str], list[str]]:
    """The holders of the agent's lease: (in agent_leases, in login_locks under the old pseudo machine id)."""
    new = [str(r[0]) for r in query(url, "SELECT holder FROM agent_leases")]
    old = [str(r[0]) for r in query(url, f"SELECT holder FROM login_locks WHERE machine_id = '{AGENT_LEASE_KEY}'")]
    return new, old


def as_version_3(url: str, old_lease_until: str | None) -> None:
    """Turn a current database back into version 3: no agent_leases table, maybe an old agent's login_locks row."""
    run_sql(url, "DROP TABLE agent_leases", "DELETE FROM schema_version WHERE version >= 4")
    if old_lease_until is not None:
        run_sql(
            url,
            "INSERT INTO login_locks (machine_id, holder, expires_at) VALUES (:m, 'old-agent', :until)",
            params=[{"m": AGENT_LEASE_KEY, "until": old_lease_until}],
        )


def test_the_agent_lease_has_its_own_table(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        lock = AgentLock(storage, database_url, ttl_seconds=30, lease=True)
        lock.acquire()
        assert agent_rows(database_url) == ([lock.holder], [])  # not a login lock under a fake machine id any more
        assert storage.acquire_login_lock("machine-a", "h", 30)  # login locks are untouched by it
        with pytest.raises(AlreadyRunningError):
            AgentLock(storage, database_url, ttl_seconds=30, lease=True).acquire()
        lock._lease_until = time.monotonic()  # due: renewing keeps it
        lock.renew()
        lock.release()
        assert agent_rows(database_url) == ([], [])
        assert query(database_url, "SELECT machine_id FROM login_locks") == [("machine-a",)]


def test_lease_calls(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        assert storage.acquire_agent_lease("one", 60)
        assert not storage.acquire_agent_lease("two", 30)
        assert storage.renew_agent_lease("one", 60)
        assert not storage.renew_agent_lease("two", 30)
        assert storage.renew_agent_lease("one", 0.1)  # renewed to a short lease: it lapses soon
        deadline = time.monotonic() + 20
        while not storage.acquire_agent_lease("two", 30):  # one's lease lapses: two takes it over
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not storage.renew_agent_lease("one", 30)
        storage.release_agent_lease("one")  # not its lease any more: two keeps it
        assert agent_rows(database_url)[0] == ["two"]
        storage.release_agent_lease("two")
        assert agent_rows(database_url)[0] == []
        with pytest.raises(ValidationError):
            storage.acquire_agent_lease("x", 0)
        with pytest.raises(ValidationError):
            storage.renew_agent_lease("x", float("nan"))


def test_version_4_migrates_and_honours_an_old_agents_live_lease(database_url: str) -> None:
    SQLStorage(database_url).close()
    as_version_3(database_url, old_lease_until=FAR)  # an agent of the previous version runs through the upgrade
    with SQLStorage(database_url) as storage:
        assert storage.schema_version_found == 3
        assert agent_rows(database_url) == ([], ["old-agent"])  # left to the old agent
        with pytest.raises(AlreadyRunningError):
            AgentLock(storage, database_url, ttl_seconds=30, lease=True).acquire()
        storage.release_login_lock(AGENT_LEASE_KEY, "old-agent")  # the old agent stops
        lock = AgentLock(storage, database_url, ttl_seconds=30, lease=True)
        lock.acquire()
        assert agent_rows(database_url) == ([lock.holder], [])
    with SQLStorage(database_url) as storage:  # reopening: nothing to do, the lease still held
        assert storage.schema_version_found == migrations.CURRENT_VERSION
        assert not storage.acquire_agent_lease("another", 30)
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:  # idempotent: MariaDB may re-run it after a crash between DDL and the version
            migrations._v4(conn, migrations.MigrationContext(engine=engine, encrypt_secret=lambda c, v: v))
    finally:
        engine.dispose()
    assert agent_rows(database_url) == ([lock.holder], [])
    assert sorted(row[0] for row in query(database_url, "SELECT version FROM schema_version")) == [1, 2, 3, 4, 5, 6]


def test_version_4_drops_a_lapsed_old_style_lease(database_url: str) -> None:
    SQLStorage(database_url).close()
    as_version_3(database_url, old_lease_until=PAST)
    with SQLStorage(database_url) as storage:
        assert agent_rows(database_url) == ([], [])
        assert storage.acquire_agent_lease("new", 30)


def test_a_storage_without_its_own_lease_table_lends_a_login_lock() -> None:
    """The StorageInterface defaults: the LegacyStorageAdapter runs an agent on its in-process login locks."""
    storage = LegacyStorageAdapter(MemoryLegacyStorage())
    first = AgentLock(storage, "legacy://", ttl_seconds=30, lease=True)
    first.acquire()
    with pytest.raises(AlreadyRunningError):
        AgentLock(storage, "legacy://", ttl_seconds=30, lease=True).acquire()
    first._lease_until = time.monotonic()
    first.renew()
    assert not storage.renew_agent_lease("someone-else", 30)
    first.release()
    second = AgentLock(storage, "legacy://", ttl_seconds=30, lease=True)
    second.acquire()
    second.release()
