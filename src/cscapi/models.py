"""Typed values shared by every layer: signals, machines, and what the decisions stream returns.

Plain dataclasses (no pydantic, no I/O) so that importing them is cheap and the lookup path never touches a
validation framework. Field names follow the CAPI wire format; the legacy ``cscapi.storage`` names
(``SignalModel``, ``SourceModel``, ``DecisionModel``, ``ContextModel``, ``MachineModel``) are aliases of these.
Turning them into JSON for CAPI is the protocol layer's job (``cscapi.protocol``), not theirs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cscapi.errors import CAPIError

__all__ = [
    "AllowlistLink",
    "BlocklistLink",
    "Context",
    "DecisionStream",
    "DeletedDecision",
    "EnrollOutcome",
    "EnrollStatus",
    "LinkDownload",
    "Machine",
    "QueueCounts",
    "SendReport",
    "SendTally",
    "Signal",
    "SignalDecision",
    "Source",
    "StreamDecision",
]


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _known_kwargs(cls: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    names = _field_names(cls)
    return {k: v for k, v in kwargs.items() if k in names}


@dataclass
class Source:
    """Where an attack came from: ``scope`` (``ip`` or ``range``) and ``value``, plus optional AS and geo fields.

    The fields keep 0.7.0's ``SourceModel`` order, so positional construction means what it meant.
    """

    ip: str | None = None
    range: str | None = None
    scope: str | None = None
    latitude: float | None = None
    as_number: str | None = None
    cn: str | None = None
    value: str | None = None
    as_name: str | None = None
    longitude: float | None = None

    def __post_init__(self) -> None:
        if self.scope is None and (self.ip or self.range):  # as 0.7.0's SourceModel did (without overriding)
            self.scope = "ip" if self.ip else "range"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Source:
        """Build from a mapping, ignoring unknown keys."""
        return cls(**_known_kwargs(cls, data))


@dataclass
class SignalDecision:
    """A decision the agent took about the source (e.g. ``ban`` for ``24h``); carried by a *decision* signal."""

    duration: str | None = None
    uuid: str | None = None
    scenario: str | None = None
    origin: str | None = None
    scope: str | None = None
    simulated: bool | None = None
    until: str | None = None
    id: int | None = None
    type: str | None = None
    value: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignalDecision:
        """Build from a mapping, ignoring unknown keys."""
        return cls(**_known_kwargs(cls, data))


@dataclass
class Context:
    """One piece of alert metadata shared with the console (``key``/``value``; 0.7.0's ``ContextModel`` order)."""

    value: str | None = None
    key: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Context:
        """Build from a mapping, ignoring unknown keys."""
        return cls(**_known_kwargs(cls, data))


@dataclass
class Signal:
    """One signal for CAPI: an attack seen by a machine, with or without a decision.

    A *decision* signal carries ``decisions`` (the agent remediated); a *whisper* carries none. Timestamps are
    RFC 3339 strings in UTC with microseconds once validated (see ``cscapi.signals.validate_signal``).
    ``alert_id`` (the local queue id) and ``sent`` are local fields and never go to CAPI.
    """

    scenario: str | None = None
    source: Source | None = None
    machine_id: str | None = None
    created_at: str | None = None
    start_at: str | None = None
    stop_at: str | None = None
    uuid: str | None = None
    message: str | None = ""
    scenario_hash: str | None = ""
    scenario_version: str | None = ""
    scenario_trust: str | None = "manual"
    decisions: list[SignalDecision] | None = None
    context: list[Context] | None = None
    kind: str | None = None
    sent: bool | None = False
    alert_id: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.source, Mapping):
            self.source = Source.from_dict(self.source)
        if self.decisions is not None:
            self.decisions = [SignalDecision.from_dict(d) if isinstance(d, Mapping) else d for d in self.decisions]
        if self.context is not None:
            self.context = [Context.from_dict(c) if isinstance(c, Mapping) else c for c in self.context]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signal:
        """Build from a mapping (nested dicts allowed), ignoring unknown keys."""
        return cls(**_known_kwargs(cls, data))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of every field, nested values included (local fields too)."""
        return dataclasses.asdict(self)

    @property
    def is_whisper(self) -> bool:
        """True when the signal carries no decision (a behaviour worth sharing, not a remediation)."""
        return not self.decisions


@dataclass
class Machine:
    """A machine ("security engine") registered on CAPI, with its credentials and login state.

    ``password`` and ``token`` are secrets: they are excluded from ``repr`` and never logged.
    Times are aware UTC datetimes; ``scenarios`` is the sorted, comma-joined scenario list of the last login.
    """

    machine_id: str = ""
    token: str | None = field(default=None, repr=False)  # the first five fields keep 0.7.0's MachineModel order
    password: str | None = field(default=None, repr=False)
    scenarios: str | None = ""
    is_failing: bool | None = False
    token_expires_at: datetime | None = None
    login_banned_until: datetime | None = None
    failing_until: datetime | None = None
    failure_reason: str | None = None
    registered: bool = False
    organization_id: str | None = None
    created_at: datetime | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Machine:
        """Build from a mapping, ignoring unknown keys."""
        return cls(**_known_kwargs(cls, data))


@dataclass(frozen=True)
class QueueCounts:
    """How many signals the queue holds in each state (for one machine or for all)."""

    queued: int = 0
    claimed: int = 0
    sent: int = 0
    quarantined: int = 0

    @property
    def pending(self) -> int:
        """Signals not yet accepted by CAPI and not quarantined."""
        return self.queued + self.claimed


class SendReport(int):
    """What one ``send_signals`` run did. It *is* the number of signals accepted, an ``int``, as in the legacy SDK.

    ``n + 1``, ``n > 0``, ``sum(...)``, ``f"{n:d}"``, ``json.dumps({"sent": n})``, ``hash(n)`` and
    ``isinstance(n, int)`` work as with the legacy ``int``; ``str(n)`` is the number, ``repr(n)`` the details.
    ``sent``, ``quarantined`` and ``batches`` (POSTs made) are counts; ``failed_machines`` maps each machine whose
    signals could not be sent in this call to a message; ``errors`` maps it to the typed ``cscapi.errors``
    exception that stopped it (``TransportError``, ``ServerError``, ``AuthenticationError``...), plus the machines
    whose queued signals were not tried because they wait out the cool-down of an earlier failure
    (``MachineCoolingDownError``, or ``LoginBannedError`` while a login ban holds).

    Immutable like an ``int`` (its attributes cannot be set; the two dicts are the report's own copies).
    Compared with a number it is its count; compared with another report, counts, ``failed_machines`` and the
    errors' types and texts must all match. Copies and pickles keep every detail.
    """

    quarantined: int
    failed_machines: dict[str, str]
    batches: int
    errors: dict[str, CAPIError]

    def __new__(
        cls,
        sent: int = 0,
        quarantined: int = 0,
        failed_machines: Mapping[str, str] | None = None,
        batches: int = 0,
        errors: Mapping[str, CAPIError] | None = None,
    ) -> SendReport:
        for name, value in (("sent", sent), ("quarantined", quarantined), ("batches", batches)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TypeError(f"SendReport.{name} must be a non-negative int, not {value!r}")
        self = super().__new__(cls, sent)
        self.__dict__.update(
            quarantined=int(quarantined),
            failed_machines=dict(failed_machines or {}),
            batches=int(batches),
            errors=dict(errors or {}),
        )
        return self

    @property
    def sent(self) -> int:
        """How many signals CAPI accepted (a plain ``int``)."""
        return int(self)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SendReport is immutable (like the int it is): cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"SendReport is immutable (like the int it is): cannot delete {name!r}")

    def __str__(self) -> str:
        return int.__repr__(self)

    def __repr__(self) -> str:
        return (
            f"SendReport(sent={int(self)}, quarantined={self.quarantined}, failed_machines={self.failed_machines!r}, "
            f"batches={self.batches}, errors={self.errors!r})"
        )

    def _key(self) -> tuple[Any, ...]:
        return (int(self), self.quarantined, self.failed_machines, self.batches, _error_keys(self.errors))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SendReport):
            return self._key() == other._key()
        return int.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = int.__hash__  # equal reports have equal counts, so equal hashes

    def __copy__(self) -> SendReport:
        return SendReport(int(self), self.quarantined, self.failed_machines, self.batches, self.errors)

    def __reduce__(self) -> tuple[Any, ...]:
        errors = {m: (type(e), e.args, dict(e.__dict__)) for m, e in self.errors.items()}
        return (_rebuild_report, (int(self), self.quarantined, dict(self.failed_machines), self.batches, errors))


def _rebuild_report(
    sent: int,
    quarantined: int,
    failed_machines: dict[str, str],
    batches: int,
    errors: dict[str, tuple[type[CAPIError], tuple[Any, ...], dict[str, Any]]],
) -> SendReport:
    """Unpickle a report. Errors are rebuilt without calling their ``__init__`` (some take keyword-only values)."""
    rebuilt: dict[str, CAPIError] = {}
    for machine_id, (kind, args, state) in errors.items():
        error = kind.__new__(kind)
        error.args = args
        error.__dict__.update(state)
        rebuilt[machine_id] = error
    return SendReport(sent, quarantined, failed_machines, batches, rebuilt)


@dataclass
class SendTally:
    """The mutable counts a ``send_signals`` run builds up; :meth:`report` freezes them into a :class:`SendReport`."""

    sent: int = 0
    quarantined: int = 0
    failed_machines: dict[str, str] = field(default_factory=dict)
    batches: int = 0
    errors: dict[str, CAPIError] = field(default_factory=dict)

    def report(self) -> SendReport:
        """The immutable report of these counts."""
        return SendReport(self.sent, self.quarantined, self.failed_machines, self.batches, self.errors)


def _error_keys(errors: Mapping[str, CAPIError]) -> dict[str, tuple[type[BaseException], str]]:
    """Errors compared by type and text (exceptions compare by identity, which no caller means)."""
    return {machine_id: (type(exc), str(exc)) for machine_id, exc in errors.items()}


class EnrollStatus:
    """The outcomes of enrolling one machine."""

    ENROLLED = "enrolled"
    ALREADY_ENROLLED = "already_enrolled"
    FAILED = "failed"


@dataclass(frozen=True)
class EnrollOutcome:
    """The outcome of enrolling one machine: ``status`` is one of :class:`EnrollStatus`, ``reason`` set on failure."""

    machine_id: str
    status: str
    reason: str | None = None
    url: str | None = None
    expire_at: datetime | None = None

    @property
    def ok(self) -> bool:
        """True when the machine is (now or already) enrolled."""
        return self.status != EnrollStatus.FAILED


@dataclass(frozen=True, slots=True)
class StreamDecision:
    """One community-blocklist decision from the stream's ``new`` part, flattened out of its scenario group.

    ``scope`` is normalised to lowercase (``ip``, ``range``); ``duration`` is in seconds; ``type`` is ``ban``
    (CAPI's stream has no type) and ``origin`` is ``CAPI``.
    """

    value: str
    scope: str
    scenario: str
    duration: float
    type: str = "ban"
    origin: str = "CAPI"
    id: int | None = None
    """A LAPI decision's id (several decisions may share a value); None for CAPI."""


@dataclass(frozen=True, slots=True)
class DeletedDecision:
    """One value from the stream's ``deleted`` part: the community-blocklist decisions on it are gone.

    A LAPI stream names the decision too (``scenario``, ``type``, ``origin``): then only that decision goes."""

    value: str
    scope: str
    scenario: str | None = None
    type: str | None = None
    origin: str | None = None
    id: int | None = None
    """The LAPI decision's id: of several decisions on one value, only this one goes."""


@dataclass(frozen=True, slots=True)
class BlocklistLink:
    """A subscribed blocklist: its content (plain text, one value per line) is at ``url``, fetched without auth.

    Every value gets decision type ``remediation``, scope ``scope`` and lives ``duration`` seconds.
    """

    name: str
    url: str
    remediation: str
    scope: str
    duration: float


@dataclass(frozen=True, slots=True)
class AllowlistLink:
    """A console allowlist: its content (NDJSON, one ``{value, expiration?}`` per line) is at ``url``."""

    id: str
    name: str
    url: str
    description: str = ""
    created_at: str | None = None
    updated_at: str | None = None


class DecisionStream(dict[str, Any]):
    """The answer of ``GET /v3/decisions/stream``: a ``dict`` of the JSON as received, plus its typed reading.

    As a dict it is what the legacy SDK returned (``stream["new"]``, ``json.dumps(stream)``, ``len``, ``items()``,
    ``isinstance(stream, dict)``); it shares the parsed JSON, it does not copy it. The typed parts are attributes,
    read once when the answer arrived (changing the dict does not change them): ``new`` (flattened
    :class:`StreamDecision`), ``deleted``, ``blocklists``, ``allowlists``, ``skipped`` (stream items that could not
    be read, each logged with its reason) and ``startup``. Equality, ``copy.copy``, ``dict(stream)`` and
    ``stream.copy()`` are a dict's (``copy()`` gives a plain dict); pickles and ``copy.copy`` keep the attributes.
    """

    __slots__ = ("allowlists", "blocklists", "deleted", "new", "skipped", "startup")

    new: list[StreamDecision]
    deleted: list[DeletedDecision]
    blocklists: list[BlocklistLink]
    allowlists: list[AllowlistLink]
    skipped: int
    startup: bool

    def __init__(
        self,
        raw: Mapping[str, Any] | None = None,
        *,
        new: list[StreamDecision] | None = None,
        deleted: list[DeletedDecision] | None = None,
        blocklists: list[BlocklistLink] | None = None,
        allowlists: list[AllowlistLink] | None = None,
        skipped: int = 0,
        startup: bool = False,
    ) -> None:
        super().__init__(raw or {})  # the top-level keys only: the lists inside are shared, not copied
        self.new = new if new is not None else []
        self.deleted = deleted if deleted is not None else []
        self.blocklists = blocklists if blocklists is not None else []
        self.allowlists = allowlists if allowlists is not None else []
        self.skipped = skipped
        self.startup = startup

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON as received (the stream itself: it is that dict)."""
        return self

    def __repr__(self) -> str:
        return (
            f"DecisionStream(new={len(self.new)}, deleted={len(self.deleted)}, blocklists={len(self.blocklists)}, "
            f"allowlists={len(self.allowlists)}, skipped={self.skipped}, startup={self.startup}, keys={list(self)})"
        )

    def __copy__(self) -> DecisionStream:
        return DecisionStream(
            self,
            new=self.new,
            deleted=self.deleted,
            blocklists=self.blocklists,
            allowlists=self.allowlists,
            skipped=self.skipped,
            startup=self.startup,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        typed = (self.new, self.deleted, self.blocklists, self.allowlists, self.skipped, self.startup)
        return (_rebuild_stream, (dict(self), *typed))


def _rebuild_stream(
    raw: dict[str, Any],
    new: list[StreamDecision],
    deleted: list[DeletedDecision],
    blocklists: list[BlocklistLink],
    allowlists: list[AllowlistLink],
    skipped: int,
    startup: bool,
) -> DecisionStream:
    """Unpickle a stream."""
    return DecisionStream(
        raw, new=new, deleted=deleted, blocklists=blocklists, allowlists=allowlists, skipped=skipped, startup=startup
    )


@dataclass(frozen=True)
class LinkDownload:
    """The result of downloading a blocklist or allowlist link.

    ``not_modified`` is True on 304; otherwise ``text`` is the body. ``last_modified`` is the server's
    ``Last-Modified`` header (an HTTP date) to send back as ``If-Modified-Since`` next time.
    """

    url: str
    status_code: int
    text: str = ""
    not_modified: bool = False
    last_modified: str | None = None
