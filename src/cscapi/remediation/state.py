"""The decision state every worker shares, and its compact serialised form.

The state is the source of truth (what the stores hold); the lookup index (``index.py``) is built from it. It is
never mutated once committed: a refresh copies what it changes. The codec writes one zlib-compressed blob per
version (JSON lines, grouped and sliced) so that 220k decisions load in a few tens of milliseconds without ever holding
the GIL for more than about a millisecond at a time.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

from cscapi.gcpause import without_gc
from cscapi.remediation._chunks import CHUNK, yield_gil

__all__ = [
    "FORMAT",
    "AllowlistState",
    "BlocklistState",
    "CapiDecisions",
    "State",
    "StateFormatError",
    "decode_state",
    "encode_state",
    "group_origin",
    "group_scenario",
]

FORMAT = 2

# CAPI decisions are grouped by (scenario, type, scope), each group mapping a canonical value to its expiry (unix
# seconds); the origin is CAPI for all. A decision's identity is (origin, scenario, type, scope, value). Grouping keeps
# the state compact and lets the codec and the index builder work group by group at C speed.
# A source whose decisions carry other origins (a LAPI: crowdsec, cscli, lists:<name>...) stores the origin in the
# group's scenario part, ``origin + ORIGIN_SEP + scenario`` (group_scenario / group_origin): same format, same codec.
CapiGroup = tuple[str, str, str]
CapiDecisions = dict[CapiGroup, dict[str, float]]
ORIGIN_SEP = "\x1f"
#: Values held by several LAPI decisions of one group: {group: {value: {decision id: expiry}}}; the group's expiry is
#: the longest, and a deletion naming one id leaves the others (id ``-1``: the decision seen first, whose id was not
#: kept). Small (only shared values), so it rides in the codec's header.
LapiDups = dict[CapiGroup, dict[str, dict[int, float]]]


def group_scenario(origin: str, scenario: str) -> str:
    """The group key's scenario part for a decision of ``origin``: the bare scenario for CAPI."""
    return scenario if origin == "CAPI" or not origin else f"{origin}{ORIGIN_SEP}{scenario}"


def group_origin(scenario_part: str) -> str:
    """The origin of a group from its key's scenario part (``CAPI`` unless :func:`group_scenario` put one there)."""
    origin, sep, _scenario = scenario_part.partition(ORIGIN_SEP)
    return origin if sep else "CAPI"


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
    lapi_dups: LapiDups = field(default_factory=dict)

    def evolve(self, **changes: Any) -> State:
        return replace(self, **changes)

    def count(self) -> int:
        """Decisions held (CAPI + every list's values + allowlist entries)."""
        return (
            sum(len(g) for g in self.capi.values())
            + sum(len(b.values) for b in self.blocklists.values())
            + sum(len(a.entries) for a in self.allowlists.values())
        )


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@without_gc
def encode_state(state: State) -> bytes:
    """Serialise a state to bytes: zlib (level 1) over newline-separated JSON, the large arrays in slices.

    The first line holds everything but the values, with the number of slice lines each part takes; every other
    line is one slice (at most ``CHUNK`` values). Encoding and decoding slice by slice keeps each ``json`` call short,
    so a worker thread doing it never holds the GIL for long (an event loop in the same process stays responsive).
    """
    lines: list[str] = []

    def sliced(values: list[Any], expiries: list[Any] | None = None) -> int:
        n = 0
        for lo in range(0, len(values), CHUNK):
            if lo:
                yield_gil()
            chunk = values[lo : lo + CHUNK]
            lines.append(_dump(chunk if expiries is None else [chunk, expiries[lo : lo + CHUNK]]))
            n += 1
        return n

    capi = [[s, t, sc, sliced(list(g), list(g.values()))] for (s, t, sc), g in state.capi.items() if g]
    blocklists = [
        {
            "name": b.name,
            "url": b.url,
            "remediation": b.remediation,
            "scope": b.scope,
            "duration": b.duration,
            "slices": sliced(list(b.values)),
            "pulled_at": b.pulled_at,
            "expires_at": b.expires_at,
            "last_modified": b.last_modified,
        }
        for b in state.blocklists.values()
    ]
    allowlists = [
        {
            "name": a.name,
            "id": a.id,
            "url": a.url,
            "slices": sliced(list(a.entries), list(a.entries.values())),
            "pulled_at": a.pulled_at,
            "last_modified": a.last_modified,
        }
        for a in state.allowlists.values()
    ]
    head = {"format": FORMAT, "last_pull": state.last_pull, "capi": capi, "blocklists": blocklists}
    head["allowlists"] = allowlists
    if state.lapi_dups:  # omitted when empty: the blob stays what older versions read
        head["lapi_dups"] = [  # type: ignore[assignment]  # a JSON header: its entries are of mixed types
            [s, t, sc, [[v, [[i, e] for i, e in ids.items()]] for v, ids in g.items()]]
            for (s, t, sc), g in state.lapi_dups.items()
        ]
    text = "\n".join([_dump(head), *lines])
    yield_gil()
    return zlib.compress(text.encode(), 1)  # zlib releases the GIL while it compresses


@without_gc
def decode_state(blob: bytes) -> State:
    """Read a blob written by :func:`encode_state` (or by the single-document format 1); raises
    :class:`StateFormatError` if it cannot."""
    try:
        lines = zlib.decompress(blob).split(b"\n")
        head = json.loads(lines[0])
    except (zlib.error, ValueError, TypeError) as exc:
        raise StateFormatError(f"unreadable decision state ({exc})") from None
    if not isinstance(head, dict) or head.get("format") not in (FORMAT, 1):
        raise StateFormatError("decision state written in another format")
    try:
        if head["format"] == 1:
            return _decode_v1(head)
        return _decode(head, lines)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StateFormatError(f"corrupt decision state ({exc!r})") from None


def _decode(head: dict[str, Any], lines: list[bytes]) -> State:
    cursor = iter(range(1, len(lines)))

    def take(n: int, pairs: bool) -> tuple[list[Any], list[Any]]:
        values: list[Any] = []
        expiries: list[Any] = []
        for _ in range(n):
            i = next(cursor, None)
            if i is None:
                raise ValueError("fewer slices than the header announces")
            if i > 1:
                yield_gil()
            chunk = json.loads(lines[i])
            if pairs:
                if len(chunk) != 2 or len(chunk[0]) != len(chunk[1]):
                    raise ValueError("values and expiries differ in length")
                values += chunk[0]
                expiries += chunk[1]
            else:
                values += chunk
        return values, expiries

    capi: CapiDecisions = {}
    for scenario, type_, scope, n in head["capi"]:
        values, expiries = take(n, True)
        group: dict[str, float] = {}
        for lo in range(0, len(values), CHUNK):
            group.update(zip(values[lo : lo + CHUNK], expiries[lo : lo + CHUNK]))
        capi[(scenario, type_, scope)] = group
    blocklists = {}
    for b in head["blocklists"]:
        blocklists[b["name"]] = BlocklistState(
            name=b["name"],
            url=b["url"],
            remediation=b["remediation"],
            scope=b["scope"],
            duration=float(b["duration"]),
            values=tuple(take(b["slices"], False)[0]),
            pulled_at=float(b["pulled_at"]),
            expires_at=float(b["expires_at"]),
            last_modified=b["last_modified"],
        )
    allowlists = {}
    for a in head["allowlists"]:
        values, expiries = take(a["slices"], True)
        allowlists[a["name"]] = AllowlistState(
            name=a["name"],
            id=a["id"],
            url=a["url"],
            entries=dict(zip(values, expiries)),
            pulled_at=float(a["pulled_at"]),
            last_modified=a["last_modified"],
        )
    if next(cursor, None) is not None:
        raise ValueError("more slices than the header announces")
    dups: LapiDups = {
        (s, t, sc): {v: {int(i): float(e) for i, e in ids} for v, ids in g} for s, t, sc, g in head.get("lapi_dups", ())
    }
    return State(capi=capi, blocklists=blocklists, allowlists=allowlists, last_pull=head["last_pull"], lapi_dups=dups)


def _decode_v1(doc: dict[str, Any]) -> State:
    """Format 1 (one JSON document), as written before the sliced format: still read, never written."""
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
    return State(capi=capi, blocklists=blocklists, allowlists=allowlists, last_pull=doc["last_pull"])
