"""The storage contract: a durable signal queue and the machines' credentials.

``StorageInterface`` keeps the legacy ``cscapi`` 0.7.0 methods (``get_signals``, ``update_or_create_signal`` ...)
and adds the queue operations the client really uses: ``add_signals`` (idempotent by uuid), ``claim_signals``
(a leased claim so that concurrent senders never send a signal twice), ``extend_claim`` (the lease renewed before a
POST), ``mark_sent``, ``release_claim``, ``quarantine``, plus machine login locks and bans.
``cscapi.sql_storage.SQLStorage`` implements it on SQLite, PostgreSQL and MariaDB/MySQL.

Every method is blocking; the async client runs them in a worker thread, never on the event loop.

A class written for 0.7.0 (only the legacy methods) can still be instantiated, but the client refuses it
(:class:`IncompatibleStorageError`: it has no atomic claim). ``LegacyStorageAdapter`` (``cscapi.legacy_storage``)
runs one under the client in a single process.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn

from cscapi.errors import ConfigurationError, ValidationError
from cscapi.models import Context, Machine, QueueCounts, Signal, SignalDecision, Source

if TYPE_CHECKING:
    from cscapi.legacy_storage import LegacyStorageAdapter

__all__ = [
    "LEGACY_METHODS",
    "QUEUE_METHODS",
    "Claim",
    "ContextModel",
    "DecisionModel",
    "IncompatibleStorageError",
    "LegacyStorageAdapter",
    "MachineModel",
    "QueueCounts",
    "ReceivedDecision",
    "SignalModel",
    "SourceModel",
    "StorageInterface",
    "check_destinations",
    "check_storage",
    "queue_signals",
]

# The agent's lease key: the pseudo machine id of the login lock the default agent-lease methods borrow (and the
# name of SQLStorage's own lease row).
AGENT_LEASE_KEY = "cscapi-agent"

# Where a queued signal goes: CrowdSec's Central API (the default: everything before 1.x's LAPI watcher) or a local
# CrowdSec engine's LAPI (``cscapi.lapi.LapiWatcher``). A signal queued for both is two rows, sent apart.
DESTINATIONS = ("capi", "lapi")


def check_destinations(destinations: Sequence[str] | str) -> tuple[str, ...]:
    """The destinations, validated and deduplicated in order (``"both"`` is capi and lapi): a typed error if bad."""
    if isinstance(destinations, str):
        destinations = DESTINATIONS if destinations == "both" else (destinations,)
    wanted: list[str] = []
    for name in destinations:
        if name not in DESTINATIONS:
            raise ValidationError(
                f"unknown signal destination {name!r}: use 'capi', 'lapi' or both", field="destinations"
            )
        if name not in wanted:
            wanted.append(name)
    if not wanted:
        raise ValidationError("no signal destination given: use 'capi', 'lapi' or both", field="destinations")
    return tuple(wanted)


def queue_signals(storage: Any, signals: Iterable[Signal], destinations: Sequence[str] | str = ("capi",)) -> int:
    """``storage.add_signals`` for these destinations; only CAPI asks nothing new of the storage, so a storage
    without ``supports_destinations`` (a third-party or 0.7.0-wrapped one) still queues for CAPI, and is refused
    with :class:`IncompatibleStorageError` for LAPI."""
    wanted = check_destinations(destinations)
    if wanted == ("capi",):
        return int(storage.add_signals(signals))
    require_destinations(storage)
    return int(storage.add_signals(signals, destinations=wanted))


def require_destinations(storage: object) -> None:
    """Raise :class:`IncompatibleStorageError` unless ``storage`` keeps one queue per destination."""
    if not getattr(storage, "supports_destinations", False):
        raise IncompatibleStorageError(
            f"{type(storage).__name__} cannot queue signals for a LAPI: it keeps one queue (CAPI's) and has no "
            "'destination' on its claims.",
            hint="Use cscapi.sql_storage.SQLStorage (SQLite, PostgreSQL, MariaDB/MySQL) for LAPI signals.",
        )


# The legacy names, kept so that code written for cscapi 0.7.0 imports unchanged.
SignalModel = Signal
SourceModel = Source
DecisionModel = SignalDecision
ContextModel = Context
MachineModel = Machine


@dataclass
class ReceivedDecision:
    """The legacy 0.7.0 annotation of a stream decision (kept importable; the client returns a ``DecisionStream``)."""

    Duration: str | None
    Value: str | None
    Scenario: str | None
    Scope: str | None


LEGACY_METHODS = (
    "get_signals",
    "get_machine_by_id",
    "update_or_create_machine",
    "update_or_create_signal",
    "mass_update_signals",
    "delete_signals",
    "delete_machines",
)
"""The abstract methods of the 0.7.0 ``StorageInterface``."""

QUEUE_METHODS = frozenset(
    {
        "add_signals",
        "claim_signals",
        "mark_sent",
        "release_claim",
        "quarantine",
        "requeue_quarantined",
        "list_quarantined",
        "count_signals",
        "prune",
        "list_machines",
        "acquire_login_lock",
        "release_login_lock",
    }
)
"""What a storage must implement on top of :data:`LEGACY_METHODS` since 1.0 (leased claims, login locks...)."""


class IncompatibleStorageError(ConfigurationError):
    """The storage given to the client cannot keep the queue's guarantees (e.g. a class written for 0.7.0)."""

    default_hint = (
        "Use cscapi.sql_storage.SQLStorage (SQLite, PostgreSQL, MariaDB/MySQL), or, when a single process sends, "
        "wrap a 0.7.0 storage: CAPIClient(LegacyStorageAdapter(your_storage), config). "
        "See the README, 'Migrating from cscapi 0.7.0'."
    )


_WHY_LEGACY = (
    "cscapi 1.0 sends signals through a queue with leased claims (claim_signals, mark_sent, release_claim, ...) so "
    "that concurrent senders never send a signal twice and a signal is marked sent only after CAPI accepted it; "
    "a 0.7.0 storage has no atomic claim, so that cannot hold across threads or processes."
)


class _StorageMeta(ABCMeta):
    """ABCMeta that lets a class implementing exactly the 0.7.0 methods be instantiated (and marks it legacy).

    Such a class gets a clear :class:`IncompatibleStorageError` from the client, and can be wrapped in
    ``LegacyStorageAdapter``; a class implementing only part of the 1.0 queue stays abstract, as usual.
    """

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> _StorageMeta:
        cls = super().__new__(mcls, name, bases, namespace, **kwargs)
        abstract = {
            n
            for n in (*LEGACY_METHODS, *QUEUE_METHODS)
            if getattr(getattr(cls, n, None), "__isabstractmethod__", False)
        }
        legacy = abstract == QUEUE_METHODS  # every 0.7.0 method implemented, none of the 1.0 queue's
        missing = set(cls.__abstractmethods__) | abstract
        cls.__abstractmethods__ = frozenset(missing - QUEUE_METHODS if legacy else missing)
        cls._cscapi_legacy_shaped = legacy  # type: ignore[attr-defined]
        return cls


def _not_implemented(storage: object, method: str) -> NoReturn:
    raise IncompatibleStorageError(
        f"{type(storage).__name__} does not implement {method}(): it implements only the cscapi 0.7.0 storage "
        f"methods. {_WHY_LEGACY}"
    )


def check_storage(storage: object) -> StorageInterface:
    """Return ``storage`` if the client can use it, else raise :class:`IncompatibleStorageError` saying why."""
    if isinstance(storage, StorageInterface) and not getattr(type(storage), "_cscapi_legacy_shaped", False):
        return storage
    if all(callable(getattr(storage, name, None)) for name in LEGACY_METHODS):
        missing = sorted(name for name in QUEUE_METHODS if not callable(getattr(storage, name, None)))
        if isinstance(storage, StorageInterface):
            missing = sorted(QUEUE_METHODS)
        raise IncompatibleStorageError(
            f"{type(storage).__name__} is a cscapi 0.7.0 storage: it lacks {', '.join(missing)}. {_WHY_LEGACY}"
        )
    raise IncompatibleStorageError(
        f"storage must implement cscapi.storage.StorageInterface (e.g. SQLStorage), not {type(storage).__name__}."
    )


def __getattr__(name: str) -> Any:
    if name == "LegacyStorageAdapter":  # lazily: the adapter module imports this one
        from cscapi.legacy_storage import LegacyStorageAdapter

        return LegacyStorageAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


class StorageInterface(metaclass=_StorageMeta):
    """What the client needs from a storage back end. Implementations must be safe for threads and processes.

    Why this size: it is the storage contract, one method per call the client makes (the 0.7.0 surface, then
    claims, leases, quarantine and login locks).
    """

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

    #: True when the queue methods take ``destination=`` (``add_signals`` ``destinations=``): one queue per
    #: destination (``capi``, ``lapi``). A storage without it is CAPI's queue only (the LAPI watcher refuses it).
    supports_destinations: bool = False

    @abstractmethod
    def add_signals(self, signals: Iterable[Signal]) -> int:
        """Queue validated signals in one transaction; a uuid already stored is skipped. Returns how many were new.

        Sets ``alert_id`` on each signal object that was stored.
        """
        _not_implemented(self, "add_signals")

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
        _not_implemented(self, "claim_signals")

    @abstractmethod
    def mark_sent(self, claim: Claim, signal_ids: Sequence[int] | None = None) -> int:
        """Mark claimed signals sent (all of the claim's by default). Returns how many were marked."""
        _not_implemented(self, "mark_sent")

    @abstractmethod
    def release_claim(self, claim: Claim, signal_ids: Sequence[int] | None = None) -> int:
        """Put claimed signals back in the queue (all of the claim's by default). Returns how many."""
        _not_implemented(self, "release_claim")

    def extend_claim(self, claim: Claim, signal_ids: Sequence[int], lease_seconds: float) -> list[int]:
        """Extend to ``lease_seconds`` from now the lease on those ``signal_ids`` this claim still holds (its token,
        lease not run out) and return their ids: each returned id is this claim's for at least ``lease_seconds``.
        An id lost (its lease ran out, another claimer may hold it) is not returned.

        The client calls it before a signals POST try when less than half of ``claim_lease`` is left, and POSTs only
        the returned ids, so a sender never POSTs a signal another sender may hold. Implementations should do it in
        one atomic statement. This default (for storages written before the method existed) extends nothing: it
        returns the claim's ids only while its original lease (``claim.expires_at``) still has ``lease_seconds``
        to run, so with it the client stops POSTing a claim once half of its lease is over.
        """
        now = datetime.now(timezone.utc)
        expires = (
            claim.expires_at if claim.expires_at.tzinfo is not None else claim.expires_at.replace(tzinfo=timezone.utc)
        )
        if expires < now + timedelta(seconds=float(lease_seconds)):
            return []
        held = {s.alert_id for s in claim.signals if s.alert_id is not None}
        return [int(i) for i in signal_ids if i in held]

    @abstractmethod
    def quarantine(self, claim: Claim, signal_ids: Sequence[int], reason: str) -> int:
        """Set claimed signals aside with the server's ``reason``; never sent again unless requeued. Returns a count."""
        _not_implemented(self, "quarantine")

    @abstractmethod
    def requeue_quarantined(self, signal_ids: Sequence[int] | None = None) -> int:
        """Put quarantined signals back in the queue (all by default). Returns how many."""
        _not_implemented(self, "requeue_quarantined")

    @abstractmethod
    def list_quarantined(self, limit: int = 100) -> list[tuple[Signal, str]]:
        """Quarantined signals with their reasons, oldest first."""
        _not_implemented(self, "list_quarantined")

    @abstractmethod
    def count_signals(self, machine_id: str | None = None) -> QueueCounts:
        """How many signals are queued, claimed, sent and quarantined (for one machine, or all)."""
        _not_implemented(self, "count_signals")

    @abstractmethod
    def prune(self, *, sent_before: datetime | None = None, quarantined: bool = False) -> int:
        """Delete sent signals (all, or those sent before ``sent_before``) and, if asked, quarantined ones."""
        _not_implemented(self, "prune")

    # ---- machines ----------------------------------------------------------------------------------------

    @abstractmethod
    def list_machines(self) -> list[Machine]:
        """Every stored machine, ordered by creation."""
        _not_implemented(self, "list_machines")

    @abstractmethod
    def acquire_login_lock(self, machine_id: str, holder: str, ttl_seconds: float) -> bool:
        """Try to become the one caller logging in for ``machine_id``; the lock lapses after ``ttl_seconds``.

        Returns False at once when someone else holds a live lock (never blocks). Creates no machine row.
        """
        _not_implemented(self, "acquire_login_lock")

    @abstractmethod
    def release_login_lock(self, machine_id: str, holder: str) -> None:
        """Release the login lock if ``holder`` still holds it."""
        _not_implemented(self, "release_login_lock")

    # ---- the agent's lease (one agent per storage) --------------------------------------------------------

    def acquire_agent_lease(self, holder: str, ttl_seconds: float) -> bool:
        """Become the one agent running on this storage for ``ttl_seconds``; False at once if another holds it.

        The default borrows the login lock of the pseudo machine ``AGENT_LEASE_KEY`` (so it is as shared as that
        lock); ``SQLStorage`` keeps the lease in a table of its own.
        """
        return self.acquire_login_lock(AGENT_LEASE_KEY, holder, ttl_seconds)

    def renew_agent_lease(self, holder: str, ttl_seconds: float) -> bool:
        """Extend ``holder``'s lease to ``ttl_seconds`` from now; False if it is not ``holder``'s any more.

        The default uses a ``renew_login_lock`` method when the storage has one; else it releases then re-takes the
        login lock (releasing removes only ``holder``'s own lock, so after a takeover the re-take fails).
        """
        renew = getattr(self, "renew_login_lock", None)
        if callable(renew):
            return bool(renew(AGENT_LEASE_KEY, holder, ttl_seconds))
        self.release_login_lock(AGENT_LEASE_KEY, holder)
        return self.acquire_login_lock(AGENT_LEASE_KEY, holder, ttl_seconds)

    def release_agent_lease(self, holder: str) -> None:
        """Give the lease back if ``holder`` still holds it."""
        self.release_login_lock(AGENT_LEASE_KEY, holder)

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release connections; the default does nothing."""

    def __enter__(self) -> StorageInterface:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
