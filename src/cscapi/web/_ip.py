"""The client IP of a request: the socket peer, or what trusted proxies say it is.

Rules (docs/web.md, "Client IP"): forwarding headers are read only when the socket peer is a trusted proxy. Then ONE
configured header (``X-Forwarded-For`` by default, or ``Forwarded`` (RFC 7239, its ``for=`` parameters), or
``X-Real-IP``) is walked right to left, skipping trusted hops; the first untrusted hop is the client (entries a client
prepends are never reached). The other headers are ignored: a client could add one its proxy passes untouched. A hop
that cannot be read (``unknown``, an obfuscated ``_name``, garbage), or a ``Forwarded`` header without any ``for=``,
makes the client UNRESOLVED (:data:`UNRESOLVED`, never the proxy's own address): the bouncer then applies its fail
policy. When every hop is trusted, the leftmost is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from cscapi.errors import ConfigurationError
from cscapi.iputil import canonical_address

__all__ = ["FORWARDED_HEADERS", "UNRESOLVED", "Networks", "parse_hop", "resolve_client_ip"]

FORWARDED_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
"""The header names ``forwarded_header`` takes (lower case)."""

UNRESOLVED = ""
"""What :func:`resolve_client_ip` answers when a trusted proxy's header cannot be read (never a valid address)."""

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class Networks:
    """A set of CIDRs (IPv4 and IPv6; a bare address is a /32 or /128) tested against canonical addresses.

    ``unix`` may be listed to mean "a peer with no IP address" (a Unix socket).
    """

    __slots__ = ("_cache", "nets", "unix")

    def __init__(self, cidrs: Iterable[str], *, what: str) -> None:
        if isinstance(cidrs, str):
            raise ConfigurationError(f"{what} must be a list of CIDRs, not one string: [{cidrs!r}]")
        nets: list[_Net] = []
        self.unix = False
        for cidr in cidrs:
            if cidr == "unix":
                self.unix = True
                continue
            try:
                net = ipaddress.ip_network(str(cidr).strip(), strict=False)
            except ValueError:
                raise ConfigurationError(
                    f"{what}: {str(cidr)[:100]!r} is not an IP address or CIDR (such as 10.0.0.0/8 or 2001:db8::/32)"
                ) from None
            if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
                mapped = net.network_address.ipv4_mapped
                if mapped is not None:  # ::ffff:10.0.0.0/104 means 10.0.0.0/8 (addresses are canonicalised to IPv4)
                    net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
            nets.append(net)
        self.nets: tuple[_Net, ...] = tuple(nets)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.nets) or self.unix

    def __contains__(self, address: object) -> bool:
        """True if ``address`` (a canonical IP text, or None for a Unix socket peer) is in one of the networks."""
        if address is None:
            return self.unix
        if not isinstance(address, str):
            return False
        hit = self._cache.get(address)
        if hit is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            hit = any(ip in net for net in self.nets if net.version == ip.version)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[address] = hit
        return hit

    def __repr__(self) -> str:
        items = [str(n) for n in self.nets] + (["unix"] if self.unix else [])
        return f"Networks({items!r})"


def parse_hop(text: str) -> str | None:
    """The canonical address in one forwarding entry, or None if it holds none.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443``, ``"[2001:db8::1]"`` (quoted, as in
    ``Forwarded``), ``fe80::1%eth0`` (the zone id is dropped) and ``::ffff:1.2.3.4`` (becomes ``1.2.3.4``).
    """
    value = text.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1].strip()
    if not value or len(value) > 100:
        return None
    if value[0] == "[":
        end = value.find("]")
        if end < 0:
            return None
        rest = value[end + 1 :]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        value, _, port = value.partition(":")
        if not port.isdigit():
            return None
    zone = value.find("%")
    if zone >= 0:
        value = value[:zone]
    try:
        return canonical_address(value)
    except ValueError:
        return None


def _forwarded_for(header: str) -> list[str]:
    """The ``for=`` values of a ``Forwarded`` header, in order (elements without one are skipped)."""
    values = []
    for element in header.split(","):
        for pair in element.split(";"):
            name, sep, value = pair.partition("=")
            if sep and name.strip().lower() == "for":
                values.append(value)
    return values


def _hops(headers: Mapping[str, str], header: str) -> Sequence[str] | None:
    value = headers.get(header)
    if value is None:
        return None
    if header == "forwarded":
        return _forwarded_for(value)
    if header == "x-forwarded-for":
        return value.split(",")
    return [value]


def resolve_client_ip(
    peer: str | None, headers: Mapping[str, str], trusted: Networks, header: str = "x-forwarded-for"
) -> str | None:
    """The client's canonical IP: ``peer`` (already canonical, None for a Unix socket) unless it is a trusted proxy.

    Then ``header`` (one of :data:`FORWARDED_HEADERS`; ``headers`` are looked up by lower-case name) is walked right
    to left. Its absence means the request comes from the proxy itself (``peer``); a hop that cannot be read, or a
    header with no hop, gives :data:`UNRESOLVED`.
    """
    if not trusted or peer not in trusted:
        return peer
    hops = _hops(headers, header)
    if hops is None:
        return peer
    if not hops:
        return UNRESOLVED  # e.g. Forwarded: proto=https with no for=
    current = peer
    for raw in reversed(hops):
        hop = parse_hop(raw)
        if hop is None:
            return UNRESOLVED  # garbage or an obfuscated hop: we cannot vouch for anyone (never the proxy's address)
        current = hop
        if hop not in trusted:
            return hop
    return current
