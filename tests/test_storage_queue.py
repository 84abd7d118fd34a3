"""The signal queue of SQLStorage on SQLite, PostgreSQL and MariaDB: add, claim, mark, release, quarantine, prune."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from cscapi.errors import ValidationError
from cscapi.models import Machine, QueueCounts, Signal
from cscapi.sql_storage import SQLStorage
from cscapi.timeutil import utcnow
from test_storage_support import MACHINE_A, MACHINE_B, make_signal, make_signals


@pytest.fixture
def storage(database_url: str) -> Iterator[SQLStorage]:
    with SQLStorage(database_url) as st:
        yield st


@pytest.fixture
def local(sqlite_url: str) -> Iterator[SQLStorage]:
    """For input-validation tests: the checks run before any SQL, so one database suffices."""
    with SQLStorage(sqlite_url) as st:
        yield st


def ids(signals: list[Signal]) -> list[int]:
    return [int(s.alert_id) for s in signals if s.alert_id is not None]


# ---- add_signals ------------------------------------------------------------------------------------------------


def test_add_signals_sets_alert_ids_and_round_trips_every_field(storage: SQLStorage) -> None:
    signals = make_signals(3)
    assert storage.add_signals(signals) == 3
    assert all(s.alert_id is not None for s in signals)
    assert ids(signals) == sorted(ids(signals)) and len(set(ids(signals))) == 3
    stored = storage.get_signals(limit=10)
    assert [s.uuid for s in stored] == [s.uuid for s in signals]
    for original, back in zip(signals, stored):
        assert back.to_dict() == original.to_dict()  # nested source/decisions/context, microseconds, local fields
        assert back.sent is False


def test_add_signals_is_idempotent_by_uuid(storage: SQLStorage) -> None:
    signals = make_signals(4)
    assert storage.add_signals(signals) == 4
    first_ids = ids(signals)
    again = [Signal.from_dict(s.to_dict() | {"alert_id": None}) for s in signals]
    assert storage.add_signals(again + make_signals(1, start=10)) == 1
    assert ids(again) == first_ids  # duplicates get the stored row's id
    assert storage.count_signals().queued == 5


def test_add_one_signal_twice_and_duplicates_inside_one_batch(storage: SQLStorage) -> None:
    one = make_signal(1)
    assert storage.add_signals([one]) == 1
    alert_id = one.alert_id
    twin = Signal.from_dict(one.to_dict() | {"alert_id": None})
    assert storage.add_signals([twin]) == 0
    assert twin.alert_id == alert_id
    batch = make_signals(2, start=5)
    dup = Signal.from_dict(batch[0].to_dict())
    assert storage.add_signals([*batch, dup]) == 2
    assert dup.alert_id == batch[0].alert_id
    assert storage.count_signals().queued == 3


def test_add_signals_gives_a_uuid_to_signals_without_one(storage: SQLStorage) -> None:
    signal = make_signal(uuid=None)
    assert storage.add_signals([signal]) == 1
    assert signal.uuid and len(signal.uuid) == 36
    assert storage.get_signals(limit=1)[0].uuid == signal.uuid


def test_add_signals_refuses_oversized_values_and_stores_nothing(local: SQLStorage) -> None:
    good = make_signal(1)
    bad = make_signal(2, scenario="x" * 300)
    with pytest.raises(ValidationError) as info:
        local.add_signals([good, bad])
    assert info.value.field == "scenario"
    assert local.count_signals() == QueueCounts()


def test_add_signals_empty_is_a_no_op(local: SQLStorage) -> None:
    assert local.add_signals([]) == 0
    assert local.count_signals() == QueueCounts()


def test_large_batch_round_trip(storage: SQLStorage) -> None:
    signals = make_signals(1200)
    assert storage.add_signals(signals) == 1200
    assert len(set(ids(signals))) == 1200
    assert storage.count_signals(MACHINE_A).queued == 1200


# ---- claims -----------------------------------------------------------------------------------------------------


def test_claim_takes_the_oldest_first_and_never_twice(storage: SQLStorage) -> None:
    signals = make_signals(5)
    storage.add_signals(signals)
    first = storage.claim_signals(limit=2, lease_seconds=60)
    second = storage.claim_signals(limit=10, lease_seconds=60)
    assert ids(first.signals) == ids(signals)[:2]
    assert ids(second.signals) == ids(signals)[2:]
    assert first.token != second.token
    assert first.expires_at > utcnow() and first.expires_at.tzinfo is not None
    assert len(storage.claim_signals(limit=10, lease_seconds=60)) == 0
    assert storage.count_signals() == QueueCounts(claimed=5)
    assert all(s.sent is False for s in first.signals)


def test_claim_filters_by_machine(storage: SQLStorage) -> None:
    storage.add_signals(make_signals(2, MACHINE_A) + make_signals(3, MACHINE_B))
    claim = storage.claim_signals(limit=10, lease_seconds=60, machine_ids=[MACHINE_B])
    assert {s.machine_id for s in claim.signals} == {MACHINE_B} and len(claim) == 3
    assert len(storage.claim_signals(limit=10, lease_seconds=60, machine_ids=[])) == 0
    assert storage.count_signals(MACHINE_A) == QueueCounts(queued=2)


def test_claim_skips_machines_cooling_down_and_takes_them_after(storage: SQLStorage) -> None:
    now = utcnow()
    storage.update_or_create_machine(Machine(machine_id=MACHINE_A, failing_until=now + timedelta(hours=1)))
    storage.update_or_create_machine(Machine(machine_id=MACHINE_B, login_banned_until=now + timedelta(hours=1)))
    other = "c" * 48
    storage.add_signals(make_signals(2, MACHINE_A) + make_signals(2, MACHINE_B) + make_signals(1, other))
    claim = storage.claim_signals(limit=10, lease_seconds=60)
    assert {s.machine_id for s in claim.signals} == {other}
    # the cool-down is over: both machines are eligible again
    storage.update_or_create_machine(Machine(machine_id=MACHINE_A, failing_until=now - timedelta(seconds=1)))
    storage.update_or_create_machine(Machine(machine_id=MACHINE_B, login_banned_until=now - timedelta(seconds=1)))
    assert len(storage.claim_signals(limit=10, lease_seconds=60)) == 4


def test_expired_lease_is_reclaimed_and_the_first_holder_cannot_mark_it(storage: SQLStorage) -> None:
    signals = make_signals(3)
    storage.add_signals(signals)
    stale = storage.claim_signals(limit=3, lease_seconds=0.2)
    time.sleep(0.35)
    assert storage.count_signals() == QueueCounts(queued=3)  # an expired lease counts as queued
    fresh = storage.claim_signals(limit=2, lease_seconds=60)
    assert ids(fresh.signals) == ids(signals)[:2]
    # the first holder still holds the third (not re-claimed): it may mark that one, not the others
    assert storage.mark_sent(stale) == 1
    assert storage.release_claim(stale) == 0
    assert storage.quarantine(stale, ids(signals), "late") == 0
    assert storage.count_signals() == QueueCounts(claimed=2, sent=1)
    assert storage.mark_sent(fresh) == 2
    assert storage.count_signals() == QueueCounts(sent=3)


def test_claim_mixing_queued_and_expired_respects_limit_and_age(storage: SQLStorage) -> None:
    """Queued and lease-expired signals interleaved: each claim takes exactly ``limit`` of them, the oldest first,
    across both kinds, and never one whose lease still runs (on every back end: PostgreSQL claims in one statement)."""
    signals = make_signals(12)
    storage.add_signals(signals)
    every = ids(signals)
    first = storage.claim_signals(limit=12, lease_seconds=0.2)
    assert ids(first.signals) == every
    assert storage.release_claim(first, every[1::2]) == 6  # odd positions queued again, even ones left to expire
    deadline = time.monotonic() + 30
    while storage.count_signals() != QueueCounts(queued=12):  # the 0.2 s lease runs out (counted as queued)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    a = storage.claim_signals(limit=5, lease_seconds=60)
    assert ids(a.signals) == every[:5]
    b = storage.claim_signals(limit=4, lease_seconds=60)  # a's live leases are skipped
    assert ids(b.signals) == every[5:9]
    c = storage.claim_signals(limit=100, lease_seconds=60)
    assert ids(c.signals) == every[9:]
    assert len(storage.claim_signals(limit=100, lease_seconds=60)) == 0
    assert storage.count_signals() == QueueCounts(claimed=12)


def test_mark_sent_subset_then_release_the_rest(storage: SQLStorage) -> None:
    signals = make_signals(4)
    storage.add_signals(signals)
    claim = storage.claim_signals(limit=4, lease_seconds=60)
    assert storage.mark_sent(claim, ids(signals)[:1]) == 1
    assert storage.mark_sent(claim, ids(signals)[:1]) == 0  # already sent: not held any more
    assert storage.release_claim(claim, ids(signals)[1:2]) == 1
    assert storage.release_claim(claim) == 2
    assert storage.count_signals() == QueueCounts(queued=3, sent=1)
    again = storage.claim_signals(limit=10, lease_seconds=60)
    assert ids(again.signals) == ids(signals)[1:]
    sent = storage.get_signals(limit=10, sent=True)
    assert ids(sent) == ids(signals)[:1] and sent[0].sent is True


def test_quarantine_list_and_requeue(storage: SQLStorage) -> None:
    signals = make_signals(3)
    storage.add_signals(signals)
    claim = storage.claim_signals(limit=3, lease_seconds=60)
    bad = ids(signals)[1]
    assert storage.quarantine(claim, [bad], "scenario: invalid name") == 1
    assert storage.mark_sent(claim) == 2
    listed = storage.list_quarantined()
    assert [(s.alert_id, reason) for s, reason in listed] == [(bad, "scenario: invalid name")]
    assert listed[0][0].uuid == signals[1].uuid
    assert storage.count_signals() == QueueCounts(sent=2, quarantined=1)
    assert len(storage.claim_signals(limit=10, lease_seconds=60)) == 0  # never sent again...
    assert storage.requeue_quarantined() == 1  # ...unless requeued
    assert storage.list_quarantined() == []
    assert ids(storage.claim_signals(limit=10, lease_seconds=60).signals) == [bad]


def test_requeue_selected_quarantined_ids(storage: SQLStorage) -> None:
    signals = make_signals(3)
    storage.add_signals(signals)
    claim = storage.claim_signals(limit=3, lease_seconds=60)
    storage.quarantine(claim, ids(signals), "bad")
    assert storage.requeue_quarantined([ids(signals)[0]]) == 1
    assert storage.count_signals() == QueueCounts(queued=1, quarantined=2)
    assert len(storage.list_quarantined(limit=1)) == 1


def test_claim_rejects_bad_arguments(local: SQLStorage) -> None:
    with pytest.raises(ValidationError):
        local.claim_signals(limit=0, lease_seconds=10)
    with pytest.raises(ValidationError):
        local.claim_signals(limit=5, lease_seconds=0)


# ---- counts and prune -------------------------------------------------------------------------------------------


def test_count_signals_per_machine(storage: SQLStorage) -> None:
    storage.add_signals(make_signals(2, MACHINE_A) + make_signals(3, MACHINE_B))
    claim = storage.claim_signals(limit=1, lease_seconds=60, machine_ids=[MACHINE_B])
    storage.mark_sent(claim)
    storage.claim_signals(limit=1, lease_seconds=60, machine_ids=[MACHINE_B])
    assert storage.count_signals(MACHINE_A) == QueueCounts(queued=2)
    assert storage.count_signals(MACHINE_B) == QueueCounts(queued=1, claimed=1, sent=1)
    assert storage.count_signals() == QueueCounts(queued=3, claimed=1, sent=1)
    assert storage.count_signals().pending == 4


def test_prune_sent_before_and_quarantined(storage: SQLStorage) -> None:
    storage.add_signals(make_signals(4))
    claim = storage.claim_signals(limit=3, lease_seconds=60)
    storage.quarantine(claim, ids(claim.signals)[:1], "bad")
    storage.mark_sent(claim)
    assert storage.prune(sent_before=utcnow() - timedelta(hours=1)) == 0  # sent just now: kept
    assert storage.count_signals() == QueueCounts(queued=1, sent=2, quarantined=1)
    assert storage.prune(sent_before=utcnow() + timedelta(seconds=1)) == 2
    assert storage.count_signals() == QueueCounts(queued=1, quarantined=1)
    assert storage.prune(quarantined=True) == 1
    assert storage.count_signals() == QueueCounts(queued=1)
    assert storage.prune() == 0


# ---- legacy surface ---------------------------------------------------------------------------------------------


def test_get_signals_filters_pages_and_failing_machines(storage: SQLStorage) -> None:
    a = make_signals(3, MACHINE_A)
    b = make_signals(2, MACHINE_B)
    storage.add_signals(a + b)
    storage.update_or_create_machine(Machine(machine_id=MACHINE_B, failing_until=utcnow() + timedelta(minutes=5)))
    claim = storage.claim_signals(limit=1, lease_seconds=60)
    storage.mark_sent(claim)
    assert ids(storage.get_signals(limit=2, offset=1)) == ids(a)[1:3]
    assert ids(storage.get_signals(limit=10, sent=True)) == ids(a)[:1]
    assert ids(storage.get_signals(limit=10, sent=False)) == ids(a)[1:] + ids(b)
    assert ids(storage.get_signals(limit=10, is_failing=True)) == ids(b)
    assert ids(storage.get_signals(limit=10, sent=False, is_failing=False)) == ids(a)[1:]


def test_get_signals_sent_false_excludes_quarantined(storage: SQLStorage) -> None:
    storage.add_signals(make_signals(2))
    claim = storage.claim_signals(limit=1, lease_seconds=60)
    storage.quarantine(claim, ids(claim.signals), "bad")
    assert len(storage.get_signals(limit=10)) == 2
    assert len(storage.get_signals(limit=10, sent=False)) == 1


def test_update_or_create_signal_never_duplicates(storage: SQLStorage) -> None:
    signal = make_signal(1)
    assert storage.update_or_create_signal(signal) is True
    first_id = signal.alert_id
    assert first_id is not None
    copy = Signal.from_dict(signal.to_dict() | {"alert_id": None, "message": "changed"})
    assert storage.update_or_create_signal(copy) is False  # matched by uuid
    assert copy.alert_id == first_id
    assert storage.get_signals(limit=10)[0].message == "changed"
    signal.sent = True
    assert storage.update_or_create_signal(signal) is False  # matched by alert_id
    stored = storage.get_signals(limit=10)
    assert len(stored) == 1 and stored[0].sent is True and stored[0].message == "attack 1"
    signal.sent = False
    storage.update_or_create_signal(signal)
    assert storage.count_signals() == QueueCounts(queued=1)
    assert storage.add_signals([Signal.from_dict(signal.to_dict() | {"alert_id": None})]) == 0


def test_mass_update_and_delete_signals(storage: SQLStorage) -> None:
    signals = make_signals(4)
    storage.add_signals(signals)
    storage.mass_update_signals(ids(signals)[:2], {"sent": True})
    assert storage.count_signals() == QueueCounts(queued=2, sent=2)
    storage.mass_update_signals(ids(signals)[:1], {"sent": False})
    assert storage.count_signals() == QueueCounts(queued=3, sent=1)
    with pytest.raises(ValidationError):
        storage.mass_update_signals(ids(signals), {"scenario": "x"})
    storage.delete_signals(ids(signals)[2:])
    assert ids(storage.get_signals(limit=10)) == ids(signals)[:2]
    storage.delete_signals([])
    assert len(storage.get_signals(limit=10)) == 2


def test_bulk_batches_split_by_size_and_keep_order(storage: SQLStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from cscapi._sql import bulk
    from cscapi._sql import queue as sql_queue
    from cscapi._sql.codec import signal_row

    rows = [signal_row(s, utcnow()) for s in make_signals(5)]
    batches = list(bulk.json_batches(rows, max_chars=1500))
    assert len(batches) > 1
    assert [item["position"] for b in batches for item in json.loads(b)] == list(range(5))
    monkeypatch.setattr(sql_queue, "json_batches", lambda rows: bulk.json_batches(rows, max_chars=1500))
    signals = make_signals(7)
    assert storage.add_signals(signals) == 7
    assert ids(signals) == sorted(ids(signals))
    assert ids(storage.get_signals(limit=10)) == ids(signals)


def test_unicode_payload_round_trips(storage: SQLStorage) -> None:
    signals = [make_signal(1, message='попытка 🚨 "quoted" \\ back'), make_signal(2, message="é")]
    storage.add_signals(signals)
    assert [s.message for s in storage.get_signals(limit=5)] == [s.message for s in signals]


def test_get_signals_is_failing_includes_machines_flagged_without_an_end(storage: SQLStorage) -> None:
    a = make_signals(1, MACHINE_A)
    b = make_signals(1, MACHINE_B)
    storage.add_signals(a + b)
    storage.update_or_create_machine(Machine(machine_id=MACHINE_A, is_failing=True))
    storage.update_or_create_machine(Machine(machine_id=MACHINE_B, is_failing=True, failing_until=utcnow()))
    assert ids(storage.get_signals(limit=10, is_failing=True)) == ids(a)
    assert ids(storage.get_signals(limit=10, is_failing=False)) == ids(b)  # cool-down over


@pytest.mark.parametrize("lease", [float("nan"), float("inf"), -1, True, "10"])
def test_claim_rejects_nonsense_leases(local: SQLStorage, lease: object) -> None:
    with pytest.raises(ValidationError):
        local.claim_signals(limit=1, lease_seconds=lease)  # type: ignore[arg-type]


def test_uuids_compare_exactly_and_long_reasons_are_cut(storage: SQLStorage) -> None:
    lower = make_signal(1, uuid="abcdef00-0000-4000-8000-000000000001")
    upper = make_signal(2, uuid="ABCDEF00-0000-4000-8000-000000000001")
    assert storage.add_signals([lower, upper]) == 2
    claim = storage.claim_signals(limit=5, lease_seconds=60)
    assert storage.quarantine(claim, ids(claim.signals), "x" * 100_000) == 2
    reasons = [reason for _, reason in storage.list_quarantined()]
    assert [len(r) for r in reasons] == [4000, 4000]


def test_nul_characters(storage: SQLStorage) -> None:
    with pytest.raises(ValidationError):
        storage.add_signals([make_signal(1, scenario="crowdsecurity/ssh\x00bf")])
    # inside the JSON payload a NUL is escaped, so every database stores it
    signal = make_signal(2, message="before\x00after")
    assert storage.add_signals([signal, make_signal(3)]) == 2
    assert storage.get_signals(limit=1)[0].message == "before\x00after"


def test_legacy_deletes_accept_model_objects(storage: SQLStorage) -> None:
    signals = make_signals(3)
    storage.add_signals(signals)
    storage.delete_signals(signals[:2])  # type: ignore[arg-type]
    assert ids(storage.get_signals(limit=10)) == ids(signals)[2:]
    storage.update_or_create_machine(Machine(machine_id=MACHINE_A))
    storage.delete_machines([Machine(machine_id=MACHINE_A)])  # type: ignore[list-item]
    assert storage.list_machines() == []
    with pytest.raises(ValidationError):
        storage.delete_signals(["x"])  # type: ignore[list-item]


def test_a_large_batch_with_known_uuids_adds_only_the_new_ones_in_order(storage: SQLStorage) -> None:
    """PostgreSQL COPYs a large batch in a savepoint and falls back to the conflict-skipping insert when a uuid is
    already queued: nothing duplicated, nothing lost, ids in the caller's order, known signals keep their ids."""
    first = make_signals(100)
    assert storage.add_signals(first, destinations=("capi", "lapi")) == 200
    assert ids(first) == sorted(ids(first)) and len(set(ids(first))) == 100
    known = {s.uuid: s.alert_id for s in first}
    more = [make_signal(i, uuid=s.uuid) for i, s in enumerate(first)] + make_signals(50, start=100)  # 100 known
    assert storage.add_signals(more) == 50
    assert [s.alert_id for s in more[:100]] == [known[s.uuid] for s in more[:100]]
    assert ids(more[100:]) == sorted(ids(more[100:])) and min(ids(more[100:])) > max(ids(first))
    assert storage.count_signals() == QueueCounts(queued=150)
    assert storage.count_signals(destination="lapi") == QueueCounts(queued=100)
    claim = storage.claim_signals(1000, lease_seconds=60)
    assert [s.uuid for s in claim.signals] == [s.uuid for s in more]
    assert [s.message for s in claim.signals] == [s.message for s in more]
