"""Reading decision values: canonical IPs and ranges, blocklist bodies (plain text) and allowlist bodies (NDJSON).

Every value is canonicalised once, when it enters the engine, so that the lookup index can use plain dictionary keys:
IPv4 stays dotted-quad, IPv6 is lower-case and compressed (``inet_ntop``), IPv4-mapped IPv6 (``::ffff:1.2.3.4``,
``::ffff:1.2.3.0/120``) becomes IPv4, a range keeps only its network bits, and a /32 or /128 is an address.
In a list body, a range too wide to act on (``0.0.0.0/0``, see ``cscapi.iputil.range_too_wide``) is refused like an
unreadable line: one bad line is skipped, logged and counted, never the whole list.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

from cscapi.gcpause import without_gc
from cscapi.iputil import MAPPED_PREFIX, parse_range, range_too_wide
from cscapi.iputil import canonical_address as _canonical_address
from cscapi.timeutil import parse_timestamp

__all__ = [
    "MAPPED_PREFIX",
    "ParseTally",
    "canonical_value",
    "parse_allowlist",
    "parse_blocklist",
    "parse_range",
    "sane_value",
]

_MAX_VALUE_LEN = 100


@dataclass
class ParseTally:
    """Counts of values that could not be used, by reason; the first few examples are logged, not all."""

    reasons: dict[str, int] = field(default_factory=dict)
    logged: int = 0

    def skip(self, reason: str, value: object, logger: logging.Logger, where: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if self.logged < 20:
            self.logged += 1
            try:
                shown = repr(value)
            except (RecursionError, ValueError):  # nested too deeply; an int of more than 4300 digits
                shown = f"a {type(value).__name__}"
            if len(shown) > _MAX_VALUE_LEN:
                shown = shown[:_MAX_VALUE_LEN] + "..."
            logger.warning("skipped %s in %s: %s", shown, where, reason)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def merge(self, other: ParseTally) -> None:
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count


def canonical_value(text: object) -> str:
    """The canonical form of an IP address or CIDR range; raises ``ValueError`` if it is neither."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    if "/" not in text and ":" not in text:
        try:
            inet_pton(AF_INET, text)
            return text  # inet_pton accepts only the canonical dotted quad (no leading zeros, four parts)
        except (OSError, ValueError):
            pass
    text = text.strip()
    if not text or len(text) > _MAX_VALUE_LEN:
        raise ValueError("empty or too long")
    if "/" not in text:
        try:
            return _canonical_address(text)
        except (OSError, ValueError):
            raise ValueError("not an IP address") from None
    bits, network, prefix = parse_range(text)
    if prefix == bits:
        if bits == 32:
            return inet_ntop(AF_INET, network.to_bytes(4, "big"))
        return inet_ntop(AF_INET6, network.to_bytes(16, "big"))
    if bits == 32:
        return f"{inet_ntop(AF_INET, network.to_bytes(4, 'big'))}/{prefix}"
    return f"{inet_ntop(AF_INET6, network.to_bytes(16, 'big'))}/{prefix}"


def sane_value(text: object) -> str:
    """:func:`canonical_value` of a value read from a list; a range too wide to act on raises ``ValueError`` too."""
    value = canonical_value(text)
    if "/" in value:
        too_wide = range_too_wide(*parse_range(value))
        if too_wide is not None:
            raise ValueError(too_wide)
    return value


@without_gc
def parse_blocklist(body: str, tally: ParseTally, logger: logging.Logger, name: str) -> tuple[str, ...]:
    """The canonical, de-duplicated values of a blocklist body (one IP or CIDR per line).

    Blank lines and ``#`` comments are ignored; any other unreadable line is skipped and counted in ``tally``.
    """
    seen: dict[str, None] = {}
    where = f"blocklist {name!r}"
    for raw in body.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            seen[sane_value(line)] = None
        except ValueError as exc:
            tally.skip(str(exc), line, logger, where)
    return tuple(seen)


def parse_allowlist(
    body: str, now: float, tally: ParseTally, logger: logging.Logger, name: str
) -> dict[str, float | None]:
    """Canonical value -> expiry (unix seconds, or None for never) of an allowlist body (NDJSON lines).

    Each line is ``{"value": ..., "expiration": RFC 3339?}``; entries already expired are dropped (not counted as
    errors); unreadable lines are skipped and counted. The latest expiry wins when a value appears twice.
    """
    entries: dict[str, float | None] = {}
    where = f"allowlist {name!r}"
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: a line nested thousands deep
            tally.skip("not JSON", line, logger, where)
            continue
        if not isinstance(item, dict):
            tally.skip("not a JSON object", line, logger, where)
            continue
        try:
            value = sane_value(item.get("value"))
        except ValueError as exc:
            tally.skip(str(exc), item.get("value"), logger, where)
            continue
        expiry: float | None = None
        expiration = item.get("expiration")
        if expiration not in (None, ""):
            try:
                expiry = _timestamp(expiration)
            except ValueError:
                tally.skip("bad expiration", line, logger, where)
                continue
            if expiry is not None and expiry <= now:
                continue
        if value in entries:
            previous = entries[value]
            expiry = None if previous is None or expiry is None else max(previous, expiry)
        entries[value] = expiry
    return entries


def _timestamp(value: object) -> float | None:
    """Unix seconds of an expiration; None for Go's zero time (``0001-01-01T00:00:00Z`` means "never")."""
    if isinstance(value, (str, int, float, datetime)) and not isinstance(value, bool):
        parsed = parse_timestamp(value)
        if parsed.year <= 1:
            return None
        return parsed.timestamp()
    raise ValueError("not a timestamp")
