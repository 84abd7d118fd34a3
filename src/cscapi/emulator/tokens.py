"""HS256 JSON Web Tokens built with the standard library (``hmac`` + ``hashlib``): the emulator's login tokens.

Clients read the claims (``exp``, ``organization_id``) without checking the signature, as they do with CAPI's
Cognito tokens; the emulator checks it on every authenticated request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cscapi.emulator.jsonlimits import loads_limited

__all__ = ["InvalidToken", "decode_jwt", "encode_jwt"]

_HEADER = {"alg": "HS256", "typ": "JWT"}


class InvalidToken(Exception):
    """The token cannot be trusted: malformed, wrong signature or wrong algorithm (never says which secret)."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def encode_jwt(claims: dict[str, Any], secret: bytes) -> str:
    """Sign ``claims`` with HMAC-SHA256 and return the compact ``header.payload.signature`` form."""
    header = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode())
    payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = _b64encode(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


def decode_jwt(token: str, secret: bytes) -> dict[str, Any]:
    """Verify the signature and return the claims; raises :class:`InvalidToken`. Expiry is the caller's check."""
    parts = token.split(".")
    if not token.isascii() or len(parts) != 3:
        raise InvalidToken("not a JWT")
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = loads_limited(_b64decode(header_b64))
        signature = _b64decode(signature_b64)
    except (ValueError, UnicodeError):
        raise InvalidToken("malformed JWT") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise InvalidToken("unsupported JWT algorithm")
    expected = hmac.new(secret, f"{header_b64}.{payload_b64}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise InvalidToken("bad JWT signature")
    try:
        claims = loads_limited(_b64decode(payload_b64))
    except (ValueError, UnicodeError):
        raise InvalidToken("malformed JWT payload") from None
    if not isinstance(claims, dict):
        raise InvalidToken("malformed JWT payload")
    return claims
