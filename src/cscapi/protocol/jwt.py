"""Read a JWT's claims (``exp``, ``organization_id`` ...) without verifying it, as every CAPI client does.

The token is only ever sent back to CAPI; we read its expiry to know when to log in again.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Any

from cscapi.protocol.http import loads_json
from cscapi.timeutil import parse_timestamp

__all__ = ["read_claims", "token_expiry"]


def read_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT as a dict; empty when the token is not a readable JWT (never raises)."""
    parts = token.split(".")
    if len(parts) < 2:
        return {}
    segment = parts[1]
    segment += "=" * (-len(segment) % 4)
    try:
        payload = loads_json(base64.urlsafe_b64decode(segment.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def token_expiry(token: str, expire: str | None = None) -> datetime | None:
    """When the token expires: the JWT's ``exp`` claim, else the login response's ``expire`` field, else None."""
    exp = read_claims(token).get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        try:
            return datetime.fromtimestamp(float(exp), timezone.utc)
        except (OverflowError, OSError, ValueError):
            pass
    if expire:
        try:
            return parse_timestamp(expire)
        except ValueError:
            return None
    return None
