"""The in-process lookup index: from an IP string to the live remediation, with no I/O and almost no allocation.

Layout (built once per state version, then only read; a refresh builds a new one and swaps one reference):

* ``exact``: canonical address string -> entries. An address's entries already include every range covering it, so
  a hit answers in one dictionary lookup on the raw string the caller passed.
* ``v4_starts`` / ``v6_starts``: sorted starts (packed big-endian bytes, which compare like the integers) of the
  elementary intervals that the ranges cut the address space into; ``v4_values`` / ``v6_values`` hold each
  interval's entries (or None). A miss costs one ``inet_pton`` and one ``bisect``, whatever the prefix lengths.
* entries: a tuple of ``(expires_at, Remediation)`` sorted best first (allowlists, then ``ordered_remediations``,
  then the longest-lived); the lookup returns the first one still alive at lookup time.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any

from cscapi.errors import ConfigurationError, InvalidIPError
from cscapi.remediation.models import Remediation
from cscapi.remediation.parsing import MAPPED_PREFIX, parse_range
from cscapi.remediation.state import State

__all__ = ["BOUNCING_LEVELS", "Entries", "Index", "Policy", "build_index"]

Entries = tuple[tuple[float, Remediation], ...]
_Item = tuple[int, float, Remediation]  # (rank, expires_at, remediation) before finalisation

BOUNCING_LEVELS = ("normal_bouncing", "flex_bouncing", "bouncing_disabled")
_ALLOW_RANK = -1
_MAPPED_INT = 0xFFFF << 32
_V4_MAX = (1 << 32) - 1


class Policy:
    """How decision types become remediations: priority, fallback for unknown types, and the bouncing level cap."""

    def __init__(
        self,
        ordered_remediations: Sequence[str] = ("ban", "captcha", "bypass"),
        fallback_remediation: str = "bypass",
        bouncing_level: str = "normal_bouncing",
    ) -> None:
        if isinstance(ordered_remediations, str) or not all(isinstance(r, str) and r for r in ordered_remediations):
            raise ConfigurationError("ordered_remediations must be a sequence of non-empty strings")
        ordered = [r for r in dict.fromkeys(ordered_remediations) if r != "bypass"] + ["bypass"]
        if fallback_remediation not in ordered:
            raise ConfigurationError(
                f"fallback_remediation {fallback_remediation!r} is not one of ordered_remediations {ordered}"
            )
        if bouncing_level not in BOUNCING_LEVELS:
            levels = ", ".join(BOUNCING_LEVELS)
            raise ConfigurationError(f"bouncing_level must be one of {levels}, not {bouncing_level!r}")
        if bouncing_level == "flex_bouncing" and "captcha" not in ordered:
            raise ConfigurationError("bouncing_level 'flex_bouncing' caps at 'captcha': add it to ordered_remediations")
        self.ordered = tuple(ordered)
        self.fallback = fallback_remediation
        self.bouncing_level = bouncing_level
        self.rank = {r: i for i, r in enumerate(self.ordered)}
        cap = {
            "normal_bouncing": 0,
            "flex_bouncing": self.rank.get("captcha", 0),
            "bouncing_disabled": len(ordered) - 1,
        }
        self._cap_rank = cap[bouncing_level]

    def resolve(self, decision_type: str) -> tuple[int, str]:
        """The (rank, remediation) a decision of this type yields: unknown types fall back, then the level caps."""
        rank = self.rank.get(decision_type)
        if rank is None:
            rank = self.rank[self.fallback]
        rank = max(rank, self._cap_rank)
        return rank, self.ordered[rank]

    def __repr__(self) -> str:
        return f"Policy(ordered={self.ordered!r}, fallback={self.fallback!r}, bouncing_level={self.bouncing_level!r})"


class Index:
    """One immutable snapshot of the decisions, for lookups. ``version`` is the store version it was built from."""

    __slots__ = (
        "decisions", "exact", "last_pull", "ranges", "v4_starts", "v4_values", "v6_starts", "v6_values", "version",
    )  # fmt: skip

    def __init__(
        self,
        exact: dict[str, Entries],
        v4: tuple[list[bytes], list[Entries | None]],
        v6: tuple[list[bytes], list[Entries | None]],
        version: str | None,
        decisions: int,
        ranges: int,
    ) -> None:
        self.exact = exact
        self.v4_starts, self.v4_values = v4
        self.v6_starts, self.v6_values = v6
        self.version = version
        self.decisions = decisions
        self.ranges = ranges
        self.last_pull: float | None = None

    def lookup_slow(self, ip: Any) -> Entries | None:
        """The entries for an IP whose raw string is not an exact key: canonicalise it, then search the ranges.

        Raises :class:`InvalidIPError` if ``ip`` is not an IPv4/IPv6 address (string or ``ipaddress`` object).
        """
        if type(ip) is not str:
            if isinstance(ip, (IPv4Address, IPv6Address, str)):
                ip = str(ip)
            else:
                raise InvalidIPError(f"not an IP address: a {type(ip).__name__} was given", field="ip")
            entries = self.exact.get(ip)
            if entries is not None:
                return entries
        if ":" in ip:
            try:
                packed = inet_pton(AF_INET6, ip)
            except (OSError, ValueError):
                raise _invalid(ip) from None
            if packed[:12] == MAPPED_PREFIX:
                packed = packed[12:]
                entries = self.exact.get(inet_ntop(AF_INET, packed))
                if entries is not None:
                    return entries
                starts = self.v4_starts
                if not starts:
                    return None
                i = bisect_right(starts, packed) - 1
                return self.v4_values[i] if i >= 0 else None
            canonical = inet_ntop(AF_INET6, packed)
            if canonical != ip:
                entries = self.exact.get(canonical)
                if entries is not None:
                    return entries
            starts = self.v6_starts
            if not starts:
                return None
            i = bisect_right(starts, packed) - 1
            return self.v6_values[i] if i >= 0 else None
        try:
            packed = inet_pton(AF_INET, ip)
        except (OSError, ValueError):
            raise _invalid(ip) from None
        starts = self.v4_starts
        if not starts:
            return None
        i = bisect_right(starts, packed) - 1
        return self.v4_values[i] if i >= 0 else None

    def __len__(self) -> int:
        return self.decisions

    def __repr__(self) -> str:
        return f"<Index version={self.version!r} decisions={self.decisions} ranges={self.ranges}>"


def _invalid(ip: str) -> InvalidIPError:
    shown = ip if len(ip) <= 60 else ip[:60] + "..."
    return InvalidIPError(f"not an IP address: {shown!r}", field="ip")


def empty_index(version: str | None = None) -> Index:
    return Index({}, ([], []), ([], []), version, 0, 0)


class _Builder:
    def __init__(self, policy: Policy, now: float) -> None:
        self.policy = policy
        self.now = now
        self.items: dict[str, list[_Item]] = {}
        self.remediations: dict[tuple[str, str], Remediation] = {}
        self.interned: dict[Entries, Entries] = {}
        self.count = 0

    def remediation(self, remediation: str, origin: str) -> Remediation:
        key = (remediation, origin)
        found = self.remediations.get(key)
        if found is None:
            found = self.remediations[key] = Remediation(remediation, origin)
        return found

    def add_many(self, values: Iterable[str], rank: int, expiry: float, rem: Remediation) -> None:
        if expiry <= self.now:
            return
        item = (rank, expiry, rem)
        items = self.items
        n = 0
        for value in values:
            n += 1
            bucket = items.get(value)
            if bucket is None:
                items[value] = [item]
            else:
                bucket.append(item)
        self.count += n

    def finalize(self, items: list[_Item]) -> Entries:
        if len(items) == 1:
            _, expiry, rem = items[0]
            entries: Entries = ((expiry, rem),)
        else:
            items.sort(key=lambda it: (it[0], -it[1]))
            seen: dict[tuple[float, Remediation], None] = {}
            for _, expiry, rem in items:
                seen[(expiry, rem)] = None
            entries = tuple(seen)
        return self.interned.setdefault(entries, entries)


def _segments(
    ranges: list[tuple[int, int, list[_Item]]], width: int, builder: _Builder
) -> tuple[list[bytes], list[Entries | None], list[list[_Item] | None]]:
    """Cut the address space at every range boundary; each elementary interval gets the items of all covering ranges."""
    by_start: dict[int, list[int]] = {}
    by_stop: dict[int, list[int]] = {}
    top = (1 << (width * 8)) - 1
    for rid, (start, end, _) in enumerate(ranges):
        by_start.setdefault(start, []).append(rid)
        if end < top:
            by_stop.setdefault(end + 1, []).append(rid)
    points = sorted(set(by_start) | set(by_stop))
    active: dict[int, None] = {}
    starts: list[bytes] = []
    values: list[Entries | None] = []
    raw: list[list[_Item] | None] = []
    cache: dict[frozenset[int], tuple[Entries, list[_Item]]] = {}
    previous: Entries | None = None
    for point in points:
        for rid in by_stop.get(point, ()):
            active.pop(rid, None)
        for rid in by_start.get(point, ()):
            active[rid] = None
        entries: Entries | None
        items: list[_Item] | None
        if active:
            key = frozenset(active)
            hit = cache.get(key)
            if hit is None:
                merged = [item for rid in active for item in ranges[rid][2]]
                hit = cache[key] = (builder.finalize(list(merged)), merged)
            entries, items = hit
        else:
            entries = items = None
        if starts and entries is previous:
            continue
        starts.append(point.to_bytes(width, "big"))
        values.append(entries)
        raw.append(items)
        previous = entries
    return starts, values, raw


def build_index(state: State, policy: Policy, version: str | None, now: float) -> Index:
    """Build the lookup index of ``state`` (decisions already expired at ``now`` are left out)."""
    b = _Builder(policy, now)
    resolve = policy.resolve
    by_kind: dict[tuple[str, str], list[str]] = {}
    expiries: dict[tuple[str, str], list[float]] = {}
    for (value, _scenario, type_, _scope), expiry in state.capi.items():
        key = (type_, "CAPI")
        bucket = by_kind.get(key)
        if bucket is None:
            bucket = by_kind[key] = []
            expiries[key] = []
        bucket.append(value)
        expiries[key].append(expiry)
    for (type_, origin), values in by_kind.items():
        rank, name = resolve(type_)
        rem = b.remediation(name, origin)
        for value, expiry in zip(values, expiries[(type_, origin)]):
            b.add_many((value,), rank, expiry, rem)
    for bl in state.blocklists.values():
        rank, name = resolve(bl.remediation)
        b.add_many(bl.values, rank, bl.expires_at, b.remediation(name, bl.origin))
    for al in state.allowlists.values():
        rem = b.remediation("bypass", al.origin)
        for value, until in al.entries.items():
            b.add_many((value,), _ALLOW_RANK, math.inf if until is None else until, rem)

    exact_items: dict[str, list[_Item]] = {}
    ranges4: list[tuple[int, int, list[_Item]]] = []
    ranges6: list[tuple[int, int, list[_Item]]] = []
    for value, items in b.items.items():
        if "/" not in value:
            exact_items[value] = items
            continue
        bits, network, prefix = parse_range(value)
        host = bits - prefix
        end = network | ((1 << host) - 1)
        if bits == 32:
            ranges4.append((network, end, items))
        else:
            ranges6.append((network, end, items))
            if prefix <= 96 and _MAPPED_INT >> (128 - prefix) == network >> (128 - prefix):
                ranges4.append((0, _V4_MAX, items))  # an IPv6 range covering all of ::ffff:0:0/96
    v4 = _segments(ranges4, 4, b)
    v6 = _segments(ranges6, 16, b)

    exact: dict[str, Entries] = {}
    finalize = b.finalize
    for value, items in exact_items.items():
        six = ":" in value
        starts, raw = (v6[0], v6[2]) if six else (v4[0], v4[2])
        if starts:
            packed = inet_pton(AF_INET6 if six else AF_INET, value)
            i = bisect_right(starts, packed) - 1
            covering = raw[i] if i >= 0 else None
            if covering:
                items = items + covering
        exact[value] = finalize(items)
    index = Index(exact, (v4[0], v4[1]), (v6[0], v6[1]), version, b.count, len(ranges4) + len(ranges6))
    index.last_pull = state.last_pull
    return index
