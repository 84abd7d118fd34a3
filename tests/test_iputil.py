"""The shared IP canonicaliser agrees with the standard library's ``ipaddress`` on every address and range."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cscapi.iputil import canonical_address, canonical_range, parse_range, range_too_wide


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


# ---- ranges too wide to act on (issue 9, #8) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["0.0.0.0/0", "::/0", "::ffff:0.0.0.0/96", "::ffff:0.0.0.0/100", "128.0.0.0/1", "0.0.0.0/3", "11.0.0.0/7",
     "2000::/3", "2a00::/11", "::/1",
     "::/8", "::ffff:0:0/95"],  # IPv6 ranges covering ::ffff:0:0/96 cover all of IPv4 in the index
)  # fmt: skip
def test_absurdly_wide_ranges_are_refused(text: str) -> None:
    reason = range_too_wide(*parse_range(text))
    assert reason is not None and "MIN_PREFIX_V" in reason


@pytest.mark.parametrize(
    "text",
    # real-list ranges: a /8, an IPv6 RIR block, and bogons wider than the minimum where no traffic comes from
    ["10.0.0.0/8", "1.2.3.0/24", "192.0.2.1/32", "2a00::/12", "2001:db8::/32", "224.0.0.0/3", "240.0.0.0/4",
     "fc00::/7", "ff00::/8", "4000::/3", "8000::/1", "::/96", "::ffff:1.2.3.0/120"],
)  # fmt: skip
def test_real_list_ranges_pass(text: str) -> None:
    assert range_too_wide(*parse_range(text)) is None


def test_the_minimums_are_read_at_each_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cscapi.iputil.MIN_PREFIX_V4", 16)
    assert range_too_wide(*parse_range("10.0.0.0/8")) is not None
    monkeypatch.setattr("cscapi.iputil.MIN_PREFIX_V4", 0)
    assert range_too_wide(*parse_range("0.0.0.0/0")) is None
