"""Concurrent senders never get the same signal: 4 threads sharing one SQLStorage, and 3 spawned processes each
with their own, claiming from one database (SQLite file, PostgreSQL, MariaDB). Login locks across processes too."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cscapi._sql import migrations
from cscapi.models import QueueCounts, Signal
from cscapi.sql_storage import SQLStorage
from test_storage_support import MACHINE_A, make_signals

N_SIGNALS = 400
BATCH = 7


def drain(storage: SQLStorage, start: Any) -> list[int]:
    """Claim batches until the queue is empty; mark each batch sent. Returns every alert id this caller got."""
    start.wait()
    got: list[int] = []
    while True:
        claim = storage.claim_signals(limit=BATCH, lease_seconds=300)
        if not claim.signals:
            return got
        got.extend(int(s.alert_id) for s in claim.signals if s.alert_id is not None)
        assert storage.mark_sent(claim) == len(claim)


def assert_partition(all_ids: list[int], parts: list[list[int]]) -> None:
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat)), "a signal was claimed twice"
    assert sorted(flat) == sorted(all_ids), "a signal was never claimed"


def test_threads_sharing_one_storage_never_claim_the_same_signal(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        signals = make_signals(N_SIGNALS)
        storage.add_signals(signals)
        start = threading.Barrier(4)
        with ThreadPoolExecutor(max_workers=4) as pool:
            parts = list(pool.map(lambda _: drain(storage, start), range(4)))
        assert_partition([int(s.alert_id or 0) for s in signals], parts)
        assert sum(1 for p in parts if p) >= 2, "the threads did not really run concurrently"
        assert storage.count_signals() == QueueCounts(sent=N_SIGNALS)


def test_threads_on_an_in_memory_database() -> None:
    with SQLStorage("sqlite://") as storage:
        signals = make_signals(200)
        storage.add_signals(signals)
        start = threading.Barrier(4)
        with ThreadPoolExecutor(max_workers=4) as pool:
            parts = list(pool.map(lambda _: drain(storage, start), range(4)))
        assert_partition([int(s.alert_id or 0) for s in signals], parts)


def _process_worker(url: str, start: Any, results: Any, index: int) -> None:
    storage = SQLStorage(url)
    try:
        start.wait()
        locked = storage.acquire_login_lock(MACHINE_A, f"process-{index}", ttl_seconds=300)
        got = drain(storage, threading.Barrier(1))
        results.put((index, locked, got, None))
    except BaseException as exc:  # report, never hang the parent
        results.put((index, False, [], repr(exc)))
    finally:
        storage.close()


@pytest.mark.slow
def test_processes_never_claim_the_same_signal_and_one_gets_the_login_lock(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        signals = make_signals(N_SIGNALS)
        storage.add_signals(signals)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)
    results = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(database_url, start, results, i)) for i in range(3)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    errors = [err for *_, err in outcomes if err]
    assert not errors, errors
    assert sum(1 for _, locked, _, _ in outcomes if locked) == 1, "exactly one process must hold the login lock"
    assert_partition([int(s.alert_id or 0) for s in signals], [got for _, _, got, _ in outcomes])
    with SQLStorage(database_url) as storage:
        assert storage.count_signals() == QueueCounts(sent=N_SIGNALS)


def test_concurrent_first_opens_create_the_schema_once(database_url: str) -> None:
    start = threading.Barrier(4)

    def open_and_add(i: int) -> int:
        start.wait()
        with SQLStorage(database_url) as storage:
            return storage.add_signals(make_signals(5, start=i * 5))

    with ThreadPoolExecutor(max_workers=4) as pool:
        added = list(pool.map(open_and_add, range(4)))
    assert added == [5, 5, 5, 5]
    with SQLStorage(database_url) as storage:
        assert storage.count_signals().queued == 20
        with storage.engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version FROM schema_version").scalars().all()
        assert sorted(versions) == list(range(1, migrations.CURRENT_VERSION + 1))


def test_concurrent_login_lock_threads_exactly_one_wins(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        start = threading.Barrier(6)

        def attempt(i: int) -> bool:
            start.wait()
            return storage.acquire_login_lock(MACHINE_A, f"thread-{i}", ttl_seconds=300)

        with ThreadPoolExecutor(max_workers=6) as pool:
            wins = list(pool.map(attempt, range(6)))
        assert wins.count(True) == 1


def test_concurrent_adds_of_the_same_signals_store_each_once(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        originals = make_signals(150)
        start = threading.Barrier(4)

        def add_copy(_: int) -> tuple[int, list[int]]:
            copies = [Signal.from_dict(s.to_dict()) for s in originals]
            start.wait()
            added = storage.add_signals(copies)
            return added, [int(c.alert_id or 0) for c in copies]

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(add_copy, range(4)))
        assert sum(added for added, _ in results) == 150  # every uuid counted as new exactly once
        assert all(alert_ids == results[0][1] for _, alert_ids in results)  # same ids for everyone
        assert storage.count_signals() == QueueCounts(queued=150)


def test_producers_and_senders_at_once_send_each_signal_once(database_url: str) -> None:
    with SQLStorage(database_url) as storage:
        produced: list[list[int]] = [[], []]
        done = threading.Event()
        start = threading.Barrier(5)

        def produce(index: int) -> None:
            start.wait()
            for batch in range(10):
                signals = make_signals(10, start=index * 1000 + batch * 10)
                storage.add_signals(signals)
                produced[index].extend(int(s.alert_id or 0) for s in signals)

        def send() -> list[int]:
            start.wait()
            got: list[int] = []
            while True:
                finished = done.is_set()  # read before claiming: an empty claim after this means really empty
                claim = storage.claim_signals(limit=BATCH, lease_seconds=300)
                got.extend(int(s.alert_id or 0) for s in claim.signals)
                storage.mark_sent(claim)
                if not claim.signals and finished:
                    return got

        with ThreadPoolExecutor(max_workers=5) as pool:
            senders = [pool.submit(send) for _ in range(3)]
            producers = [pool.submit(produce, i) for i in range(2)]
            for future in producers:
                future.result()
            done.set()
            parts = [future.result() for future in senders]
        assert_partition(produced[0] + produced[1], parts)
        assert storage.count_signals() == QueueCounts(sent=200)


def test_concurrent_creations_of_one_machine_report_one_creation(database_url: str) -> None:
    from cscapi.models import Machine

    with SQLStorage(database_url) as storage:
        start = threading.Barrier(5)

        def create(i: int) -> bool:
            start.wait()
            return storage.update_or_create_machine(Machine(machine_id=MACHINE_A, password=f"pw-{i}"))

        with ThreadPoolExecutor(max_workers=5) as pool:
            created = list(pool.map(create, range(5)))
        assert created.count(True) == 1
        machines = storage.list_machines()
        assert len(machines) == 1 and machines[0].password in {f"pw-{i}" for i in range(5)}
