"""What the remediation engine returns: a lookup result (:class:`Remediation`) and a refresh report.

Plain classes with ``__slots__`` (no pydantic, no dataclass machinery on the lookup path): the engine hands out
prebuilt, shared ``Remediation`` objects, so a lookup allocates nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLEAN",
    "ListOutcome",
    "ListStatus",
    "RefreshReport",
    "Remediation",
]

_KEYS = ("remediation", "origin")


class Remediation(Mapping[str, str]):
    """What to do with an IP (``remediation``: ``ban``, ``captcha``, ``bypass`` or a custom type) and why (``origin``).

    Immutable and hashable. It is also a read-only mapping with the keys ``remediation`` and ``origin``, like the PHP
    remediation engine's array: ``r["remediation"]``, ``dict(r)`` and ``r == {"remediation": "ban", "origin": "CAPI"}``
    all work.
    """

    __slots__ = ("origin", "remediation")

    remediation: str
    origin: str

    def __init__(self, remediation: str, origin: str) -> None:
        object.__setattr__(self, "remediation", remediation)
        object.__setattr__(self, "origin", origin)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Remediation is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Remediation is immutable")

    def __getitem__(self, key: str) -> str:
        if key == "remediation":
            return self.remediation
        if key == "origin":
            return self.origin
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return 2

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Remediation):
            return self.remediation == other.remediation and self.origin == other.origin
        if isinstance(other, Mapping):
            return dict(other) == {"remediation": self.remediation, "origin": self.origin}
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.remediation, self.origin))

    def __repr__(self) -> str:
        return f"Remediation(remediation={self.remediation!r}, origin={self.origin!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Remediation, (self.remediation, self.origin))


CLEAN = Remediation("bypass", "clean")
"""The answer for an IP that no live decision covers."""


class ListStatus:
    """What happened to one blocklist or allowlist link during a refresh."""

    DOWNLOADED = "downloaded"
    NOT_MODIFIED = "not_modified"
    FAILED = "failed"


@dataclass(frozen=True)
class ListOutcome:
    """The outcome for one list: ``status`` is a :class:`ListStatus`; ``reason`` is set when it failed.

    ``entries`` is the number of values the list holds after the refresh (its previous content when it failed),
    ``skipped`` how many lines of a downloaded body could not be read (each logged).
    """

    name: str
    origin: str
    kind: str
    status: str
    entries: int = 0
    skipped: int = 0
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True unless the download failed."""
        return self.status != ListStatus.FAILED


@dataclass(frozen=True)
class RefreshReport:
    """What one ``refresh_decisions`` did.

    ``new``: decisions added or extended from the stream's ``new`` part; ``deleted``: CAPI decisions removed by its
    ``deleted`` part; ``lists``: one :class:`ListOutcome` per blocklist/allowlist, keyed by origin
    (``lists:<name>``, ``allowlist:<name>``); ``skipped``: stream items and list lines that could not be used, with
    ``skipped_reasons`` counting them by reason; ``removed_lists``: lists no longer offered by CAPI, dropped.
    ``seconds`` is the whole refresh; ``timings`` splits it: ``pull`` (the stream request, the client's parsing
    included), ``lists`` (downloads and parsing), ``apply``, ``index`` (building the new index), ``commit`` (the store).
    ``report["new"]`` and ``report["deleted"]`` work like the PHP engine's array.
    """

    new: int = 0
    deleted: int = 0
    startup: bool = False
    lists: dict[str, ListOutcome] = field(default_factory=dict)
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    removed_lists: tuple[str, ...] = ()
    decisions: int = 0
    version: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key in ("new", "deleted", "startup", "lists", "skipped", "decisions"):
            return getattr(self, key)
        raise KeyError(key)

    @property
    def failed_lists(self) -> dict[str, ListOutcome]:
        """The lists whose download failed this time (their previous content is still enforced)."""
        return {k: v for k, v in self.lists.items() if not v.ok}
