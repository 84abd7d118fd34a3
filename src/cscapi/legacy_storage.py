"""``LegacyStorageAdapter``: run a storage written for cscapi 0.7.0 under the 1.0 client, in ONE process.

A 0.7.0 storage offers only ``get_signals``, ``update_or_create_signal``, ``mass_update_signals``, ``delete_signals``
and the machine methods: no atomic claim, no lease, no login lock. The adapter adds them *in memory*, behind one
lock, so within the process that owns it the queue's guarantees hold:

- kept: a claim with a lease (threads of this process never get the same signal while its lease runs); a signal is
  marked sent (``mass_update_signals(ids, {"sent": True})``, or deleted with ``prune_after_send``) only after CAPI
  answered 2xx; a failure releases the claim; logins of a machine serialised (login lock); signals unique by uuid
  when added through the client; a refused signal quarantined (skipped) instead of blocking the queue.
- not kept: anything across processes. Two processes (or two adapters) on the same legacy store can send the same
  signals twice: use one sending process, or ``cscapi.sql_storage.SQLStorage``. The adapter refuses to be used in
  a process other than the one that created it (a fork). Quarantine, claims, login locks, login bans, cool-downs
  and token expiry times live in memory: after a restart, a quarantined signal is tried (and refused) once more,
  a login ban is forgotten (CAPI's is not), a machine logs in once more. ``add_signals`` is not one transaction
  (a failure part-way leaves the first signals queued; adding the same list again skips them by uuid). Passwords
  and tokens are stored as the legacy store stores them (0.7.0 stored them in clear text).

Every read of the queue scans the legacy store (``get_signals`` pages): fine for the queues a 0.7.0 deployment had
(thousands of signals), slow for millions.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from cscapi.errors import StorageError, ValidationError
from cscapi.models import Context, Machine, QueueCounts, Signal, SignalDecision, Source
from cscapi.storage import (
    LEGACY_METHODS,
    Claim,
    IncompatibleStorageError,
    StorageInterface,
)
from cscapi.timeutil import utcnow

__all__ = ["LegacyStorageAdapter"]

log = logging.getLogger("cscapi.legacy_storage")


@dataclass
class _LegacyMachineRecord:
    """A machine exactly as 0.7.0's ``MachineModel`` was: what a legacy store's ``asdict(machine)`` expects."""

    machine_id: str | None = ""
    token: str | None = ""
    password: str | None = ""
    scenarios: str | None = ""
    is_failing: bool | None = False


@dataclass
class _LegacySignalRecord:
    """A signal exactly as 0.7.0's ``SignalModel`` was (no ``kind``): what a legacy store's ``asdict`` expects."""

    created_at: str | None = None
    machine_id: str | None = None
    source: Source | None = None
    uuid: str | None = None
    start_at: str | None = None
    scenario: str | None = None
    context: list[Context] | None = None
    decisions: list[SignalDecision] | None = None
    stop_at: str | None = None
    message: str | None = ""
    scenario_trust: str | None = "manual"
    scenario_hash: str | None = ""
    scenario_version: str | None = ""
    sent: bool | None = False
    alert_id: int | None = None


_SIGNAL_FIELDS = tuple(f.name for f in dataclasses.fields(_LegacySignalRecord))


def _as_dict(item: object) -> dict[str, Any]:
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    if isinstance(item, Mapping):
        return dict(item)
    return dict(vars(item))


def _to_signal(item: object) -> Signal:
    """A legacy store's signal (our ``SignalModel``, its own dataclass, or a dict) as a :class:`Signal`."""
    if isinstance(item, Signal):
        return replace(item)  # a copy: an in-memory store must not see the client's later changes
    return Signal.from_dict(_as_dict(item))


def _to_machine(item: object) -> Machine:
    if isinstance(item, Machine):
        return replace(item)
    return Machine.from_dict(_as_dict(item))


@dataclass
class _State:
    """What the legacy store has no room for, kept in memory by the adapter."""

    claims: dict[int, tuple[str, float]] = field(default_factory=dict)  # alert_id -> (token, monotonic deadline)
    quarantined: dict[int, tuple[Signal, str]] = field(default_factory=dict)
    machines: dict[str, Machine] = field(default_factory=dict)  # the full machines this process wrote
    login_locks: dict[str, tuple[str, float]] = field(default_factory=dict)  # machine id -> (holder, deadline)
    sent_at: dict[int, datetime] = field(default_factory=dict)


class LegacyStorageAdapter(StorageInterface):
    """A cscapi 0.7.0 storage (the 7 legacy methods) behind the 1.0 storage contract, for ONE process.

    Claims, leases, quarantine and login locks are kept in memory behind one lock, so threads of this process
    never send a signal twice and signals are marked sent only after a 2xx; other processes are not protected
    (see the module docstring for exactly what is and is not kept).

    Why this size: it implements the whole ``StorageInterface`` (one method per storage call), each a short
    translation to the 7 legacy methods or to the in-memory claims and locks.
    """

    def __init__(self, legacy: object, *, page_size: int = 1000) -> None:
        if isinstance(legacy, StorageInterface) and not getattr(type(legacy), "_cscapi_legacy_shaped", False):
            raise IncompatibleStorageError(
                f"{type(legacy).__name__} already implements the 1.0 storage contract: pass it to the client "
                "directly (wrapping it would give up its cross-process guarantees).",
                hint="CAPIClient(storage, config) without LegacyStorageAdapter.",
            )
        missing = [name for name in LEGACY_METHODS if not callable(getattr(legacy, name, None))]
        if missing:
            raise IncompatibleStorageError(
                f"{type(legacy).__name__} is not a cscapi 0.7.0 storage: it lacks {', '.join(missing)}.",
                hint="LegacyStorageAdapter wraps an object with the 0.7.0 StorageInterface methods: "
                + ", ".join(LEGACY_METHODS)
                + ".",
            )
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise IncompatibleStorageError(f"page_size must be a positive integer, not {page_size!r}.")
        self.legacy: Any = legacy
        self._page = page_size
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._started = utcnow()
        self._state = _State()

    def __repr__(self) -> str:
        return f"LegacyStorageAdapter({type(self.legacy).__name__})"

    # ---- helpers -------------------------------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[_State]:
        """One caller at a time, and only in the process that created the adapter."""
        if os.getpid() != self._pid:
            raise StorageError(
                f"This LegacyStorageAdapter was created in process {self._pid} and is used in process "
                f"{os.getpid()}: its claims live in memory, so two processes could send the same signals twice.",
                hint="Send from one process only (create the adapter there), or use cscapi.sql_storage.SQLStorage, "
                "whose claims hold across processes.",
            )
        with self._lock:
            yield self._state

    def _pages(self, **filters: Any) -> Iterator[Signal]:
        offset = 0
        while True:
            page = list(self.legacy.get_signals(limit=self._page, offset=offset, **filters) or [])
            for item in page:
                yield _to_signal(item)
            if len(page) < self._page:
                return
            offset += len(page)

    def _unsent(self) -> list[Signal]:
        """Every unsent signal, oldest first, read with the two calls the 0.7.0 client itself made."""
        found: dict[int, Signal] = {}
        for failing in (False, True):
            for signal in self._pages(sent=False, is_failing=failing):
                if signal.alert_id is None:
                    raise StorageError(
                        f"{type(self.legacy).__name__}.get_signals returned a signal without alert_id (uuid "
                        f"{signal.uuid}): the adapter cannot claim or mark it.",
                        hint="A 0.7.0 storage must set alert_id on the signals it returns (its row id).",
                    )
                found.setdefault(int(signal.alert_id), signal)
        return [found[aid] for aid in sorted(found)]

    def _sent(self) -> list[Signal]:
        return list(self._pages(sent=True, is_failing=None))

    def _machine(self, state: _State, machine_id: str) -> Machine | None:
        known = state.machines.get(machine_id)
        if known is not None:
            return replace(known)
        stored = self.legacy.get_machine_by_id(machine_id)
        return None if stored is None else _to_machine(stored)

    @staticmethod
    def _live(state: _State, alert_id: int, now: float) -> str | None:
        held = state.claims.get(alert_id)
        return held[0] if held is not None and held[1] > now else None

    # ---- the 0.7.0 surface, passed through ------------------------------------------------------------------

    def get_signals(
        self,
        limit: int,
        offset: int = 0,
        sent: bool | None = None,
        is_failing: bool | None = None,
    ) -> list[Signal]:
        """The legacy store's ``get_signals``, as :class:`Signal` objects."""
        with self._guard():
            items = self.legacy.get_signals(limit=limit, offset=offset, sent=sent, is_failing=is_failing)
            return [_to_signal(item) for item in items or []]

    def get_machine_by_id(self, machine_id: str) -> Machine | None:
        """The machine as this process last stored it, else as the legacy store has it."""
        with self._guard() as state:
            return self._machine(state, machine_id)

    def update_or_create_machine(self, machine: Machine) -> bool:
        """Store the 0.7.0 fields in the legacy store; the others (ban, cool-down, expiry) in memory."""
        with self._guard() as state:
            record = _LegacyMachineRecord(
                machine_id=machine.machine_id,
                token=machine.token,
                password=machine.password,
                scenarios=machine.scenarios,
                is_failing=machine.is_failing,
            )
            created = bool(self.legacy.update_or_create_machine(record))
            state.machines[machine.machine_id] = replace(machine)
            return created

    def update_or_create_signal(self, signal: Signal) -> bool:
        """Store one signal in the legacy store (its 0.7.0 fields)."""
        with self._guard():
            return self._store_signal(signal)

    def _store_signal(self, signal: Signal) -> bool:
        record = _LegacySignalRecord(**{name: getattr(signal, name) for name in _SIGNAL_FIELDS})
        created = bool(self.legacy.update_or_create_signal(record))
        if record.alert_id is not None and signal.alert_id is None:
            signal.alert_id = record.alert_id  # a store that numbers the record it was given
        return created

    def mass_update_signals(self, signal_ids: Sequence[int], changes: Mapping[str, Any]) -> None:
        """The legacy store's ``mass_update_signals``."""
        with self._guard():
            self.legacy.mass_update_signals(list(signal_ids), dict(changes))

    def delete_signals(self, signal_ids: Sequence[int]) -> None:
        """Delete from the legacy store (and forget their claims and quarantine)."""
        ids = [int(i) for i in signal_ids]
        if not ids:
            return
        with self._guard() as state:
            self.legacy.delete_signals(ids)
            for aid in ids:
                state.claims.pop(aid, None)
                state.quarantined.pop(aid, None)
                state.sent_at.pop(aid, None)

    def delete_machines(self, machine_ids: Sequence[str]) -> None:
        """Delete from the legacy store and from memory."""
        with self._guard() as state:
            self.legacy.delete_machines(list(machine_ids))
            for machine_id in machine_ids:
                state.machines.pop(machine_id, None)

    # ---- the queue, in memory on top of the legacy store ------------------------------------------------------

    def add_signals(self, signals: Iterable[Signal]) -> int:
        """Store each signal whose uuid the store does not hold yet (read first); not one transaction."""
        items = list(signals)
        with self._guard():
            known = {s.uuid for s in self._unsent()}
            known.update(s.uuid for s in self._sent())
            added = 0
            for signal in items:
                if signal.uuid in known:
                    continue
                self._store_signal(signal)
                known.add(signal.uuid)
                added += 1
            return added

    def claim_signals(self, limit: int, lease_seconds: float, machine_ids: Sequence[str] | None = None) -> Claim:
        """Claim up to ``limit`` unsent, unclaimed, not quarantined signals of machines not cooling down."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError(f"limit must be a positive integer, not {limit!r}", field="limit")
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
            raise ValidationError(f"lease_seconds must be positive, not {lease_seconds!r}", field="lease_seconds")
        token = secrets.token_hex(16)
        expires_at = utcnow() + timedelta(seconds=float(lease_seconds))
        with self._guard() as state:
            now, wall = time.monotonic(), utcnow()
            wanted = None if machine_ids is None else set(machine_ids)
            cooling: dict[str, bool] = {}
            picked: list[Signal] = []
            for signal in self._unsent():
                aid = int(signal.alert_id)  # type: ignore[arg-type]  # _unsent checked it
                mid = signal.machine_id or ""
                if aid in state.quarantined or self._live(state, aid, now) is not None:
                    continue
                if wanted is not None and mid not in wanted:
                    continue
                if mid not in cooling:
                    machine = self._machine(state, mid)
                    cooling[mid] = machine is not None and any(
                        until is not None and until > wall
                        for until in (machine.failing_until, machine.login_banned_until)
                    )
                if cooling[mid]:
                    continue
                picked.append(signal)
                if len(picked) >= limit:
                    break
            deadline = now + float(lease_seconds)
            for signal in picked:
                state.claims[int(signal.alert_id)] = (token, deadline)  # type: ignore[arg-type]
        return Claim(token=token, signals=picked, expires_at=expires_at)

    @staticmethod
    def _held(state: _State, claim: Claim, signal_ids: Sequence[int] | None) -> list[int]:
        """The ids this claim still holds: its token, even past the lease, unless another claim took them since
        (as SQLStorage: a late 2xx still marks what nobody re-claimed)."""
        ids = [int(s.alert_id) for s in claim.signals if s.alert_id is not None] if signal_ids is None else signal_ids
        return sorted({int(aid) for aid in ids if state.claims.get(int(aid), ("", 0.0))[0] == claim.token})

    def extend_claim(self, claim: Claim, signal_ids: Sequence[int], lease_seconds: float) -> list[int]:
        """Extend by ``lease_seconds`` from now the lease on the ids this claim still holds with a live lease;
        returns them (a lapsed or re-claimed id is not returned: the client does not send it)."""
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
            raise ValidationError(f"lease_seconds must be positive, not {lease_seconds!r}", field="lease_seconds")
        with self._guard() as state:
            now = time.monotonic()
            kept = sorted({int(aid) for aid in signal_ids if self._live(state, int(aid), now) == claim.token})
            for aid in kept:
                state.claims[aid] = (claim.token, now + float(lease_seconds))
            return kept

    def mark_sent(self, claim: Claim, signal_ids: Sequence[int] | None = None) -> int:
        """Mark sent (``mass_update_signals(ids, {"sent": True})``) the signals this claim still holds."""
        with self._guard() as state:
            held = self._held(state, claim, signal_ids)
            if held:
                self.legacy.mass_update_signals(held, {"sent": True})
            sent_at = utcnow()
            for aid in held:
                state.claims.pop(aid, None)
                state.sent_at[aid] = sent_at
            return len(held)

    def release_claim(self, claim: Claim, signal_ids: Sequence[int] | None = None) -> int:
        """Put the signals this claim still holds back in the queue."""
        with self._guard() as state:
            held = self._held(state, claim, signal_ids)
            for aid in held:
                state.claims.pop(aid, None)
            return len(held)

    def quarantine(self, claim: Claim, signal_ids: Sequence[int], reason: str) -> int:
        """Set aside (in memory) the signals this claim still holds: skipped by claims until requeued."""
        with self._guard() as state:
            held = self._held(state, claim, list(signal_ids))
            by_id = {s.alert_id: s for s in claim.signals}
            for aid in held:
                state.claims.pop(aid, None)
                state.quarantined[aid] = (by_id[aid], str(reason)[:1000])
            return len(held)

    def requeue_quarantined(self, signal_ids: Sequence[int] | None = None) -> int:
        """Put quarantined signals (all, or these ids) back in the queue."""
        with self._guard() as state:
            ids = list(state.quarantined) if signal_ids is None else [int(i) for i in signal_ids]
            return sum(state.quarantined.pop(aid, None) is not None for aid in ids)

    def list_quarantined(self, limit: int = 100) -> list[tuple[Signal, str]]:
        """Quarantined signals (of this process) with their reasons, oldest first."""
        with self._guard() as state:
            return [state.quarantined[aid] for aid in sorted(state.quarantined)[: int(limit)]]

    def count_signals(self, machine_id: str | None = None) -> QueueCounts:
        """Counts read from the legacy store, with this process's claims and quarantine."""
        with self._guard() as state:
            now = time.monotonic()
            queued = claimed = quarantined = 0
            for signal in self._unsent():
                if machine_id is not None and signal.machine_id != machine_id:
                    continue
                aid = int(signal.alert_id)  # type: ignore[arg-type]
                if aid in state.quarantined:
                    quarantined += 1
                elif self._live(state, aid, now) is not None:
                    claimed += 1
                else:
                    queued += 1
            sent = sum(1 for s in self._sent() if machine_id is None or s.machine_id == machine_id)
            return QueueCounts(queued=queued, claimed=claimed, sent=sent, quarantined=quarantined)

    def prune(self, *, sent_before: datetime | None = None, quarantined: bool = False) -> int:
        """Delete sent signals (a signal sent by an earlier process counts as sent when this adapter started)."""
        with self._guard() as state:
            doomed = [
                int(s.alert_id)
                for s in self._sent()
                if s.alert_id is not None
                and (sent_before is None or state.sent_at.get(int(s.alert_id), self._started) < sent_before)
            ]
            if quarantined:
                doomed.extend(state.quarantined)
            if doomed:
                self.delete_signals(doomed)
            return len(doomed)

    def list_machines(self) -> list[Machine]:
        """The machines this process stored plus those with queued signals (a 0.7.0 store cannot list them)."""
        with self._guard() as state:
            ids = dict.fromkeys(state.machines)
            ids.update(dict.fromkeys(s.machine_id for s in self._unsent() if s.machine_id))
            machines = [m for m in (self._machine(state, mid) for mid in ids) if m is not None]
            return machines

    def acquire_login_lock(self, machine_id: str, holder: str, ttl_seconds: float) -> bool:
        """Become the one caller (of this process) logging in for ``machine_id``, for ``ttl_seconds``."""
        with self._guard() as state:
            now = time.monotonic()
            current = state.login_locks.get(machine_id)
            if current is not None and current[0] != holder and current[1] > now:
                return False
            state.login_locks[machine_id] = (holder, now + float(ttl_seconds))
            return True

    def release_login_lock(self, machine_id: str, holder: str) -> None:
        """Release the login lock if ``holder`` still holds it."""
        with self._guard() as state:
            current = state.login_locks.get(machine_id)
            if current is not None and current[0] == holder:
                del state.login_locks[machine_id]

    def close(self) -> None:
        """Close the legacy store if it has a ``close()``."""
        closer = getattr(self.legacy, "close", None)
        if callable(closer):
            closer()
