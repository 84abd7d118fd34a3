"""The decision state every worker shares, and its compact serialised form.

The state is the source of truth (what the stores hold); the lookup index (``index.py``) is built from it. It is
never mutated once committed: a refresh copies what it changes. The codec writes one zlib-compressed JSON blob per
version, grouped so that 170k decisions load in a few tens of milliseconds.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

from cscapi.remediation._gc import without_gc

__all__ = [
    "FORMAT",
    "AllowlistState",
    "BlocklistState",
    "CapiDecisions",
    "State",
    "StateFormatError",
    "decode_state",
    "encode_state",
]

FORMAT = 1

# CAPI decisions are grouped by (scenario, type, scope), each group mapping a canonical value to its expiry (unix
# seconds); the origin is CAPI for all. A decision's identity is (origin, scenario, type, scope, value). Grouping keeps
# the state compact and lets the codec and the index builder work group by group at C speed.
CapiGroup = tuple[str, str, str]
CapiDecisions = dict[CapiGroup, dict[str, float]]


class StateFormatError(ValueError):
    """A stored blob that this version cannot read (another format, or corrupt): the engine starts afresh."""


@dataclass(frozen=True)
class BlocklistState:
    """One subscribed blocklist as of its last successful download: every value lives until ``expires_at``."""

    name: str
    url: str
    remediation: str
    scope: str
    duration: float
    values: tuple[str, ...] = ()
    pulled_at: float = 0.0
    expires_at: float = 0.0
    last_modified: str | None = None

    @property
    def origin(self) -> str:
        return f"lists:{self.name}"


@dataclass(frozen=True)
class AllowlistState:
    """One console allowlist: canonical value -> expiry (unix seconds; None = never)."""

    name: str
    id: str
    url: str
    entries: dict[str, float | None] = field(default_factory=dict)
    pulled_at: float = 0.0
    last_modified: str | None = None

    @property
    def origin(self) -> str:
        return f"allowlist:{self.name}"


@dataclass(frozen=True)
class State:
    """Everything the engine knows: CAPI decisions, blocklists, allowlists, and when the stream was last pulled."""

    capi: CapiDecisions = field(default_factory=dict)
    blocklists: dict[str, BlocklistState] = field(default_factory=dict)
    allowlists: dict[str, AllowlistState] = field(default_factory=dict)
    last_pull: float | None = None

    def evolve(self, **changes: Any) -> State:
        return replace(self, **changes)

    def count(self) -> int:
        """Decisions held (CAPI + every list's values + allowlist entries)."""
        return (
            sum(len(g) for g in self.capi.values())
            + sum(len(b.values) for b in self.blocklists.values())
            + sum(len(a.entries) for a in self.allowlists.values())
        )


@without_gc
def encode_state(state: State) -> bytes:
    """Serialise a state to bytes (JSON grouped by scenario/type/scope, zlib level 1)."""
    doc = {
        "format": FORMAT,
        "last_pull": state.last_pull,
        "capi": [[s, t, sc, list(g), list(g.values())] for (s, t, sc), g in state.capi.items() if g],
        "blocklists": [
            {
                "name": b.name,
                "url": b.url,
                "remediation": b.remediation,
                "scope": b.scope,
                "duration": b.duration,
                "values": list(b.values),
                "pulled_at": b.pulled_at,
                "expires_at": b.expires_at,
                "last_modified": b.last_modified,
            }
            for b in state.blocklists.values()
        ],
        "allowlists": [
            {
                "name": a.name,
                "id": a.id,
                "url": a.url,
                "values": list(a.entries),
                "expiries": list(a.entries.values()),
                "pulled_at": a.pulled_at,
                "last_modified": a.last_modified,
            }
            for a in state.allowlists.values()
        ],
    }
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 1)


@without_gc
def decode_state(blob: bytes) -> State:
    """Read a blob written by :func:`encode_state`; raises :class:`StateFormatError` if it cannot."""
    try:
        doc = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError, TypeError) as exc:
        raise StateFormatError(f"unreadable decision state ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateFormatError("decision state written in another format")
    try:
        capi: CapiDecisions = {}
        for scenario, type_, scope, values, expiries in doc["capi"]:
            if len(values) != len(expiries):
                raise ValueError("values and expiries differ in length")
            capi[(scenario, type_, scope)] = dict(zip(values, expiries))
        blocklists = {
            b["name"]: BlocklistState(
                name=b["name"],
                url=b["url"],
                remediation=b["remediation"],
                scope=b["scope"],
                duration=float(b["duration"]),
                values=tuple(b["values"]),
                pulled_at=float(b["pulled_at"]),
                expires_at=float(b["expires_at"]),
                last_modified=b["last_modified"],
            )
            for b in doc["blocklists"]
        }
        allowlists = {
            a["name"]: AllowlistState(
                name=a["name"],
                id=a["id"],
                url=a["url"],
                entries=dict(zip(a["values"], a["expiries"])),
                pulled_at=float(a["pulled_at"]),
                last_modified=a["last_modified"],
            )
            for a in doc["allowlists"]
        }
        last_pull = doc["last_pull"]
    except (KeyError, TypeError, ValueError) as exc:
        raise StateFormatError(f"corrupt decision state ({exc!r})") from None
    return State(capi=capi, blocklists=blocklists, allowlists=allowlists, last_pull=last_pull)
