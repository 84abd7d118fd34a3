"""Issue 13: the engine's lookup gives exactly the answers of a naive ``ipaddress`` reference, on a large seeded set.

Thousands of decisions (CAPI addresses and overlapping ranges of many prefix lengths, blocklists, an allowlist; IPv4,
IPv6 and ranges over ``::ffff:0:0/96``), queried in many spellings (mapped ``::ffff:``, uppercase, compressed and
expanded IPv6) before and after expiries, through the engine's injectable clock; invalid inputs raise InvalidIPError.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from cscapi.errors import InvalidIPError
from cscapi.remediation import RemediationEngine
from cscapi.remediation.index import Policy, build_index
from cscapi.remediation.parsing import canonical_value
from cscapi.remediation.state import AllowlistState, BlocklistState, State

NOW = 1_800_000_000.0
V4_REGIONS = (0x0A000000, 0xC0000200, 0xCB007100)  # 10.0.0.0, 192.0.2.0, 203.0.113.0: dense, so ranges overlap
V6_REGIONS = (0x20010DB8 << 96, (0x20010DB8 << 96) | (0xABCD << 64))
TYPES = ("ban", "captcha", "bypass", "mfa")


class Clock:
    """A hand-driven clock (unix seconds)."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def random_value(rng: random.Random, wide_v6: bool) -> str:
    """An address or a range (any prefix length, host bits sometimes set), IPv4, IPv6 or IPv4-mapped IPv6."""
    kind = rng.random()
    if kind < 0.55:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
            rng.choice(V4_REGIONS) + rng.randrange(4096) if rng.random() < 0.9 else rng.getrandbits(32)
        )
        prefix = rng.choice((32, 32, 32, rng.randint(0, 32), rng.randint(20, 31)))
    elif kind < 0.9:
        far = rng.getrandbits(128) & ~(0xFFFF << 112) | (0x2A00 << 112)  # anywhere in 2a00::/16: own 32-bit prefix
        near = rng.choice(V6_REGIONS) + rng.getrandbits(rng.choice((8, 16, 40)))
        address = ipaddress.IPv6Address(far if rng.random() < 0.1 else near)
        prefix = rng.choice((128, 128, 128, rng.randint(0, 128), rng.randint(100, 127), rng.randint(32, 64)))
        if not wide_v6:
            prefix = max(prefix, 33)  # no IPv6 range wider than a 32-bit bucket: the index's IPv6 prefilter is on
    else:  # a mapped range or address: must match the IPv4 addresses it covers
        address = ipaddress.IPv6Address((0xFFFF << 32) + rng.choice(V4_REGIONS) + rng.randrange(4096))
        prefix = rng.randint(96, 128)
    if prefix == address.max_prefixlen:
        return str(address)
    return f"{address}/{prefix}"


def to_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network a decision covers, IPv4-mapped IPv6 ranges as IPv4 (as the engine canonicalises them)."""
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    return net


class Reference:
    """The naive answer: every live decision whose network holds the address; allowlists first, then the policy's
    order, then the longest-lived (a tie between equally good decisions may give either)."""

    def __init__(self, items: list[tuple[str, str, str, float]], policy: Policy) -> None:
        self.rows = []
        for text, type_, origin, expiry in items:
            net = to_network(text)
            if origin.startswith("allowlist:"):
                rank, name = -1, "bypass"
            else:
                rank, name = policy.resolve(type_)
            first = int(net.network_address)
            origin = "CAPI" if origin.startswith("CAPI") else origin  # every community scenario's origin is CAPI
            self.rows.append((net.version, first, first + net.num_addresses - 1, expiry, rank, name, origin))

    def covering(self, ip: str) -> list[tuple[int, int, int, float, int, str, str]]:
        """The decisions (expired or not) whose network holds ``ip``."""
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        n, version = int(address), address.version
        mapped = (0xFFFF << 32) + n if version == 4 else -1  # a range over ::ffff:0:0/96 covers IPv4 addresses
        return [
            r for r in self.rows if (r[0] == version and r[1] <= n <= r[2]) or (r[0] == 6 and r[1] <= mapped <= r[2])
        ]

    @staticmethod
    def answers(covering: list[tuple[int, int, int, float, int, str, str]], now: float) -> set[tuple[str, str]]:
        """The acceptable answers at ``now`` among the ``covering`` decisions."""
        live = [row for row in covering if row[3] > now]
        if not live:
            return {("bypass", "clean")}
        best = min((row[4], -row[3]) for row in live)
        return {(row[5], row[6]) for row in live if (row[4], -row[3]) == best}


def make_items(rng: random.Random, n: int, wide_v6: bool) -> list[tuple[str, str, str, float]]:
    """(value, type, origin, expiry): CAPI decisions (own expiries), two blocklists (one type and expiry each), an
    allowlist (some entries forever)."""
    items: list[tuple[str, str, str, float]] = []
    for i in range(n):
        value = random_value(rng, wide_v6)
        which = rng.random()
        if which < 0.7:
            items.append((value, rng.choice(TYPES), f"CAPI-{i % 3}", NOW + rng.choice((50, 200, 400, 3000))))
        elif which < 0.8:
            items.append((value, "ban", "lists:a", NOW + 100))
        elif which < 0.9:
            items.append((value, "captcha", "lists:b", NOW + 400))
        else:
            items.append((value, "bypass", "allowlist:allow", rng.choice((NOW + 300, float("inf")))))
    return items


def make_state(items: list[tuple[str, str, str, float]]) -> State:
    capi: dict[tuple[str, str, str], dict[str, float]] = {}
    lists: dict[str, list[str]] = {}
    allow: dict[str, float | None] = {}
    for text, type_, origin, expiry in items:
        canon = canonical_value(text)
        if origin.startswith("CAPI"):
            group = capi.setdefault((f"scenario/{origin}", type_, "range" if "/" in canon else "ip"), {})
            group[canon] = max(group.get(canon, 0.0), expiry)
        elif origin.startswith("lists:"):
            lists.setdefault(origin, []).append(canon)
        else:
            prev = allow.get(canon, 0.0)  # one entry per value: the longest-lived (None: forever) as the reference
            allow[canon] = None if prev is None or expiry == float("inf") else max(prev, expiry)
    # the reference must hold what the state holds: a repeated CAPI decision of one group keeps its longest expiry
    blocklists = {
        name: BlocklistState(
            name[6:], "u", "ban" if name == "lists:a" else "captcha", "ip", 1, tuple(dict.fromkeys(vals)), NOW,
            NOW + (100 if name == "lists:a" else 400),
        )
        for name, vals in lists.items()
    }  # fmt: skip
    return State(capi=capi, blocklists=blocklists, allowlists={"allow": AllowlistState("allow", "id", "u", allow)})


def probes(rng: random.Random, items: list[tuple[str, str, str, float]], n: int) -> list[str]:
    """Edges of every decision (first, last, one past), members, and random addresses in and out of the regions."""
    out: list[str] = []
    for text, *_ in items:
        net = to_network(text)
        top = 2**net.max_prefixlen - 1
        first, last = int(net.network_address), int(net.broadcast_address)
        for x in (first, last, min(top, last + 1), max(0, first - 1), rng.randint(first, last)):
            out.append(str(ipaddress.ip_address(x) if net.version == 4 else ipaddress.IPv6Address(x)))
            if net.version == 4:  # the IPv6 address ::ffff:XXXX (not mapped: 0:0:0:0:0:0:ffff:XXXX) next to it
                out.append(str(ipaddress.IPv6Address((0xFFFF << 16) | (x & 0xFFFF))))
    for _ in range(n):
        if rng.random() < 0.5:
            out.append(str(ipaddress.IPv4Address(rng.choice(V4_REGIONS) + rng.randrange(4200))))
        else:
            out.append(str(ipaddress.IPv6Address(rng.choice(V6_REGIONS) + rng.getrandbits(rng.choice((8, 16, 40))))))
    return list(dict.fromkeys(out))


def spellings(ip: str) -> list[str]:
    """Ways a caller may write one address: canonical, IPv4-mapped (several forms), expanded and uppercase IPv6."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return [ip, f"::ffff:{ip}", f"::FFFF:{ip}", f"0:0:0:0:0:ffff:{ip}", str(ipaddress.IPv6Address(f"::ffff:{ip}"))]
    out = [ip, address.exploded, address.exploded.upper(), ip.upper()]
    low = int(address) & 0xFFFFFFFF
    if int(address) >> 32 == 0 and low >> 16 == 0xFFFF:  # ::ffff:abcd is 0:..:0:ffff:abcd, not an IPv4-mapped address
        out.append(f"::ffff:{low & 0xFFFF:x}")
    return out


INVALID = [
    "", " ", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.256", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4/32", "::ffff:",
    "::ffff:1.2.3", "::ffff:1.2.3.4 ", "::ffff:01.2.3.4", "::ffff:1.2.3.4/128", "::ffff:1.2.3.4%eth0", "fe80::1%eth0",
    "gggg::1", ":::", "1::2::3", "2001:db8::1/64", "::ffff:10.0.0.1:1", "10.0.0.1\x00",
]  # fmt: skip


@pytest.mark.parametrize(("seed", "wide_v6"), [(1, True), (2, False)])
def test_engine_lookup_equals_the_reference(seed: int, wide_v6: bool) -> None:
    rng = random.Random(seed)
    items = make_items(rng, 3000, wide_v6)
    clock = Clock()
    engine = RemediationEngine(None, "memory://", clock=clock, sync_interval_ms=0)
    try:
        index = build_index(make_state(items), engine.policy, "v", NOW)
        assert index.ranges > 500 and index.decisions > 2500
        assert bool(index.v6_wide[0]) is wide_v6  # IPv6 misses with and without wide intervals to search
        reference = Reference(items, engine.policy)
        queries = probes(rng, items, 2000)
        assert len(queries) > 8000
        covering = {ip: reference.covering(ip) for ip in queries}
        engine._renewing = True  # no background horizon renewal: each pass below runs the path it says
        # without a horizon (every hit reads its expiries), then with one (hits before it answer without reading
        # them, after it through the full entries); before any expiry, after the first ones, after most.
        for installed in (index, index.with_horizon(NOW)):
            engine._index = installed
            for now in (NOW, NOW + 150, NOW + 450, NOW + 5000):
                clock.now = now
                for ip in queries:
                    expected = reference.answers(covering[ip], now)
                    for spelling in spellings(ip):
                        got = engine.get_ip_remediation(spelling)
                        assert (got.remediation, got.origin) in expected, (spelling, now, got, expected)
        for bad in [*INVALID, None, 123, b"10.0.0.1", 1.5]:
            with pytest.raises(InvalidIPError):
                engine.get_ip_remediation(bad)  # type: ignore[arg-type]
    finally:
        engine.close()


def test_local_decisions_win_on_every_lookup_path() -> None:
    """A local ban outranks the index's captcha on every path of the inlined lookup: a hit before the horizon (bare
    answer or full entries), a hit past it or with no horizon, a mapped or expanded spelling, a range hit, a miss; a
    CAPI ban keeps winning over a local captcha until it expires."""
    items = [
        ("10.0.0.1", "captcha", "CAPI", NOW + 3600),  # outlives the horizon: the fast map holds the bare answer
        ("10.0.0.2", "captcha", "CAPI", NOW + 60),  # expires before it: the fast map holds the entries
        ("10.1.0.0/16", "captcha", "CAPI", NOW + 3600),
        ("2001:db8::1", "captcha", "CAPI", NOW + 3600),
        ("10.0.0.3", "ban", "CAPI", NOW + 3600),
    ]
    clock = Clock()
    engine = RemediationEngine(None, "memory://", clock=clock, sync_interval_ms=0)
    try:
        index = build_index(make_state(items), engine.policy, "v", NOW)
        engine._renewing = True  # no background horizon renewal: each pass runs the path it says
        for ip in ("10.0.0.1", "10.0.0.2", "10.1.2.3", "2001:db8::1", "10.9.9.9", "2001:db8::9"):
            engine.add_local_decision(ip, "ban", 10_000)
        engine.add_local_decision("10.0.0.3", "captcha", 10_000)
        queries = [
            "10.0.0.1", "::ffff:10.0.0.1", "10.0.0.2", "::FFFF:10.0.0.2", "10.1.2.3", "::ffff:10.1.2.3",
            "2001:db8::1", "2001:0db8:0:0:0:0:0:1", "10.9.9.9", "2001:db8::9",
        ]  # fmt: skip
        for installed in (index, index.with_horizon(NOW)):
            engine._index = installed
            for now in (NOW, NOW + 120, NOW + 5000):
                clock.now = now
                for ip in queries:
                    got = engine.get_ip_remediation(ip)
                    assert (got.remediation, got.origin) == ("ban", "local"), (ip, now, installed.horizon)
                got = engine.get_ip_remediation("10.0.0.3")
                expected = ("captcha", "local") if now > NOW + 3600 else ("ban", "CAPI")
                assert (got.remediation, got.origin) == expected, (now, installed.horizon, got)
    finally:
        engine.close()
