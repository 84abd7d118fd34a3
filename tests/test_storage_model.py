"""Random sequences of queue operations checked against a plain Python model of the queue (hypothesis, SQLite)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from cscapi.models import QueueCounts, Signal
from cscapi.sql_storage import SQLStorage
from cscapi.storage import Claim
from test_storage_support import make_signal


class QueueModel(RuleBasedStateMachine):
    """The storage must behave like a dict of alert_id -> state plus, per claim token, the ids it holds."""

    claims = Bundle("claims")

    @initialize()
    def open_storage(self) -> None:
        self.storage = SQLStorage("sqlite://")
        self.state: dict[int, str] = {}
        self.holder: dict[int, str] = {}  # alert_id -> claim token, while claimed
        self.uuids: dict[str, int] = {}
        self.counter = 0

    def teardown(self) -> None:
        storage = getattr(self, "storage", None)
        if storage is not None:
            storage.close()

    @rule(new=st.integers(0, 6), repeats=st.integers(0, 3))
    def add(self, new: int, repeats: int) -> None:
        fresh = [make_signal(self.counter + i) for i in range(new)]
        self.counter += new
        known = list(self.uuids)[:repeats]
        again = [make_signal(0, uuid=u) for u in known]
        batch: list[Signal] = fresh + again
        assert self.storage.add_signals(batch) == len(fresh)
        for signal in fresh:
            assert signal.alert_id is not None and signal.alert_id not in self.state
            self.state[signal.alert_id] = "queued"
            self.uuids[str(signal.uuid)] = signal.alert_id
        for signal in again:
            assert signal.alert_id == self.uuids[str(signal.uuid)]

    @rule(target=claims, limit=st.integers(1, 5))
    def claim(self, limit: int) -> Claim:
        claim = self.storage.claim_signals(limit=limit, lease_seconds=3600)
        expected = sorted(i for i, s in self.state.items() if s == "queued")[:limit]
        assert [s.alert_id for s in claim.signals] == expected
        for alert_id in expected:
            self.state[alert_id] = "claimed"
            self.holder[alert_id] = claim.token
        return claim

    def _held(self, claim: Claim, subset: list[int] | None) -> list[int]:
        ids = [int(s.alert_id or 0) for s in claim.signals] if subset is None else subset
        return [i for i in set(ids) if self.state.get(i) == "claimed" and self.holder.get(i) == claim.token]

    def _pick(self, claim: Claim, data: Any) -> list[int]:
        ids = [int(s.alert_id or 0) for s in claim.signals]
        return data.draw(st.lists(st.sampled_from(ids), max_size=4)) if ids else []

    @rule(claim=claims, whole=st.booleans(), data=st.data())
    def mark_sent(self, claim: Claim, whole: bool, data: Any) -> None:
        subset = None if whole else self._pick(claim, data)
        held = self._held(claim, subset)
        assert self.storage.mark_sent(claim, subset) == len(held)
        for alert_id in held:
            self.state[alert_id] = "sent"
            self.holder.pop(alert_id)

    @rule(claim=claims, whole=st.booleans(), data=st.data())
    def release(self, claim: Claim, whole: bool, data: Any) -> None:
        subset = None if whole else self._pick(claim, data)
        held = self._held(claim, subset)
        assert self.storage.release_claim(claim, subset) == len(held)
        for alert_id in held:
            self.state[alert_id] = "queued"
            self.holder.pop(alert_id)

    @rule(claim=claims, data=st.data())
    def quarantine(self, claim: Claim, data: Any) -> None:
        subset = self._pick(claim, data)
        held = self._held(claim, subset)
        assert self.storage.quarantine(claim, subset, "bad") == len(held)
        for alert_id in held:
            self.state[alert_id] = "quarantined"
            self.holder.pop(alert_id)

    @rule()
    def requeue_all(self) -> None:
        doomed = [i for i, s in self.state.items() if s == "quarantined"]
        assert self.storage.requeue_quarantined() == len(doomed)
        for alert_id in doomed:
            self.state[alert_id] = "queued"

    @rule(quarantined=st.booleans())
    def prune(self, quarantined: bool) -> None:
        kinds = {"sent", "quarantined"} if quarantined else {"sent"}
        doomed = [i for i, s in self.state.items() if s in kinds]
        assert self.storage.prune(quarantined=quarantined) == len(doomed)
        for alert_id in doomed:
            del self.state[alert_id]
        self.uuids = {u: i for u, i in self.uuids.items() if i in self.state}

    @invariant()
    def counts_match(self) -> None:
        if not hasattr(self, "storage"):
            return
        states = list(self.state.values())
        assert self.storage.count_signals() == QueueCounts(
            queued=states.count("queued"),
            claimed=states.count("claimed"),
            sent=states.count("sent"),
            quarantined=states.count("quarantined"),
        )


QueueModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_queue_behaves_like_the_model = QueueModel.TestCase
