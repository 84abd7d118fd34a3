"""The storage contract: a durable signal queue and the machines' credentials.

``StorageInterface`` keeps the legacy ``cscapi`` 0.7.0 methods (``get_signals``, ``update_or_create_signal`` ...)
and adds the queue operations the client really uses: ``add_signals`` (idempotent by uuid), ``claim_signals``
(a leased claim so that concurrent senders never send a signal twice), ``mark_sent``, ``release_claim``,
``quarantine``, plus machine login locks and bans. ``cscapi.sql_storage.SQLStorage`` implements it on SQLite,
PostgreSQL and MariaDB/MySQL.

Every method is blocking; the async client runs them in a worker thread, never on the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cscapi.models import Context, Machine, QueueCounts, Signal, SignalDecision, Source

__all__ = [
    "Claim",
    "ContextModel",
    "DecisionModel",
    "MachineModel",
    "QueueCounts",
    "SignalModel",
    "SourceModel",
    "StorageInterface",
]

# The legacy names, kept so that code written for cscapi 0.7.0 imports unchanged.
SignalModel = Signal
SourceModel = Source
DecisionModel = SignalDecision
ContextModel = Context
MachineModel = Machine


@dataclass(frozen=True)
class Claim:
    """Signals claimed for sending under ``token`` until ``expires_at``.

    Nobody else can claim these signals before the lease expires; after ``mark_sent`` they are sent, after
    ``release_claim`` they are queued again. A crash simply lets the lease run out: the signals are resent, never lost.
    """

    token: str
    signals: list[Signal]
    expires_at: datetime

    def __len__(self) -> int:
        return len(self.signals)


class StorageInterface(ABC):
    """What the client needs from a storage back end. Implementations must be safe for threads and processes."""

    # ---- legacy 0.7.0 surface ----------------------------------------------------------------------------

    @abstractmethod
    def get_signals(
        self,
        limit: int,
        offset: int = 0,
        sent: bool | None = None,
        is_failing: bool | None = None,
    ) -> list[Signal]:
        """Signals ordered by ``alert_id``; ``sent`` filters on sent state, ``is_failing`` on the machine's state.

        Quarantined signals count as not sent here only when ``sent`` is None.
        """

    @abstractmethod
    def get_machine_by_id(self, machine_id: str) -> Machine | None:
        """The stored machine, or None."""

    @abstractmethod
    def update_or_create_machine(self, machine: Machine) -> bool:
        """Store the machine (every field); True when it was created, False when it replaced an existing row."""

    @abstractmethod
    def update_or_create_signal(self, signal: Signal) -> bool:
        """Store one signal. Matches an existing row by ``alert_id``, else by ``uuid``; True when created."""

    @abstractmethod
    def mass_update_signals(self, signal_ids: Sequence[int], changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (``sent`` only, in the legacy SDK) to the signals with these ``alert_id``s."""

    @abstractmethod
    def delete_signals(self, signal_ids: Sequence[int]) -> None:
        """Delete the signals with these ``alert_id``s."""

    @abstractmethod
    def delete_machines(self, machine_ids: Sequence[str]) -> None:
        """Delete these machines (their queued signals stay, and are sent after the machine registers again)."""

    # ---- the queue -------------------------------------------------------------------------------------

    @abstractmethod
    def add_signals(self, signals: Iterable[Signal]) -> int:
        """Queue validated signals in one transaction; a uuid already stored is skipped. Returns how many were new.

        Sets ``alert_id`` on each signal object that was stored.
        """

    @abstractmethod
    def claim_signals(
        self,
        limit: int,
        lease_seconds: float,
        machine_ids: Sequence[str] | None = None,
    ) -> Claim:
        """Claim up to ``limit`` queued signals (oldest first) whose machine is not cooling down.

        Expired leases count as queued. ``machine_ids`` restricts the claim to those machines. Concurrent callers,
        in threads or processes, never get the same signal (``FOR UPDATE SKIP LOCKED`` where the database has it).
        """

    @abstractmethod
    def mark_sent(self, claim: Claim, signal_ids: Sequence[int] | None = None) -> int:
        """Mark claimed signals sent (all of the claim's by default). Returns how many were marked."""

    @abstractmethod
    def release_claim(self, claim: Claim, signal_ids: Sequence[int] | None = None) -> int:
        """Put claimed signals back in the queue (all of the claim's by default). Returns how many."""

    @abstractmethod
    def quarantine(self, claim: Claim, signal_ids: Sequence[int], reason: str) -> int:
        """Set claimed signals aside with the server's ``reason``; never sent again unless requeued. Returns a count."""

    @abstractmethod
    def requeue_quarantined(self, signal_ids: Sequence[int] | None = None) -> int:
        """Put quarantined signals back in the queue (all by default). Returns how many."""

    @abstractmethod
    def list_quarantined(self, limit: int = 100) -> list[tuple[Signal, str]]:
        """Quarantined signals with their reasons, oldest first."""

    @abstractmethod
    def count_signals(self, machine_id: str | None = None) -> QueueCounts:
        """How many signals are queued, claimed, sent and quarantined (for one machine, or all)."""

    @abstractmethod
    def prune(self, *, sent_before: datetime | None = None, quarantined: bool = False) -> int:
        """Delete sent signals (all, or those sent before ``sent_before``) and, if asked, quarantined ones."""

    # ---- machines ----------------------------------------------------------------------------------------

    @abstractmethod
    def list_machines(self) -> list[Machine]:
        """Every stored machine, ordered by creation."""

    @abstractmethod
    def acquire_login_lock(self, machine_id: str, holder: str, ttl_seconds: float) -> bool:
        """Try to become the one caller logging in for ``machine_id``; the lock lapses after ``ttl_seconds``.

        Returns False at once when someone else holds a live lock (never blocks). Creates no machine row.
        """

    @abstractmethod
    def release_login_lock(self, machine_id: str, holder: str) -> None:
        """Release the login lock if ``holder`` still holds it."""

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default does nothing."""

    def __enter__(self) -> StorageInterface:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
