"""A storage written for cscapi 0.7.0 (only the legacy StorageInterface methods) under the 1.0 client.

The client refuses one at construction (``IncompatibleStorageError``: no atomic claim, so concurrent senders could
send twice); ``LegacyStorageAdapter`` runs one in a single process with the queue's guarantees (leased claims, no
double send between threads, marked sent only after a 2xx, quarantine), refusing use from another process. Tested
with two real legacy-shaped classes: one in memory, one on SQLite (``sqlite3``, as a 0.7.0 user might write it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient
from cscapi.errors import ConfigurationError, ServerError, StorageError, ValidationError
from cscapi.sql_storage import SQLStorage
from cscapi.storage import (
    IncompatibleStorageError,
    LegacyStorageAdapter,
    MachineModel,
    SignalModel,
    StorageInterface,
)
from cscapi.utils import create_signal, generate_machine_id_from_key
from test_client_support import make_config

M1 = generate_machine_id_from_key("legacy-store-1", prefix="old")
M2 = generate_machine_id_from_key("legacy-store-2", prefix="old")
SCENARIO = "crowdsecurity/ssh-bf"


class MemoryLegacyStorage(StorageInterface):
    """An in-memory storage as written for 0.7.0: the seven legacy methods, nothing else."""

    def __init__(self) -> None:
        self.signals: dict[int, Any] = {}
        self.machines: dict[str, Any] = {}
        self.next_id = 1

    def get_signals(self, limit: int, offset: int = 0, sent: Any = False, is_failing: Any = False) -> list[Any]:
        rows = sorted(self.signals.values(), key=lambda s: s.alert_id)
        if sent is not None:
            rows = [s for s in rows if bool(s.sent) == sent]
        if is_failing is not None:
            rows = [
                s for s in rows if bool(getattr(self.machines.get(s.machine_id), "is_failing", False)) == is_failing
            ]
        return [replace(s) for s in rows[offset : offset + limit]]

    def get_machine_by_id(self, machine_id: str) -> Any:
        machine = self.machines.get(machine_id)
        return replace(machine) if machine is not None else None

    def update_or_create_machine(self, machine: Any) -> bool:
        created = machine.machine_id not in self.machines
        self.machines[machine.machine_id] = MachineModel(**asdict(machine))
        return created

    def update_or_create_signal(self, signal: Any) -> bool:
        if signal.alert_id is None:
            signal.alert_id = self.next_id
            self.next_id += 1
        created = signal.alert_id not in self.signals
        self.signals[signal.alert_id] = SignalModel(**asdict(signal))
        return created

    def mass_update_signals(self, signal_ids: list[int], changes: dict[str, Any]) -> None:
        for signal_id in signal_ids:
            for key, value in changes.items():
                setattr(self.signals[signal_id], key, value)

    def delete_signals(self, signal_ids: list[int]) -> None:
        for signal_id in signal_ids:
            self.signals.pop(signal_id, None)

    def delete_machines(self, machine_ids: list[str]) -> None:
        for machine_id in machine_ids:
            self.machines.pop(machine_id, None)


class SQLiteLegacyStorage(StorageInterface):
    """A 0.7.0-style storage on SQLite: 0.7.0's machine columns, a signal row per signal, ``sent`` as a column.

    Like 0.7.0's SQLStorage it does not set ``alert_id`` on the object it is given, and it keeps only the legacy
    machine fields (no ban, cool-down or expiry: the adapter keeps those in memory).
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS signals (alert_id INTEGER PRIMARY KEY AUTOINCREMENT, machine_id TEXT, "
            "sent INTEGER NOT NULL DEFAULT 0, payload TEXT NOT NULL)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS machines (machine_id TEXT PRIMARY KEY, token TEXT, password TEXT, "
            "scenarios TEXT, is_failing INTEGER)"
        )

    def get_signals(self, limit: int, offset: int = 0, sent: Any = False, is_failing: Any = False) -> list[Any]:
        query = "SELECT s.alert_id, s.sent, s.payload FROM signals s LEFT JOIN machines m USING (machine_id) WHERE 1"
        if sent is not None:
            query += " AND s.sent = 1" if sent else " AND s.sent = 0"
        if is_failing is not None:
            query += " AND m.is_failing = 1" if is_failing else " AND (m.is_failing = 0 OR m.is_failing IS NULL)"
        query += " ORDER BY s.alert_id LIMIT ? OFFSET ?"
        with self.lock:
            rows = self.db.execute(query, (limit, offset)).fetchall()
        return [SignalModel(**{**json.loads(p), "alert_id": a, "sent": bool(s)}) for a, s, p in rows]

    def get_machine_by_id(self, machine_id: str) -> Any:
        with self.lock:
            row = self.db.execute("SELECT * FROM machines WHERE machine_id = ?", (machine_id,)).fetchone()
        if row is None:
            return None
        return MachineModel(machine_id=row[0], token=row[1], password=row[2], scenarios=row[3], is_failing=bool(row[4]))

    def update_or_create_machine(self, machine: Any) -> bool:
        values = asdict(machine)
        with self.lock:
            created = self.db.execute("SELECT 1 FROM machines WHERE machine_id = ?", (machine.machine_id,)).fetchone()
            self.db.execute(
                "INSERT OR REPLACE INTO machines VALUES (:machine_id, :token, :password, :scenarios, :is_failing)",
                values,
            )
        return created is None

    def update_or_create_signal(self, signal: Any) -> bool:
        payload = json.dumps({k: v for k, v in asdict(signal).items() if k not in ("alert_id", "sent")})
        with self.lock:
            if signal.alert_id is not None:
                self.db.execute("UPDATE signals SET payload = ? WHERE alert_id = ?", (payload, signal.alert_id))
                return False
            self.db.execute(
                "INSERT INTO signals (machine_id, sent, payload) VALUES (?, ?, ?)",
                (signal.machine_id, int(bool(signal.sent)), payload),
            )
        return True

    def mass_update_signals(self, signal_ids: list[int], changes: dict[str, Any]) -> None:
        assert set(changes) == {"sent"}  # all the 0.7.0 client ever changed
        with self.lock:
            self.db.executemany(
                "UPDATE signals SET sent = ? WHERE alert_id = ?", [(int(changes["sent"]), i) for i in signal_ids]
            )

    def delete_signals(self, signal_ids: list[int]) -> None:
        with self.lock:
            self.db.executemany("DELETE FROM signals WHERE alert_id = ?", [(i,) for i in signal_ids])

    def delete_machines(self, machine_ids: list[str]) -> None:
        with self.lock:
            self.db.executemany("DELETE FROM machines WHERE machine_id = ?", [(i,) for i in machine_ids])

    def rows(self) -> list[tuple[str, int]]:
        with self.lock:
            return [(json.loads(p)["uuid"], s) for p, s in self.db.execute("SELECT payload, sent FROM signals")]

    def close(self) -> None:
        self.db.close()


class DuckLegacyStorage:
    """A 0.7.0 storage that does not even subclass StorageInterface."""

    def get_signals(self, limit: int, offset: int = 0, sent: Any = False, is_failing: Any = False) -> list[Any]:
        return []

    get_machine_by_id = update_or_create_machine = update_or_create_signal = get_signals
    mass_update_signals = delete_signals = delete_machines = get_signals


def signals(machine_id: str, count: int, first: int = 1) -> list[Any]:
    return [create_signal(f"198.51.100.{i % 250 + 1}", SCENARIO, None, machine_id) for i in range(first, first + count)]


# ---- refusal ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_client_refuses_a_legacy_storage_and_says_why() -> None:
    for legacy in (MemoryLegacyStorage(), DuckLegacyStorage()):
        for client_class in (CAPIClient, AsyncCAPIClient):
            with pytest.raises(IncompatibleStorageError) as caught:
                client_class(legacy, make_config(None))  # type: ignore[arg-type]
            text = str(caught.value)
            assert isinstance(caught.value, ConfigurationError)
            assert "0.7.0" in text and "claim_signals" in text and "twice" in text  # why
            assert "LegacyStorageAdapter" in text and "SQLStorage" in text  # what to do
    with pytest.raises(IncompatibleStorageError, match="does not implement claim_signals"):
        MemoryLegacyStorage().claim_signals(10, 30.0)  # never a silent None
    with pytest.raises(IncompatibleStorageError, match="StorageInterface"):
        CAPIClient(object(), make_config(None))  # type: ignore[arg-type]


def test_a_half_implemented_new_storage_stays_abstract(tmp_path: Path) -> None:
    class Half(MemoryLegacyStorage):
        def claim_signals(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError

    with pytest.raises(TypeError, match="abstract"):
        Half()
    with pytest.raises(IncompatibleStorageError, match="directly"):
        LegacyStorageAdapter(SQLStorage(f"sqlite:///{tmp_path / 'new.db'}"))
    with pytest.raises(IncompatibleStorageError, match="lacks"):
        LegacyStorageAdapter(object())


def test_the_adapter_refuses_another_process() -> None:
    adapter = LegacyStorageAdapter(MemoryLegacyStorage())
    assert adapter.count_signals().queued == 0
    pid = os.fork()
    if pid == 0:  # the child: any use must raise StorageError, nothing else
        try:
            adapter.claim_signals(10, 30.0)
            code = 1
        except StorageError as exc:
            code = 0 if "process" in exc.message and "SQLStorage" in str(exc) else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert adapter.claim_signals(10, 30.0).signals == []  # still fine in its own process


def test_a_lapsed_claim_still_marks_what_nobody_took() -> None:
    """As SQLStorage: a 2xx that arrives after the lease still marks the signals unless another claim took them."""
    legacy = MemoryLegacyStorage()
    adapter = LegacyStorageAdapter(legacy)
    assert adapter.add_signals(signals(M1, 4)) == 4
    late = adapter.claim_signals(2, 1e-9)  # its lease is over by the next call
    assert len(late) == 2 and adapter.count_signals().queued == 4
    assert adapter.mark_sent(late) == 2  # nobody re-claimed them: marked, not sent again
    lapsed = adapter.claim_signals(2, 1e-9)
    taken = adapter.claim_signals(10, 60.0)  # takes the lapsed two
    assert [s.alert_id for s in taken.signals] == [s.alert_id for s in lapsed.signals]
    assert adapter.mark_sent(lapsed) == 0 and adapter.release_claim(lapsed) == 0  # no longer its signals
    assert adapter.quarantine(lapsed, [s.alert_id for s in lapsed.signals], "late") == 0
    assert adapter.mark_sent(taken) == 2 and sorted(bool(s.sent) for s in legacy.signals.values()) == [True] * 4
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValidationError):
            adapter.claim_signals(bad, 30.0)  # type: ignore[arg-type]
    for lease in (0, -1.0, float("nan")):
        with pytest.raises(ValidationError):
            adapter.claim_signals(1, lease)


# ---- the guarantees, against the emulator ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    with EmbeddedEmulator(EmulatorConfig(seed=5, community_size=10)) as server:
        yield server


@pytest.fixture
def fresh(emu: Any) -> Any:
    emu.admin.reset()
    return emu


def received_uuids(emu: Any) -> list[str]:
    return [item["signal"]["uuid"] for item in emu.admin.signals()]


def test_threads_sharing_an_adapter_never_send_twice(fresh: Any) -> None:
    legacy = MemoryLegacyStorage()
    adapter = LegacyStorageAdapter(legacy, page_size=97)
    queued = signals(M1, 330) + signals(M2, 270)
    config = make_config(None, base_url=fresh.base_url, batch_size=50)
    with CAPIClient(adapter, config) as client:
        assert client.add_signals(queued) == 600
        assert client.add_signals(queued[:10]) == 0  # unique by uuid, as with SQLStorage
    totals: list[int] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(4)

    def sender() -> None:
        try:
            with CAPIClient(adapter, config) as client:
                barrier.wait(timeout=60)
                totals.append(client.send_signals(prune_after_send=False))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not failures and sum(totals) == 600
    sent = received_uuids(fresh)
    assert len(sent) == 600 and sorted(sent) == sorted(s.uuid for s in queued)  # each once
    assert all(s.sent for s in legacy.signals.values()) and len(legacy.signals) == 600  # marked, kept
    assert adapter.count_signals().sent == 600 and adapter.count_signals(M2).sent == 270
    assert adapter.prune() == 600 and legacy.signals == {}


def test_sqlite_legacy_store_marks_sent_only_after_2xx_and_quarantines(fresh: Any, tmp_path: Path) -> None:
    legacy = SQLiteLegacyStorage(tmp_path / "legacy.db")
    adapter = LegacyStorageAdapter(legacy)
    config = make_config(None, base_url=fresh.base_url, max_retries=0, failing_cooldown=0)
    first = signals(M1, 5)
    with CAPIClient(adapter, config) as client:
        assert client.add_signals(first) == 5
        client.login(M1)
        fresh.admin.set_fault("signals", error_rate=1.0, error_status=503)
        try:
            report = client.send_signals(prune_after_send=False)
        finally:
            fresh.admin.clear_faults()
        assert report == 0 and isinstance(report.errors[M1], ServerError)
        assert sorted(sent for _, sent in legacy.rows()) == [0] * 5  # nothing marked without a 2xx
        assert adapter.count_signals().queued == 5 and received_uuids(fresh) == []

        assert client.send_signals(prune_after_send=False) == 5
        assert sorted(sent for _, sent in legacy.rows()) == [1] * 5
        assert sorted(received_uuids(fresh)) == sorted(s.uuid for s in first)

        # 0.7.0 code wrote signals straight into its storage: one lacks a field CAPI requires (400 on the POST)
        bad = [replace(signals(M1, 1, first=40)[0], start_at=None)]
        legacy.update_or_create_signal(bad[0])
        refused = client.send_signals()
        assert refused == 0 and refused.quarantined == 1
        ((held, reason),) = adapter.list_quarantined()
        assert held.uuid == bad[0].uuid and reason.startswith("400") and "start_at" in reason
        assert client.send_signals() == 0 and len(received_uuids(fresh)) == 5  # not tried again
        good = replace(held, start_at=held.created_at)  # fixed in place (same row), then requeued
        legacy.update_or_create_signal(good)
        assert adapter.requeue_quarantined() == 1
        assert client.send_signals() == 1 and bad[0].uuid not in [u for u, _ in legacy.rows()]  # sent, then pruned

    # A restart: a new adapter on the same file. The legacy store kept only the 0.7.0 machine fields.
    later = signals(M1, 3, first=60)
    restarted = LegacyStorageAdapter(SQLiteLegacyStorage(tmp_path / "legacy.db"))
    with CAPIClient(restarted, config) as client:
        assert client.add_signals(later + first) == 3  # the 5 sent (kept) rows are still known by uuid
        assert client.send_signals() == 3
    assert len(received_uuids(fresh)) == 9 and restarted.count_signals().queued == 0
    restarted.close()
    legacy.close()


@pytest.mark.anyio
async def test_async_client_sends_through_the_adapter(fresh: Any) -> None:
    legacy = MemoryLegacyStorage()
    adapter = LegacyStorageAdapter(legacy)
    queued = signals(M1, 30)
    async with AsyncCAPIClient(adapter, make_config(None, base_url=fresh.base_url, batch_size=7)) as client:
        assert await client.add_signals(queued) == 30
        sent = await client.send_signals()  # storage calls in worker threads, serialised by the adapter
        assert sent == 30 and sent.batches == 5
        assert await client.send_signals() == 0
    assert sorted(received_uuids(fresh)) == sorted(s.uuid for s in queued) and legacy.signals == {}
