"""Machines and login locks in SQLStorage, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from cscapi.errors import ValidationError
from cscapi.models import Machine, QueueCounts
from cscapi.sql_storage import SQLStorage
from cscapi.timeutil import utcnow
from test_storage_support import MACHINE_A, MACHINE_B, make_signals


@pytest.fixture
def storage(database_url: str) -> Iterator[SQLStorage]:
    with SQLStorage(database_url) as st:
        yield st


def test_machine_round_trip_keeps_every_field(storage: SQLStorage) -> None:
    banned = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    machine = Machine(
        machine_id=MACHINE_A,
        password="s3cret-password",
        token="eyJ.token.sig",
        scenarios="acme/http-bf,crowdsecurity/ssh-bf",
        is_failing=True,
        token_expires_at=banned - timedelta(days=1),
        login_banned_until=banned,
        failing_until=banned + timedelta(microseconds=1),
        failure_reason="500 from CAPI",
        registered=True,
        organization_id="org-1",
        created_at=datetime(2024, 5, 6, 7, 8, 9, 123, tzinfo=timezone.utc),
    )
    assert storage.update_or_create_machine(machine) is True
    assert storage.get_machine_by_id(MACHINE_A) == machine
    assert storage.get_machine_by_id("nobody") is None


def test_update_or_create_machine_updates_and_keeps_creation_time(storage: SQLStorage) -> None:
    first = Machine(machine_id=MACHINE_A, password="pw")
    assert storage.update_or_create_machine(first) is True
    assert first.created_at is not None and first.created_at.tzinfo is not None
    later = Machine(machine_id=MACHINE_A, password="pw", token="tok", registered=True)
    assert storage.update_or_create_machine(later) is False
    stored = storage.get_machine_by_id(MACHINE_A)
    assert stored is not None
    assert stored.token == "tok" and stored.registered is True
    assert stored.created_at == first.created_at
    # clearing a field really clears it
    assert storage.update_or_create_machine(Machine(machine_id=MACHINE_A, password="pw", token=None)) is False
    cleared = storage.get_machine_by_id(MACHINE_A)
    assert cleared is not None and cleared.token is None


def test_list_machines_by_creation_and_delete(storage: SQLStorage) -> None:
    base = utcnow()
    storage.update_or_create_machine(Machine(machine_id=MACHINE_B, created_at=base))
    storage.update_or_create_machine(Machine(machine_id=MACHINE_A, created_at=base + timedelta(seconds=1)))
    assert [m.machine_id for m in storage.list_machines()] == [MACHINE_B, MACHINE_A]
    storage.add_signals(make_signals(2, MACHINE_B))
    storage.delete_machines([MACHINE_B])
    assert [m.machine_id for m in storage.list_machines()] == [MACHINE_A]
    assert storage.count_signals(MACHINE_B) == QueueCounts(queued=2)  # signals stay queued


def test_machine_validation(sqlite_url: str) -> None:
    with SQLStorage(sqlite_url) as storage:
        with pytest.raises(ValidationError):
            storage.update_or_create_machine(Machine(machine_id=""))
        with pytest.raises(ValidationError):
            storage.update_or_create_machine(Machine(machine_id="x" * 200))
        assert storage.list_machines() == []


def test_login_lock_is_exclusive_until_released_or_expired(storage: SQLStorage) -> None:
    assert storage.acquire_login_lock(MACHINE_A, "worker-1", ttl_seconds=60) is True
    assert storage.acquire_login_lock(MACHINE_A, "worker-2", ttl_seconds=60) is False
    assert storage.acquire_login_lock(MACHINE_A, "worker-1", ttl_seconds=60) is False  # not re-entrant
    assert storage.acquire_login_lock(MACHINE_B, "worker-2", ttl_seconds=60) is True  # per machine
    storage.release_login_lock(MACHINE_A, "worker-2")  # not the holder: no effect
    assert storage.acquire_login_lock(MACHINE_A, "worker-2", ttl_seconds=60) is False
    storage.release_login_lock(MACHINE_A, "worker-1")
    assert storage.acquire_login_lock(MACHINE_A, "worker-2", ttl_seconds=0.2) is True
    time.sleep(0.35)
    assert storage.acquire_login_lock(MACHINE_A, "worker-3", ttl_seconds=60) is True  # expired: taken over
    storage.release_login_lock(MACHINE_A, "worker-2")  # the old holder cannot release the new lock
    assert storage.acquire_login_lock(MACHINE_A, "worker-4", ttl_seconds=60) is False
    assert storage.list_machines() == []  # locks create no machine


def test_login_lock_validation(sqlite_url: str) -> None:
    with SQLStorage(sqlite_url) as storage:
        for ttl in (0, -5, float("nan")):
            with pytest.raises(ValidationError):
                storage.acquire_login_lock(MACHINE_A, "w", ttl_seconds=ttl)
        with pytest.raises(ValidationError):
            storage.acquire_login_lock(MACHINE_A, "w" * 300, ttl_seconds=5)
        assert storage.acquire_login_lock(MACHINE_A, "w", ttl_seconds=5) is True
