"""A MaxMind-format (``.mmdb``) country database, read without a dependency, for LAPI's country-scoped decisions.

The file is read once into memory (bounded by ``max_bytes``) and checked; lookups and walks are then pure CPU work.
A country decision (scope ``Country``, value ``FR``) becomes one range decision per network of that country
(:meth:`CountryDatabase.networks`), so the engine's index, its shared state and every worker need no database.
Format: https://maxmind.github.io/MaxMind-DB/ (search tree of 24, 28 or 32-bit records, then the data section).
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Any

from cscapi.errors import ConfigurationError
from cscapi.models import DecisionStream, DeletedDecision, StreamDecision

__all__ = ["CountryDatabase", "expand_countries"]

_MARKER = b"\xab\xcd\xefMaxMind.com"
_MAX_DEPTH = 32
_COUNTRY = re.compile(r"^[A-Z]{2}$")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class _Corrupt(ValueError):
    pass


class CountryDatabase:
    """``CountryDatabase(path)``: ``country(ip)`` gives the ISO code of an address, ``networks(code)`` its ranges."""

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = str(path)
        try:
            size = Path(path).stat().st_size
            if size > max_bytes:
                raise ConfigurationError(
                    f"The country database {self.path!r} is {size} bytes, over the {max_bytes} bytes allowed.",
                    hint="Give a country database (GeoLite2-Country), not a city one, or raise max_bytes.",
                )
            self._buf = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot read the country database {self.path!r}: {exc.strerror or exc}."
            ) from None
        try:
            self._read_metadata()
        except (_Corrupt, IndexError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"{self.path!r} is not a readable MaxMind DB file ({type(exc).__name__}: {str(exc)[:120]}).",
                hint="Give a MaxMind-format country database (.mmdb), e.g. GeoLite2-Country.mmdb.",
            ) from None
        self._codes: dict[int, str | None] = {}
        self._networks: dict[str, list[str]] = {}

    def _read_metadata(self) -> None:
        buf = self._buf
        at = buf.rfind(_MARKER, max(0, len(buf) - 128 * 1024))
        if at < 0:
            raise _Corrupt("no metadata marker")
        meta, _end = self._decode(at + len(_MARKER), at + len(_MARKER), 0)
        if not isinstance(meta, dict):
            raise _Corrupt("metadata is not a map")
        self.node_count = int(meta["node_count"])
        self.record_size = int(meta["record_size"])
        self.ip_version = int(meta["ip_version"])
        self.database_type = str(meta.get("database_type", ""))
        if self.record_size not in (24, 28, 32) or self.ip_version not in (4, 6) or self.node_count <= 0:
            raise _Corrupt(f"record size {self.record_size}, ip version {self.ip_version}")
        self._node_bytes = self.record_size // 4
        self._tree_size = self.node_count * self._node_bytes
        self._data_start = self._tree_size + 16
        if self._data_start > at:
            raise _Corrupt("the search tree is larger than the file")
        node = 0
        if self.ip_version == 6:  # IPv4 lives at ::/96
            for _ in range(96):
                if node >= self.node_count:
                    break
                node = self._record(node, 0)
        self._v4_start = node

    # ---- the search tree ---------------------------------------------------------------------------------------

    def _record(self, node: int, bit: int) -> int:
        size, off, buf = self.record_size, node * self._node_bytes, self._buf
        if size == 24:
            at = off + 3 * bit
            return int.from_bytes(buf[at : at + 3], "big")
        if size == 28:
            if bit == 0:
                return ((buf[off + 3] & 0xF0) << 20) | int.from_bytes(buf[off : off + 3], "big")
            return ((buf[off + 3] & 0x0F) << 24) | int.from_bytes(buf[off + 4 : off + 7], "big")
        at = off + 4 * bit
        return int.from_bytes(buf[at : at + 4], "big")

    def country(self, ip: str) -> str | None:
        """The ISO 3166 code of ``ip`` (``country``, else ``registered_country``), or None when the file has none."""
        address = ip_address(ip)
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.version == 6 and self.ip_version == 4:
            return None
        packed = int.from_bytes(address.packed, "big")
        bits = address.max_prefixlen
        node = self._v4_start if address.version == 4 else 0
        for i in range(bits):
            if node >= self.node_count:
                break
            node = self._record(node, (packed >> (bits - 1 - i)) & 1)
        if node <= self.node_count:
            return None
        return self._code(node)

    def _code(self, record: int) -> str | None:
        found = self._codes.get(record, "")
        if found != "":
            return found
        offset = self._tree_size + (record - self.node_count)
        try:
            data, _end = self._decode(offset, self._data_start, 0)
        except (_Corrupt, IndexError, TypeError, struct.error, UnicodeDecodeError):
            data = None
        code = _iso_code(data)
        self._codes[record] = code
        return code

    def networks(self, code: str) -> list[str]:
        """Every network of country ``code`` in the file, as canonical CIDR text (IPv4 ones as IPv4)."""
        code = code.strip().upper()
        cached = self._networks.get(code)
        if cached is None:
            cached = sorted(net for net, found in self._walk() if found == code)
            self._networks[code] = cached
        return cached

    def _walk(self) -> Iterator[tuple[str, str | None]]:
        """(network, country) for every data record of the tree; aliased subtrees (IPv4 under ::ffff:0:0/96 and
        2002::/16 in an IPv6 file) are visited once, at ::/96."""
        seen: set[int] = set()
        v6 = self.ip_version == 6
        stack: list[tuple[int, int, int]] = [(0, 0, 0)]  # node, network bits so far, depth
        total = 128 if v6 else 32
        while stack:
            node, value, depth = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for bit in (1, 0):
                child = self._record(node, bit)
                network = value | (bit << (total - 1 - depth))
                if child < self.node_count:
                    if depth + 1 < total:
                        stack.append((child, network, depth + 1))
                elif child > self.node_count:
                    yield _cidr(network, depth + 1, v6), self._code(child)

    # ---- the data section --------------------------------------------------------------------------------------

    def _decode(self, offset: int, base: int, depth: int) -> tuple[Any, int]:
        """(value, next offset) of the data field at ``offset``; pointers are relative to ``base``."""
        if depth > _MAX_DEPTH:
            raise _Corrupt("data nested too deeply")
        buf = self._buf
        ctrl = buf[offset]
        offset += 1
        kind = ctrl >> 5
        if kind == 1:  # pointer
            size = (ctrl >> 3) & 3
            low = ctrl & 7
            raw = int.from_bytes(buf[offset : offset + size + 1], "big")
            if size == 0:
                target = (low << 8) | raw
            elif size == 1:
                target = ((low << 16) | raw) + 2048
            elif size == 2:
                target = ((low << 24) | raw) + 526336
            else:
                target = raw
            value, _end = self._decode(base + target, base, depth + 1)
            return value, offset + size + 1
        if kind == 0:
            kind = 7 + buf[offset]
            offset += 1
        size = ctrl & 0x1F
        if size >= 29:
            extra = size - 28
            raw = int.from_bytes(buf[offset : offset + extra], "big")
            offset += extra
            size = (29, 285, 65821)[extra - 1] + raw
        if kind == 2:
            end = offset + size
            if end > len(buf):
                raise _Corrupt("string past the end")
            return buf[offset:end].decode("utf-8"), end
        if kind == 7:
            result: dict[str, Any] = {}
            for _ in range(size):
                key, offset = self._decode(offset, base, depth + 1)
                result[str(key)], offset = self._decode(offset, base, depth + 1)
            return result, offset
        if kind == 11:
            items = []
            for _ in range(size):
                item, offset = self._decode(offset, base, depth + 1)
                items.append(item)
            return items, offset
        if kind in (5, 6, 9, 10):
            return int.from_bytes(buf[offset : offset + size], "big"), offset + size
        if kind == 8:
            return int.from_bytes(buf[offset : offset + size], "big", signed=size == 4), offset + size
        if kind == 3:
            return struct.unpack(">d", buf[offset : offset + 8])[0], offset + 8
        if kind == 15:
            return struct.unpack(">f", buf[offset : offset + 4])[0], offset + 4
        if kind == 4:
            return bytes(buf[offset : offset + size]), offset + size
        if kind == 14:
            return size != 0, offset
        raise _Corrupt(f"unknown data type {kind}")

    def __repr__(self) -> str:
        return f"CountryDatabase({self.path!r}, {self.database_type!r}, {self.node_count} nodes)"


def _iso_code(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    for key in ("country", "registered_country"):
        part = data.get(key)
        code = part.get("iso_code") if isinstance(part, dict) else None
        if isinstance(code, str) and _COUNTRY.match(code):
            return code
    code = data.get("iso_code")
    return code if isinstance(code, str) and _COUNTRY.match(code) else None


def _cidr(network: int, prefix: int, v6: bool) -> str:
    if v6 and prefix >= 96 and network >> 32 == 0:  # ::/96 holds IPv4
        return str(IPv4Network((network & 0xFFFFFFFF, prefix - 96)))
    if v6:
        return str(IPv6Network((network, prefix)))
    return str(IPv4Network((network, prefix)))


def expand_countries(stream: DecisionStream, db: CountryDatabase, logger: logging.Logger) -> DecisionStream:
    """``stream`` with each country decision replaced by one range decision per network of that country in ``db``
    (scenario marked ``(country XX)`` so deleting it removes only those); a country without networks is skipped and
    counted. Other decisions pass through unchanged."""
    new: list[StreamDecision] = []
    deleted: list[DeletedDecision] = []
    skipped = stream.skipped
    for d in stream.new:
        if d.scope != "country":
            new.append(d)
            continue
        networks = db.networks(d.value)
        if not networks:
            skipped += 1
            logger.info("LAPI decision on country %s skipped: the country database has no network for it", d.value)
            continue
        scenario = f"{d.scenario} (country {d.value})"
        for net in networks:
            new.append(StreamDecision(net, "range", scenario, d.duration, d.type, d.origin))
    for item in stream.deleted:
        if item.scope != "country":
            deleted.append(item)
            continue
        scenario = f"{item.scenario} (country {item.value})"
        for net in db.networks(item.value):
            deleted.append(DeletedDecision(net, "range", scenario, item.type, item.origin))
    return DecisionStream(
        stream.raw, new=new, deleted=deleted, skipped=skipped, startup=stream.startup,
        blocklists=stream.blocklists, allowlists=stream.allowlists,
    )  # fmt: skip
