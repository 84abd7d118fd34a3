"""Canonical IP addresses and ranges, fast: one implementation for signals, the stream parser and the engine.

IPv4 stays dotted-quad, IPv6 is lower-case and compressed (``inet_ntop``), an IPv4-mapped IPv6 address or range
(``::ffff:1.2.3.4``, ``::ffff:1.2.3.0/120``) becomes IPv4, and a range keeps only its network bits. Built on
``socket.inet_pton`` (several times faster than ``ipaddress``), it raises ``ValueError`` on anything else.

:func:`range_too_wide` is the sanity check of every range that arrives from CAPI or a list (a ban or an allow of
``0.0.0.0/0`` would block or let through the whole Internet): ranges wider than :data:`MIN_PREFIX_V4` /
:data:`MIN_PREFIX_V6` are refused unless they lie in address space that carries no Internet traffic.
"""

from __future__ import annotations

import ipaddress
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

__all__ = [
    "MAPPED_PREFIX",
    "MIN_PREFIX_V4",
    "MIN_PREFIX_V6",
    "canonical_address",
    "canonical_range",
    "format_range",
    "is_loopback_host",
    "parse_range",
    "range_too_wide",
]

MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

MIN_PREFIX_V4 = 8
"""Shortest IPv4 prefix accepted in a decision or a list (a /8 is what IANA gives a whole RIR). Read at each check:
set ``cscapi.iputil.MIN_PREFIX_V4`` to change it (0 turns the check off)."""
MIN_PREFIX_V6 = 12
"""Shortest IPv6 prefix accepted in a decision or a list (a /12 is what IANA gives a whole RIR). Read at each check."""

# Wider ranges are accepted only where no Internet traffic comes from, so that bogon lists never trip the check:
# IPv4 224.0.0.0/3 (multicast and reserved, e.g. FireHOL level1) and IPv6 outside 2000::/3 (global unicast).
_V4_QUIET = (0xE0000000, 3)
_V6_GLOBAL = (0x2 << 124, 3)
_V6_MAPPED = (0xFFFF << 32, 96)  # ::ffff:0:0/96: an IPv6 range covering it covers all of IPv4 (the index maps them)


def canonical_address(text: str) -> str:
    """The canonical text of one IP address; ``ValueError`` if ``text`` is not one (no surrounding spaces allowed)."""
    try:
        if ":" in text:
            packed = inet_pton(AF_INET6, text)
            if packed[:12] == MAPPED_PREFIX:
                return inet_ntop(AF_INET, packed[12:])
            return inet_ntop(AF_INET6, packed)
        return inet_ntop(AF_INET, inet_pton(AF_INET, text))
    except (OSError, ValueError, TypeError):
        raise ValueError(f"not an IP address: {text[:100]!r}") from None


def parse_range(text: str) -> tuple[int, int, int]:
    """``(family bits, network as int, prefix length)`` of ``address/prefix``; IPv4-mapped ranges become IPv4.

    Raises ``ValueError`` on anything that is not ``address/prefix``.
    """
    address, _, prefix_text = text.partition("/")
    if not (prefix_text.isascii() and prefix_text.isdigit()) or len(prefix_text) > 3:
        raise ValueError("bad prefix length")
    prefix = int(prefix_text)
    try:
        if ":" in address:
            packed = inet_pton(AF_INET6, address)
            bits = 128
            if packed[:12] == MAPPED_PREFIX and prefix >= 96:
                packed, bits, prefix = packed[12:], 32, prefix - 96
        else:
            packed = inet_pton(AF_INET, address)
            bits = 32
    except (OSError, ValueError):
        raise ValueError("not an IP address") from None
    if prefix > bits:
        raise ValueError(f"prefix length over {bits}")
    host_bits = bits - prefix
    network = (int.from_bytes(packed, "big") >> host_bits) << host_bits
    return bits, network, prefix


def canonical_range(text: str) -> str:
    """The canonical ``network/prefix`` text of a CIDR range (host bits cleared; a /32 stays a /32)."""
    return format_range(*parse_range(text))


def format_range(bits: int, network: int, prefix: int) -> str:
    """The canonical ``network/prefix`` text of a range as :func:`parse_range` returns it."""
    if bits == 32:
        return f"{inet_ntop(AF_INET, network.to_bytes(4, 'big'))}/{prefix}"
    return f"{inet_ntop(AF_INET6, network.to_bytes(16, 'big'))}/{prefix}"


def _overlaps(bits: int, network: int, prefix: int, other: int, other_prefix: int) -> bool:
    shared = min(prefix, other_prefix)
    return (network >> (bits - shared)) == (other >> (bits - shared))


def range_too_wide(bits: int, network: int, prefix: int) -> str | None:
    """Why the range ``(bits, network, prefix)`` (from :func:`parse_range`) is too wide to act on, or None.

    A range shorter than :data:`MIN_PREFIX_V4` (IPv4) or :data:`MIN_PREFIX_V6` (IPv6) is refused unless it lies in
    IPv4 224.0.0.0/3 or outside IPv6 2000::/3; ``::ffff:0.0.0.0/96`` is the IPv4 ``0.0.0.0/0``, and so is any IPv6
    range covering it (``::/8``, ``::ffff:0:0/95``): they are refused too while ``MIN_PREFIX_V4`` is above 0.
    """
    if bits == 32:
        minimum = MIN_PREFIX_V4
        if prefix >= minimum or (prefix >= _V4_QUIET[1] and _overlaps(32, network, prefix, *_V4_QUIET)):
            return None
        return f"range /{prefix} is wider than the /{minimum} IPv4 minimum (cscapi.iputil.MIN_PREFIX_V4)"
    minimum = MIN_PREFIX_V6
    if prefix < minimum and _overlaps(128, network, prefix, *_V6_GLOBAL):
        return f"range /{prefix} is wider than the /{minimum} IPv6 minimum (cscapi.iputil.MIN_PREFIX_V6)"
    if prefix <= _V6_MAPPED[1] and _overlaps(128, network, prefix, *_V6_MAPPED) and MIN_PREFIX_V4 > 0:
        return (
            f"range /{prefix} covers all of IPv4 (::ffff:0:0/96): wider than the /{MIN_PREFIX_V4} IPv4 minimum "
            "(cscapi.iputil.MIN_PREFIX_V4)"
        )
    return None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, bracketed or not); False for other names.

    The one test of "this URL stays on this machine" (plain http allowed to it: the client's base URL and list links,
    fail-fast on a refused connection)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
