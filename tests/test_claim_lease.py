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

    # the default of StorageInterface (a storage written before extend_claim): no extension, the ids of the claim
    # while its own lease runs, none after
    with SQLStorage(sqlite_url) as st:
        st.add_signals(make_signals(3))
        claim = st.claim_signals(3, 60.0)
        every = ids(claim.signals)
        assert StorageInterface.extend_claim(st, claim, [*every, 10**9], 60.0) == every
        over = Claim(token=claim.token, signals=claim.signals, expires_at=claim.expires_at - timedelta(seconds=61))
        assert StorageInterface.extend_claim(st, over, every, 60.0) == []


class StolenBeforeTheRetry(SQLStorage):
    """A real SQLStorage where, just before the second try of the first POST, another sender takes half of the
    claim (its lease "ran out" and was re-claimed: done here by a release and a claim under another token)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: list[list[int]] = []
        self.thief: Claim | None = None

    def extend_claim(self, claim: Claim, signal_ids: Sequence[int], lease_seconds: float) -> list[int]:
        self.calls.append(list(signal_ids))
        if len(self.calls) == 2:
            stolen = sorted(signal_ids)[:2]
            assert self.release_claim(claim, stolen) == 2
            self.thief = self.claim_signals(2, 60.0)
            assert ids(self.thief.signals) == stolen
        return super().extend_claim(claim, signal_ids, lease_seconds)


def test_a_retry_posts_only_the_signals_whose_lease_the_sender_still_holds(sqlite_url: str) -> None:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    machine = generate_machine_id_from_key("lease-retry", prefix="test")
    config = EmulatorConfig(seed=1, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    storage = StolenBeforeTheRetry(sqlite_url)
    with EmbeddedEmulator(config) as emu, storage:
        options = CAPIClientConfig(
            scenarios=[SCENARIO],
            base_url=emu.base_url,
            retry_delay=0.01,
            send_metrics_after_login=False,
        )
        with CAPIClient(storage, options) as client:
            queued = [create_signal(f"192.0.2.{i}", SCENARIO, machine_id=machine) for i in range(1, 5)]
            client.add_signals(queued)
            client.login(machine)
            emu.admin.set_fault("signals", error_rate=1.0, error_status=503, remaining=1)
            report = client.send_signals()
        assert storage.thief is not None
        stolen = {s.uuid for s in storage.thief.signals}
        received = [item["signal"]["uuid"] for item in emu.state.signals]
        assert len(storage.calls) == 2  # one lease extension per try: the 503, then the retry
        assert sorted(received) == sorted(str(s.uuid) for s in queued if s.uuid not in stolen)  # only what it held
        assert report.sent == 2
        assert storage.count_signals() == QueueCounts(claimed=2)  # the stolen two: their new holder's, untouched
        assert emu.admin.requests()["signals"] == {"503": 1, "200": 1}
