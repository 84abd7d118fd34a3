"""The lookup index against a naive reference (``ipaddress``, every decision checked), with Hypothesis.

Random addresses and ranges of any prefix length (IPv4, IPv6, IPv4-mapped), random types, origins and expiries,
queried in random spellings at random times: the index must give the reference's answer every time.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cscapi.errors import InvalidIPError
from cscapi.remediation.index import Policy, build_index
from cscapi.remediation.models import Remediation
from cscapi.remediation.parsing import canonical_value
from cscapi.remediation.state import AllowlistState, BlocklistState, State

NOW = 1_800_000_000.0
TYPES = ["ban", "captcha", "bypass", "mfa"]

# values concentrated in a few small regions so that ranges and addresses overlap often
v4_int = st.one_of(st.integers(0x0A000000, 0x0A0000FF), st.integers(0xC0000200, 0xC00002FF), st.integers(0, 2**32 - 1))
v6_int = st.one_of(
    st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + 0xFFFF), st.integers(0xFFFF << 32, (0xFFFF << 32) + 2**32 - 1)
)


@st.composite
def value(draw: Any) -> str:
    if draw(st.booleans()):
        address = ipaddress.IPv4Address(draw(v4_int))
        prefix = draw(st.one_of(st.just(32), st.integers(0, 32), st.integers(20, 32)))
    else:
        address = ipaddress.IPv6Address(draw(v6_int))  # type: ignore[assignment]
        prefix = draw(st.one_of(st.just(128), st.integers(0, 128), st.integers(90, 128)))
    if prefix == address.max_prefixlen and draw(st.booleans()):
        return str(address) if draw(st.booleans()) else address.exploded
    net = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return f"{address}/{prefix}" if draw(st.booleans()) else str(net)


decisions = st.lists(
    st.tuples(
        value(), st.sampled_from(TYPES), st.sampled_from(["CAPI", "lists:a", "lists:b", "allow"]), st.integers(-50, 500)
    ),
    max_size=25,
)


def to_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    return net


def reference(items: list[tuple[str, str, str, int]], ip: str, policy: Policy, now: float) -> set[tuple[str, str]]:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # type: ignore[assignment]
    live: list[tuple[int, float, str, str]] = []
    for text, type_, origin, ttl in items:
        expiry = NOW + ttl
        if expiry <= now:
            continue
        net = to_network(text)
        hit = address in net if net.version == address.version else False
        if not hit and net.version == 6 and address.version == 4:
            hit = ipaddress.IPv6Address(f"::ffff:{address}") in net
        if not hit:
            continue
        if origin == "allow":
            live.append((-1, expiry, "bypass", "allowlist:allow"))
        else:
            rank, name = policy.resolve(type_)
            live.append((rank, expiry, name, origin))
    if not live:
        return {("bypass", "clean")}
    best_rank = min(x[0] for x in live)
    best_expiry = max(x[1] for x in live if x[0] == best_rank)
    return {(x[2], x[3]) for x in live if x[0] == best_rank and x[1] == best_expiry}


def make_state(items: list[tuple[str, str, str, int]]) -> State:
    capi: dict[tuple[str, str, str], dict[str, float]] = {}
    lists: dict[str, list[str]] = {}
    list_types: dict[str, str] = {}
    allow: dict[str, float | None] = {}
    for i, (text, type_, origin, ttl) in enumerate(items):
        canon = canonical_value(text)
        if origin == "CAPI":
            capi[(f"s/{i}", type_, "range" if "/" in canon else "ip")] = {canon: NOW + ttl}
        elif origin == "allow":
            allow[canon] = max(allow.get(canon) or 0, NOW + ttl)
        else:
            lists.setdefault(origin, []).append(canon)
            list_types[origin] = type_
    # a list has one type and one expiry: give each list's items the same, and the reference the same
    for j, item in enumerate(items):
        if item[2].startswith("lists:"):
            items[j] = (item[0], list_types[item[2]], item[2], 100 if item[2] == "lists:a" else 400)
    blocklists = {
        name: BlocklistState(
            name[6:],
            "u",
            list_types[name],
            "ip",
            1,
            tuple(dict.fromkeys(vals)),
            NOW,
            NOW + (100 if name == "lists:a" else 400),
        )
        for name, vals in lists.items()
    }
    allowlists = {"allow": AllowlistState("allow", "id", "u", allow)} if allow else {}
    return State(capi=capi, blocklists=blocklists, allowlists=allowlists)


def spellings(ip: str) -> list[str]:
    address = ipaddress.ip_address(ip)
    out = [str(address)]
    if address.version == 4:
        out.append(f"::ffff:{address}")
    else:
        out += [address.exploded, address.exploded.upper()]
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=decisions,
    queries=st.lists(
        st.one_of(
            v4_int.map(lambda n: str(ipaddress.IPv4Address(n))), v6_int.map(lambda n: str(ipaddress.IPv6Address(n)))
        ),
        min_size=1,
        max_size=15,
    ),
    level=st.sampled_from(["normal_bouncing", "flex_bouncing", "bouncing_disabled"]),
    elapsed=st.sampled_from([0, 99, 150, 450]),
)
def test_index_matches_the_reference(
    items: list[tuple[str, str, str, int]], queries: list[str], level: str, elapsed: int
) -> None:
    policy = Policy(bouncing_level=level)
    state = make_state(items)
    index = build_index(state, policy, "v", NOW)
    now = NOW + elapsed
    # query the addresses of the decisions themselves (edges of ranges too), plus random ones
    probes = list(queries)
    for text, *_ in items:
        net = to_network(text)
        probes += [str(net.network_address), str(net.broadcast_address)]
        if int(net.broadcast_address) + 1 <= (2**32 - 1 if net.version == 4 else 2**128 - 1):
            probes.append(
                str(
                    ipaddress.ip_address(int(net.broadcast_address) + 1)
                    if net.version == 4
                    else ipaddress.IPv6Address(int(net.broadcast_address) + 1)
                )
            )
    for ip in probes:
        expected = reference(items, ip, policy, now)
        for spelling in spellings(ip):
            got = index.lookup(spelling, now)
            pair = ("bypass", "clean") if got is None else (got.remediation, got.origin)
            assert pair in expected, (spelling, pair, expected, items)


def test_policy_caps_and_fallback() -> None:
    assert Policy().resolve("ban") == (0, "ban")
    assert Policy().resolve("unknown") == (2, "bypass")
    assert Policy(bouncing_level="flex_bouncing").resolve("ban") == (1, "captcha")
    assert Policy(bouncing_level="bouncing_disabled").resolve("captcha") == (2, "bypass")
    assert Policy(("ban", "mfa", "captcha"), fallback_remediation="mfa").resolve("x") == (1, "mfa")


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4\n", "1.2.3.4"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("2001:0DB8:0:0::1", "2001:db8::1"),
        ("1.2.3.4/24", "1.2.3.0/24"),
        ("1.2.3.4/32", "1.2.3.4"),
        ("::ffff:1.2.3.0/120", "1.2.3.0/24"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        ("2001:db8::1/128", "2001:db8::1"),
        ("2001:db8::1/0", "::/0"),
    ],
)
def test_canonical_values(raw: str, canonical: str) -> None:
    assert canonical_value(raw) == canonical


@pytest.mark.parametrize(
    "raw", ["", "x", "1.2.3.4/33", "1.2.3.4/-1", "1.2.3.4/", "::/129", "1.2.3.4/08x", None, 5, "a" * 200]
)
def test_bad_values_are_refused(raw: Any) -> None:
    with pytest.raises(ValueError):
        canonical_value(raw)


def test_allowlist_entries_without_expiry_live_forever() -> None:
    state = State(allowlists={"a": AllowlistState("a", "id", "u", {"1.2.3.4": None})})
    index = build_index(state, Policy(), "v", NOW)
    assert index.lookup("1.2.3.4", 1e300) == Remediation("bypass", "allowlist:a")


def test_lookup_slow_refuses_non_addresses() -> None:
    index = build_index(State(), Policy(), "v", NOW)
    for bad in ("", "1.2.3.4 ", "::ffff:1.2.3.4.5", object()):
        with pytest.raises(InvalidIPError):
            index.lookup_slow(bad)
