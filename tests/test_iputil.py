"""The shared IP canonicaliser agrees with the standard library's ``ipaddress`` on every address and range."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cscapi.iputil import canonical_address, canonical_range, parse_range


def _reference_address(text: str) -> str:
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@given(st.ip_addresses())
def test_address_matches_ipaddress(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert canonical_address(str(ip)) == _reference_address(str(ip))
    if ip.version == 6:
        assert canonical_address(ip.exploded.upper()) == _reference_address(str(ip))


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32))
def test_ipv4_range_matches_ipaddress(ip: ipaddress.IPv4Address, prefix: int) -> None:
    text = f"{ip}/{prefix}"
    assert canonical_range(text) == str(ipaddress.ip_network(text, strict=False))


@given(st.ip_addresses(v=6), st.integers(min_value=0, max_value=128))
def test_ipv6_range_matches_ipaddress(ip: ipaddress.IPv6Address, prefix: int) -> None:
    text = f"{ip}/{prefix}"
    expected = ipaddress.ip_network(text, strict=False)
    if ip.ipv4_mapped is not None and prefix >= 96:
        mapped = ipaddress.ip_network(f"{ip.ipv4_mapped}/{prefix - 96}", strict=False)
        assert canonical_range(text) == str(mapped)
    else:
        assert canonical_range(text) == str(expected)


def test_ipv4_mapped_forms_are_one_address() -> None:
    assert canonical_address("::ffff:1.2.3.4") == "1.2.3.4"
    assert canonical_address("0:0:0:0:0:ffff:0102:0304") == "1.2.3.4"
    assert canonical_address("2001:0DB8:0000::0001") == "2001:db8::1"
    assert canonical_range("::ffff:1.2.3.0/120") == "1.2.3.0/24"
    assert parse_range("10.1.2.3/8") == (32, 10 << 24, 8)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " 1.2.3.4",
        "1.2.3",
        "01.2.3.4",
        "256.1.1.1",
        "1.2.3.4/33",
        "::1/129",
        "1.2.3.4/",
        "x/8",
        "fe80::1%eth0",
        "10.0.0.0/\u0668",
        "10.0.0.0/\uff18",
    ],
)
def test_garbage_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        if "/" in bad:
            canonical_range(bad)
        else:
            canonical_address(bad)
