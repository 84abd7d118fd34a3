"""Time values as CAPI speaks them: RFC 3339 timestamps (UTC, microseconds) and Go duration strings.

Shared by the client, the emulator and the remediation engine so that every part reads and writes them alike.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime

__all__ = [
    "GO_MAX_DURATION",
    "MAX_DECISION_DURATION",
    "format_go_duration",
    "format_http_date",
    "format_rfc3339",
    "parse_go_duration",
    "parse_http_date",
    "parse_timestamp",
    "utcnow",
]

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


GO_MAX_DURATION = (2**63 - 1) / 1e9
"""The longest Go duration in seconds (int64 nanoseconds, about 292 years): Go refuses longer ones, and so do we."""
MAX_DECISION_DURATION = 365 * 86400.0
"""Longest duration (seconds) of a decision or a list received from CAPI: a longer one is skipped and counted.
Read at each check: set ``cscapi.timeutil.MAX_DECISION_DURATION`` to change it."""
_MAX_DURATION_TEXT = 256  # characters: no real duration is longer; float() of a huge digit string is slow


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


def parse_go_duration(text: str) -> float:
    """Parse a Go duration such as ``4h``, ``3h59m55.756182786s`` or ``-1m30s`` into seconds.

    Raises ``ValueError`` on anything Go's ``time.ParseDuration`` would refuse, overflow (``999999999h``, 400 nines:
    over :data:`GO_MAX_DURATION`) included: the result is always a finite number.
    """
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string, not {type(text).__name__}")
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if len(s) > _MAX_DURATION_TEXT:
        raise ValueError(f"duration {text[:40]!r}... is too long ({len(s)} characters)")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        match = _GO_DURATION_PART.match(s, pos)
        if match is None:
            raise ValueError(f"invalid duration {text[:40]!r}")
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text[:40]!r}")
    if not total <= GO_MAX_DURATION:  # also catches inf and nan
        raise ValueError(f"duration {text[:40]!r} is out of range (Go durations stop at 2562047h47m16.854775807s)")
    return sign * total


def format_go_duration(seconds: float) -> str:
    """Render seconds as a Go duration string (``86400`` -> ``24h0m0s``), as Go's ``Duration.String`` does.

    Raises ``ValueError`` for infinity and NaN (no Go duration is infinite).
    """
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {seconds!r}")
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    if rest < 1:
        return f"{sign}{rest * 1000:g}ms"
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    sec_text = f"{secs:.9f}".rstrip("0").rstrip(".") if secs != int(secs) else str(int(secs))
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{sec_text}s"
    if minutes:
        return f"{sign}{int(minutes)}m{sec_text}s"
    return f"{sign}{sec_text}s"


def format_rfc3339(value: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with microseconds: ``2023-11-17T10:20:46.123456Z``.

    A naive datetime is read as UTC (documented behaviour, never local time).
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    # Not strftime("%Y"): it does not zero-pad years before 1000 on glibc, which is not RFC 3339.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}Z"
    )


_NANOS = re.compile(r"(\.\d{6})\d+")
_SPACE_OFFSET = re.compile(r"\s+([+-]\d{2}):?(\d{2})$")


def parse_timestamp(value: str | datetime | int | float) -> datetime:
    """Read a timestamp into an aware UTC datetime.

    Accepts datetimes (naive ones are read as UTC), unix seconds, RFC 3339 / ISO 8601 strings (``Z`` or an offset,
    nanoseconds truncated to microseconds) and the legacy SDK's ``2023-11-17 10:20:46 +0000`` form.
    Raises ``ValueError`` with the offending text otherwise.
    """
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")  # bool before int: True is not 1970-01-01T00:00:01Z
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"timestamp {_clipped(value)} is out of range") from None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: a {type(value).__name__}")  # no repr: it may be nested thousands deep
    text = value.strip()
    if not text:
        raise ValueError("empty timestamp")
    text = _NANOS.sub(r"\1", text)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = _SPACE_OFFSET.sub(r"\1:\2", text)
    text = text.replace(" UTC", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _clipped(number: float) -> str:
    """A number for a message: an int of 4300 digits or more cannot even be printed."""
    return repr(number) if not isinstance(number, int) or abs(number) < 10**30 else "(a very large integer)"


def format_http_date(value: datetime) -> str:
    """Format a datetime as an HTTP date (``Sat, 21 Nov 2026 22:28:02 GMT``) for Last-Modified / If-Modified-Since."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return format_datetime(value.astimezone(timezone.utc), usegmt=True)


def parse_http_date(text: str) -> datetime | None:
    """Parse an HTTP date; ``None`` if it cannot be read (a bad header is ignored, never fatal)."""
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
