"""The claim lease is renewed before each signals POST, and a sender POSTs only the signals whose lease it still holds.

``extend_claim`` on the three databases, on ``LegacyStorageAdapter`` and the contract's default; then the client
against the emulator: a lease lost between two tries of one POST narrows the retry to the signals still held.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest

from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.errors import ValidationError
from cscapi.models import QueueCounts, Signal
from cscapi.sql_storage import SQLStorage
from cscapi.storage import Claim, LegacyStorageAdapter, StorageInterface
from cscapi.timeutil import utcnow
from cscapi.utils import create_signal, generate_machine_id_from_key
from test_legacy_storage import MemoryLegacyStorage
from test_storage_support import make_signals

SCENARIO = "crowdsecurity/ssh-bf"
MACHINE = generate_machine_id_from_key("lease-tests", prefix="test")


@pytest.fixture
def storage(database_url: str) -> Iterator[SQLStorage]:
    with SQLStorage(database_url) as st:
        yield st


def ids(signals: Sequence[Signal]) -> list[int]:
    return [int(s.alert_id) for s in signals if s.alert_id is not None]


def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_extend_claim_keeps_what_the_claim_holds_and_returns_nothing_for_rows_taken_since(storage: SQLStorage) -> None:
    """An extension pushes the lease of the held rows (nobody can claim them after the first lease ran out); after a
    lease ran out and another claimer took the rows, extending them returns nothing for those rows (nor for rows
    lapsed but not re-claimed, nor sent ones)."""
    signals = make_signals(6)
    storage.add_signals(signals)
    every = ids(signals)
    first = storage.claim_signals(limit=6, lease_seconds=3.0)
    assert ids(first.signals) == every
    assert storage.extend_claim(first, every[:2], 120.0) == every[:2]  # one statement, all held: all returned
    # the other four lapse after 3 s (counted as queued); the two extended ones stay claimed
    wait_until(lambda: storage.count_signals() == QueueCounts(queued=4, claimed=2), "the 3 s lease never ran out")
    second = storage.claim_signals(limit=2, lease_seconds=60.0)
    assert ids(second.signals) == every[2:4]  # the oldest lapsed ones; the extended two were not claimable
    assert storage.extend_claim(first, list(reversed(every)), 60.0) == every[:2]  # taken + lapsed: not returned
    assert storage.extend_claim(second, every, 60.0) == every[2:4]
    assert storage.mark_sent(first, every[:1]) == 1
    assert storage.extend_claim(first, every[:2], 60.0) == every[1:2]  # a sent row is no longer held
    assert storage.extend_claim(first, [], 60.0) == []
    assert storage.count_signals() == QueueCounts(queued=2, claimed=3, sent=1)
    for lease in (0, -1.0, float("nan"), float("inf"), True, "10"):
        with pytest.raises(ValidationError):
            storage.extend_claim(first, every, lease)  # type: ignore[arg-type]


def test_the_adapter_and_the_contract_default_extend_only_what_is_held(sqlite_url: str) -> None:
    adapter = LegacyStorageAdapter(MemoryLegacyStorage())  # type: ignore[abstract]
    adapter.add_signals([create_signal(f"198.51.100.{i}", SCENARIO, None, MACHINE) for i in range(1, 5)])
    held = adapter.claim_signals(2, 60.0)
    lapsed = adapter.claim_signals(2, 1e-9)  # its lease is over by the next call
    assert adapter.extend_claim(held, ids(held.signals), 60.0) == ids(held.signals)
    assert adapter.extend_claim(lapsed, ids(lapsed.signals), 60.0) == []  # lapsed: not returned, not extended
    taken = adapter.claim_signals(10, 60.0)
    assert ids(taken.signals) == ids(lapsed.signals)
    assert adapter.extend_claim(held, ids(lapsed.signals) + ids(held.signals), 60.0) == ids(held.signals)
    with pytest.raises(ValidationError):
        adapter.extend_claim(held, ids(held.signals), 0)

    # the default of StorageInterface (a storage written before extend_claim): no extension; the claim's ids only
    # while its own lease still runs for the time asked
    with SQLStorage(sqlite_url) as st:
        st.add_signals(make_signals(3))
        claim = st.claim_signals(3, 600.0)
        every = ids(claim.signals)
        assert StorageInterface.extend_claim(st, claim, [*every, 10**9], 60.0) == every
        assert StorageInterface.extend_claim(st, claim, every, 1200.0) == []  # it cannot extend
        over = Claim(token=claim.token, signals=claim.signals, expires_at=claim.expires_at - timedelta(seconds=601))
        assert StorageInterface.extend_claim(st, over, every, 60.0) == []


class TakenDuringTheBackoff(SQLStorage):
    """A real SQLStorage where another sender claims two of the signals as soon as their lease ran out: during the
    2 s Retry-After pause of the first POST (the lease is 1 s), before the retry's lease extension."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: list[list[int]] = []
        self.thief: Claim | None = None

    def extend_claim(self, claim: Claim, signal_ids: Sequence[int], lease_seconds: float) -> list[int]:
        self.calls.append(list(signal_ids))
        if self.thief is None and utcnow() > claim.expires_at:  # the lease ran out: claimable by anyone
            self.thief = self.claim_signals(2, 60.0)
        return super().extend_claim(claim, signal_ids, lease_seconds)


class TakenBeforeTheRetry(SQLStorage):
    """A real SQLStorage where, just before the retry of the first POST, another sender holds two of its signals
    (forced here by a release and a claim: partial loss, so the retry is narrowed rather than dropped)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: list[list[int]] = []
        self.thief: Claim | None = None

    def extend_claim(self, claim: Claim, signal_ids: Sequence[int], lease_seconds: float) -> list[int]:
        self.calls.append(list(signal_ids))
        if self.thief is None and utcnow() > claim.expires_at - timedelta(seconds=lease_seconds / 2):
            stolen = sorted(signal_ids)[:2]
            assert self.release_claim(claim, stolen) == 2
            self.thief = self.claim_signals(2, 60.0)
            assert ids(self.thief.signals) == stolen
        return super().extend_claim(claim, signal_ids, lease_seconds)


def send_with_a_429(
    storage: SQLStorage, fault: dict[str, Any], **options: Any
) -> tuple[Any, list[str], dict[str, int], QueueCounts]:
    """Queue 4 signals, install ``fault`` on the signals endpoint, send; the report, the uuids the emulator received,
    its signals request counts by status, and the queue's counts."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    config = EmulatorConfig(seed=1, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu, storage:
        cfg = CAPIClientConfig(
            scenarios=[SCENARIO], base_url=emu.base_url, send_metrics_after_login=False, retry_delay=0.01, **options
        )
        with CAPIClient(storage, cfg) as client:
            client.add_signals([create_signal(f"192.0.2.{i}", SCENARIO, machine_id=MACHINE) for i in range(1, 5)])
            client.login(MACHINE)
            emu.admin.set_fault("signals", **fault)
            report = client.send_signals()
        received = sorted(str(item["signal"]["uuid"]) for item in emu.state.signals)
        return report, received, emu.admin.requests()["signals"], storage.count_signals()


def test_a_retry_after_the_lease_ran_out_posts_nothing_another_sender_may_hold(sqlite_url: str) -> None:
    storage = TakenDuringTheBackoff(sqlite_url)
    fault = {"rate_limit_rate": 1.0, "retry_after": 2, "remaining": 1}
    report, received, requests, counts = send_with_a_429(storage, fault, claim_lease=1.0)
    assert received == [] and requests == {"429": 1}  # the retry was not POSTed: its lease was gone
    assert storage.thief is not None and len(storage.thief) == 2
    assert report.sent == 0
    assert counts == QueueCounts(queued=2, claimed=2)  # the thief's two untouched; the other two lapsed: queued


def test_a_retry_posts_only_the_signals_whose_lease_the_sender_still_holds(sqlite_url: str) -> None:
    storage = TakenBeforeTheRetry(sqlite_url)
    fault = {"rate_limit_rate": 1.0, "retry_after": 3, "remaining": 1}
    # lease 4 s, Retry-After 3 s: the retry starts with less than half a lease left, so its lease is renewed
    report, received, requests, counts = send_with_a_429(storage, fault, claim_lease=4.0)
    assert requests == {"429": 1, "200": 1} and len(received) == 2  # only what it still held
    assert storage.thief is not None
    assert not {str(s.uuid) for s in storage.thief.signals} & set(received)
    assert report.sent == 2
    assert counts == QueueCounts(claimed=2)  # the stolen two: their new holder's, untouched
