"""The in-process lookup index: from an IP string to the live remediation, with no I/O and almost no allocation.

Layout (built once per state version, then only read but for the memo of ``fast``; a refresh builds a new one and
swaps one reference):

* entries: a flat tuple ``(expires_at, Remediation, expires_at, Remediation, ...)`` sorted best first (allowlists,
  then ``ordered_remediations``, then the longest-lived); the lookup returns the first one alive at lookup time.
  Most addresses have one decision, so most entries are a single pair, often shared (a blocklist's values all
  point at one tuple).
* ``exact``: canonical address string -> entries. An address's entries already include every range covering it, so
  a hit is one dictionary lookup on the raw string the caller passed.
* ranges: the address space is cut into elementary intervals at every range boundary (each interval carries the
  entries of all the ranges covering it). To keep a miss cache-friendly, intervals are grouped in buckets keyed by
  the first 16 bits (IPv4) or 32 bits (IPv6) of the packed address: a miss costs one ``inet_pton``, one small dict
  lookup and, inside a bucket, a ``bisect`` over a few packed starts (bytes compare like the integers). Ranges wider
  than a bucket live in a separate, short "wide" interval array. No prefix-length loop, whatever the prefixes.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import UserString
from collections.abc import Sequence
from functools import partial
from itertools import repeat
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any

from cscapi.errors import ConfigurationError, InvalidIPError
from cscapi.gcpause import without_gc
from cscapi.remediation._chunks import CHUNK, slices, yield_gil
from cscapi.remediation.models import Remediation
from cscapi.remediation.parsing import MAPPED_PREFIX, parse_range
from cscapi.remediation.state import State, group_origin

__all__ = [
    "BOUNCING_LEVELS", "HORIZON", "MEMO_ENTRIES", "MEMO_RESTART", "Entries", "Index", "Policy", "build_index",
    "empty_index", "first_live", "invalid_ip",
]  # fmt: skip

Entries = tuple[Any, ...]
"""A flat ``(expires_at, Remediation, ...)`` tuple, best first."""
_Bucket = tuple[list[bytes], list[Entries | None]]

BOUNCING_LEVELS = ("normal_bouncing", "flex_bouncing", "bouncing_disabled")
ALLOW_RANK = -1
_MAPPED_INT = 0xFFFF << 32
_V4_BUCKET_BYTES = 2
HORIZON = 600.0
"""Seconds during which the ``fast`` map of a new index is valid (see ``Index.with_horizon``)."""
MEMO_ENTRIES = 65_536
"""Answers of the slow path (range hits and misses, a ``::ffff:`` query's under its IPv4 tail) a ``fast`` map memoises,
at most (the engine's ``lookup_memo``): a repeated client is then one probe. Bounds the memory a flood of unique
addresses can take (4-6 MB of strings, plus the growth of the map's table); the map and its memo are derived again at
each new index, at each horizon, and once full after ``MEMO_RESTART`` seconds, so the memo starts over."""
MEMO_RESTART = 60.0
"""Seconds after which a full memo starts over (with a fresh ``fast`` map) at the next slow-path lookup."""
_V6_BUCKET_BYTES = 4


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
        "decisions", "exact", "fast", "horizon", "last_pull", "memo_limit", "ranges", "v4_buckets", "v4_wide",
        "v6_buckets", "v6_exact", "v6_wide", "version",
    )  # fmt: skip

    def __init__(
        self,
        exact: dict[str, Entries],
        v4: tuple[dict[bytes, _Bucket], _Bucket],
        v6: tuple[dict[bytes, _Bucket], _Bucket],
        version: str | None,
        decisions: int,
        ranges: int,
        last_pull: float | None = None,
        v6_exact: dict[bytes, Entries] | None = None,
    ) -> None:
        self.exact = exact
        self.v6_exact = v6_exact if v6_exact is not None else {}
        self.v4_buckets, self.v4_wide = v4
        starts, values = self.v4_wide
        if starts and starts[0] != bytes(4):  # the wide intervals start at 0.0.0.0: a bisect never lands before them
            self.v4_wide = ([bytes(4), *starts], [None, *values])
        self.v6_buckets, self.v6_wide = v6
        self.version = version
        self.decisions = decisions
        self.ranges = ranges
        self.last_pull = last_pull
        # ``fast``: the same keys as ``exact``; the value is the bare Remediation when its best decision outlives
        # ``horizon`` (then, before the horizon, nothing needs checking), else the entries. Set by with_horizon.
        # Its one mutable part: the engine memoises slow-path answers in it while it holds fewer than ``memo_limit``
        # keys (none while ``fast`` is ``exact``). A memoised key is in ``fast`` but not in ``exact``.
        self.fast: dict[str, Remediation | Entries] = exact  # type: ignore[assignment]
        self.horizon = -math.inf
        self.memo_limit = 0

    def with_horizon(self, now: float, span: float = HORIZON, memo: int = MEMO_ENTRIES) -> Index:
        """A copy whose ``fast`` map answers without reading expiries until ``now + span`` (shares everything else).

        Saves two memory reads per hit (the entries tuple and its float). The engine derives one in a background
        thread right after installing a new index and again when the horizon passes;
        until then lookups read the full entries: the same answers, a little slower. ``memo``: how many slow-path
        answers the engine may memoise in the copy's ``fast`` map (0: none).
        """
        horizon = now + span
        twin = Index.__new__(Index)
        for name in Index.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.fast = {key: (e[1] if e[0] > horizon else e) for key, e in self.exact.items()}
        twin.horizon = horizon
        twin.memo_limit = len(twin.fast) + memo if memo > 0 else 0
        return twin

    def lookup_slow(self, ip: Any) -> Entries | None:
        """The entries for an IP whose raw string is not an exact key: canonicalise it, then search the ranges.

        Raises :class:`InvalidIPError` if ``ip`` is not an IPv4/IPv6 address (string or ``ipaddress`` object).
        """
        if type(ip) is not str:
            # a str subclass, a UserString, or an ipaddress.IPv4Address / IPv6Address (duck-typed: no ipaddress import)
            if not isinstance(ip, (str, UserString)) and not (hasattr(ip, "packed") and hasattr(ip, "max_prefixlen")):
                raise InvalidIPError(f"not an IP address: a {type(ip).__name__} was given", field="ip")
            ip = str(ip)
            entries = self.exact.get(ip)
            if entries is not None:
                return entries
        if ":" not in ip:
            try:
                packed = inet_pton(AF_INET, ip)
            except (OSError, ValueError):
                raise invalid_ip(ip) from None
            bucket = self.v4_buckets.get(packed[:2])
            if bucket is None:
                bucket = self.v4_wide
                if not bucket[0]:
                    return None
                i = bisect_right(bucket[0], packed) - 1
                return bucket[1][i] if i >= 0 else None
            return bucket[1][bisect_right(bucket[0], packed) - 1]
        if ip[0] == ":" and ip[:7] == "::ffff:":  # the usual IPv4-mapped spelling: probe its IPv4 tail first
            tail = ip[7:]
            if ":" not in tail:
                entries = self.exact.get(tail)
                if entries is not None:
                    return entries
        try:
            packed = inet_pton(AF_INET6, ip)
        except (OSError, ValueError):
            raise invalid_ip(ip) from None
        if packed[:12] == MAPPED_PREFIX:
            packed = packed[12:]
            entries = self.exact.get(inet_ntop(AF_INET, packed))
            if entries is None:
                entries = _in_ranges(self.v4_buckets, self.v4_wide, packed, 2)
            return entries
        # No memo of answers here: probing one cost unique IPv6 misses 8-10% and gained nothing on the hot mix.
        entries = self.v6_exact.get(packed)  # any spelling of an IPv6 address: its packed form is the key
        if entries is not None:
            return entries
        bucket = self.v6_buckets.get(packed[:4])
        if bucket is None:
            bucket = self.v6_wide
            if not bucket[0]:
                return None
            i = bisect_right(bucket[0], packed) - 1
            return bucket[1][i] if i >= 0 else None
        return bucket[1][bisect_right(bucket[0], packed) - 1]

    def lookup(self, ip: Any, now: float) -> Remediation | None:
        """The live remediation for ``ip`` at ``now`` (None if nothing applies); the engine inlines this."""
        entries = self.exact.get(ip) if type(ip) is str else None
        if entries is None:
            entries = self.lookup_slow(ip)
            if entries is None:
                return None
        return first_live(entries, now)

    def __len__(self) -> int:
        return self.decisions

    def __repr__(self) -> str:
        return f"<Index version={self.version!r} decisions={self.decisions} ranges={self.ranges}>"


def first_live(entries: Entries, now: float) -> Remediation | None:
    """The first remediation of ``entries`` still alive at ``now``."""
    for i in range(0, len(entries), 2):
        if entries[i] > now:
            return entries[i + 1]  # type: ignore[no-any-return]
    return None


def _in_ranges(buckets: dict[bytes, _Bucket], wide: _Bucket, packed: bytes, width: int) -> Entries | None:
    bucket = buckets.get(packed[:width])
    if bucket is None:
        bucket = wide
        if not bucket[0]:
            return None
        i = bisect_right(bucket[0], packed) - 1
        return bucket[1][i] if i >= 0 else None
    return bucket[1][bisect_right(bucket[0], packed) - 1]


def invalid_ip(ip: str) -> InvalidIPError:
    """The error for a string that is not an IP address (shown shortened)."""
    shown = ip if len(ip) <= 60 else ip[:60] + "..."
    return InvalidIPError(f"not an IP address: {shown!r}", field="ip")


def empty_index(version: str | None = None) -> Index:
    return Index({}, ({}, ([], [])), ({}, ([], [])), version, 0, 0)


class _Ranker:
    """Sorts and merges flat entries: best rank first, then the longest-lived; identical pairs once."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.ranks: dict[Remediation, int] = {}
        self.interned: dict[Entries, Entries] = {}

    def rank(self, rem: Remediation) -> int:
        r = self.ranks.get(rem)
        if r is None:
            r = ALLOW_RANK if rem.origin.startswith("allowlist:") else self.policy.rank[rem.remediation]
            self.ranks[rem] = r
        return r

    def merge(self, flat: Entries) -> Entries:
        pairs = {(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)}
        ordered = sorted(pairs, key=lambda p: (self.rank(p[1]), -p[0]))
        out: Entries = tuple(x for pair in ordered for x in pair)
        return self.interned.setdefault(out, out)


def _segments(
    ranges: list[tuple[int, int, Entries]], bits: int, ranker: _Ranker
) -> tuple[list[int], list[Entries | None]]:
    """Cut the address space at every range boundary; each elementary interval gets the entries of its ranges."""
    by_start: dict[int, list[int]] = {}
    by_stop: dict[int, list[int]] = {}
    top = (1 << bits) - 1
    for rid, (start, end, _) in enumerate(ranges):
        by_start.setdefault(start, []).append(rid)
        if end < top:
            by_stop.setdefault(end + 1, []).append(rid)
    active: dict[int, None] = {}
    starts: list[int] = []
    values: list[Entries | None] = []
    cache: dict[frozenset[int], Entries] = {}
    for point in sorted(by_start.keys() | by_stop.keys()):
        for rid in by_stop.get(point, ()):
            active.pop(rid, None)
        for rid in by_start.get(point, ()):
            active[rid] = None
        entries: Entries | None = None
        if active:
            key = frozenset(active)
            entries = cache.get(key)
            if entries is None:
                flat: Entries = ()
                for rid in active:
                    flat += ranges[rid][2]
                entries = cache[key] = ranker.merge(flat) if len(active) > 1 else ranges[rid][2]
        if values and entries is values[-1]:
            continue
        starts.append(point)
        values.append(entries)
    return starts, values


def _bucketise(
    ranges: list[tuple[int, int, Entries]], bits: int, width: int, ranker: _Ranker
) -> tuple[dict[bytes, _Bucket], _Bucket, list[int], list[Entries | None]]:
    """Buckets (for ranges no wider than a bucket) + the wide interval array; also the global intervals."""
    starts, values = _segments(ranges, bits, ranker)
    shift = bits - width * 8
    nbytes = bits // 8
    narrow_keys = sorted({start >> shift for start, end, _ in ranges if (end - start) >> shift == 0})
    wide_ranges = [r for r in ranges if (r[1] - r[0]) >> shift != 0]
    buckets: dict[bytes, _Bucket] = {}
    for key in narrow_keys:
        lo = key << shift
        hi = ((key + 1) << shift) - 1
        i = bisect_right(starts, lo) - 1
        b_starts = [lo.to_bytes(nbytes, "big")]
        b_values: list[Entries | None] = [values[i] if i >= 0 else None]
        j = i + 1
        while j < len(starts) and starts[j] <= hi:
            b_starts.append(starts[j].to_bytes(nbytes, "big"))
            b_values.append(values[j])
            j += 1
        buckets[key.to_bytes(width, "big")] = (b_starts, b_values)
    w_starts, w_values = _segments(wide_ranges, bits, ranker) if wide_ranges else ([], [])
    wide: _Bucket = ([s.to_bytes(nbytes, "big") for s in w_starts], w_values)
    return buckets, wide, starts, values


def _present(exact: dict[str, Entries], values: Sequence[str]) -> set[str]:
    """The ``values`` already keys of ``exact`` (a bytecode loop: it lets other threads run, unlike ``keys() &``)."""
    if not exact:
        return set()
    return {v for v in values if v in exact}


def _packed(family: int, values: list[str]) -> list[bytes]:
    """``inet_pton`` of every value, slice by slice (each ``map`` is one C call that holds the GIL)."""
    out: list[bytes] = []
    for part in slices(values):
        out += map(partial(inet_pton, family), part)
    return out


@without_gc
def build_index(state: State, policy: Policy, version: str | None, now: float) -> Index:
    """Build the lookup index of ``state`` (decisions already expired at ``now`` are left out)."""
    ranker = _Ranker(policy)
    remediations: dict[tuple[str, str], Remediation] = {}

    def remediation(name: str, origin: str) -> Remediation:
        found = remediations.get((name, origin))
        if found is None:
            found = remediations[(name, origin)] = Remediation(name, origin)
        return found

    exact: dict[str, Entries] = {}
    multi: set[str] = set()
    setdefault = exact.setdefault

    def add_one(value: str, pair: Entries) -> None:
        found = setdefault(value, pair)
        if found is not pair:
            exact[value] = found + pair
            multi.add(value)

    # CAPI decisions, group by group (one type each) at C speed; values already present are merged one by one.
    count = 0
    for (scenario, type_, _scope), group in state.capi.items():
        if not group:
            continue
        rem = remediation(policy.resolve(type_)[1], group_origin(scenario))
        if min(group.values()) > now:
            values: Sequence[str] = list(group)
            expiries: Sequence[float] = list(group.values())
        else:
            values = [v for v, e in group.items() if e > now]
            expiries = [e for e in group.values() if e > now]
        clash = _present(exact, values)
        if clash:
            for value, expiry in zip(values, expiries):
                if value in clash:
                    add_one(value, (expiry, rem))
                else:
                    exact[value] = (expiry, rem)
        else:
            for lo in range(0, len(values), CHUNK):
                yield_gil()
                exact.update(zip(values[lo : lo + CHUNK], zip(expiries[lo : lo + CHUNK], repeat(rem))))
        count += len(values)
    # Blocklists: every value of a list shares one pair; values already present are merged one by one.
    for bl in state.blocklists.values():
        if bl.expires_at <= now:
            continue
        pair = (bl.expires_at, remediation(policy.resolve(bl.remediation)[1], bl.origin))
        clash = _present(exact, bl.values)
        for value in clash:
            add_one(value, pair)
        fresh = [v for v in bl.values if v not in clash] if clash else bl.values
        for part in slices(fresh):
            exact.update(zip(part, repeat(pair)))
        count += len(bl.values)
    for al in state.allowlists.values():
        rem = remediation("bypass", al.origin)
        forever = (math.inf, rem)
        for value, until in al.entries.items():
            if until is not None and until <= now:
                continue
            add_one(value, forever if until is None else (until, rem))
            count += 1
    for value in multi:
        exact[value] = ranker.merge(exact[value])

    ranges4: list[tuple[int, int, Entries]] = []
    ranges6: list[tuple[int, int, Entries]] = []
    for value in [v for v in exact if "/" in v]:
        entries = exact.pop(value)
        bits, network, prefix = parse_range(value)
        end = network | ((1 << (bits - prefix)) - 1)
        if bits == 32:
            ranges4.append((network, end, entries))
        else:
            ranges6.append((network, end, entries))
            if prefix <= 96 and _MAPPED_INT >> (128 - prefix) == network >> (128 - prefix):
                ranges4.append((0, (1 << 32) - 1, entries))  # an IPv6 range covering all of ::ffff:0:0/96
    v4_buckets, v4_wide, _, _ = _bucketise(ranges4, 32, _V4_BUCKET_BYTES, ranker)
    v6_buckets, v6_wide, _, _ = _bucketise(ranges6, 128, _V6_BUCKET_BYTES, ranker)

    # An address's entries include the ranges covering it, so that a hit needs no range search. Only addresses
    # whose bucket exists (or all, when wide ranges exist) can be covered: filter them with C-speed maps first.
    merge = ranker.merge
    six = [v for v in exact if ":" in v]
    six_packed = _packed(AF_INET6, six)
    if ranges6:
        for value, packed in zip(six, six_packed):
            covering = _in_ranges(v6_buckets, v6_wide, packed, _V6_BUCKET_BYTES)
            if covering is not None:
                exact[value] = merge(exact[value] + covering)
    v6_exact: dict[bytes, Entries] = {}
    for lo in range(0, len(six), CHUNK):
        yield_gil()
        v6_exact.update(zip(six_packed[lo : lo + CHUNK], [exact[v] for v in six[lo : lo + CHUNK]]))
    if ranges4:
        four = [v for v in exact if ":" not in v]
        four_packed = _packed(AF_INET, four)
        if v4_wide[0]:
            candidates: Sequence[int] = range(len(four))
        else:
            candidates = [i for i, packed in enumerate(four_packed) if packed[:2] in v4_buckets]
        for i in candidates:
            covering = _in_ranges(v4_buckets, v4_wide, four_packed[i], _V4_BUCKET_BYTES)
            if covering is not None:
                exact[four[i]] = merge(exact[four[i]] + covering)
    return Index(
        exact,
        (v4_buckets, v4_wide),
        (v6_buckets, v6_wide),
        version,
        count,
        len(ranges4) + len(ranges6),
        state.last_pull,
        v6_exact,
    )
