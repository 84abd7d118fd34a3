"""Canonical IP addresses and ranges, fast: one implementation for signals, the stream parser and the engine.

IPv4 stays dotted-quad, IPv6 is lower-case and compressed (``inet_ntop``), an IPv4-mapped IPv6 address or range
(``::ffff:1.2.3.4``, ``::ffff:1.2.3.0/120``) becomes IPv4, and a range keeps only its network bits. Built on
``socket.inet_pton`` (several times faster than ``ipaddress``), it raises ``ValueError`` on anything else.
"""

from __future__ import annotations

from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

__all__ = ["MAPPED_PREFIX", "canonical_address", "canonical_range", "parse_range"]

MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


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
    bits, network, prefix = parse_range(text)
    if bits == 32:
        return f"{inet_ntop(AF_INET, network.to_bytes(4, 'big'))}/{prefix}"
    return f"{inet_ntop(AF_INET6, network.to_bytes(16, 'big'))}/{prefix}"
