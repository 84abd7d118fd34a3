"""HMAC-SHA256 signed tokens (challenges and cookies): stateless, so any worker sharing the key verifies them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = ["Signer"]

MAX_TOKEN = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs ``|``-joined fields for one ``purpose`` (a token signed for one purpose never verifies for another)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, purpose: str, payload: bytes) -> bytes:
        return hmac.new(self._key, purpose.encode() + b"\n" + payload, hashlib.sha256).digest()

    def sign(self, purpose: str, *fields: str) -> str:
        """A token holding ``fields`` (none may hold ``|``): readable by anyone, forgeable by no one without the key."""
        if any("|" in f for f in fields):
            raise ValueError("a signed field may not contain '|'")
        payload = "|".join(fields).encode()
        return _b64(payload) + "." + _b64(self._mac(purpose, payload))

    def unsign(self, purpose: str, token: str) -> list[str] | None:
        """The fields of a token this key signed for ``purpose``; None if it is tampered, foreign or malformed."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            return None
        body, sep, mac = token.partition(".")
        if not sep:
            return None
        try:
            payload = _unb64(body)
            given = _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(given, self._mac(purpose, payload)):
            return None
        try:
            return payload.decode().split("|")
        except UnicodeDecodeError:
            return None

    def digest(self, purpose: str, text: str) -> str:
        """A keyed digest of ``text`` (the image captcha's answer travels only as this)."""
        return _b64(self._mac(purpose, text.encode())[:16])

    def __repr__(self) -> str:
        return "Signer(key=***)"
