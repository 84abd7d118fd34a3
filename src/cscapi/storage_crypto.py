"""Encryption at rest for the machines' passwords and tokens (Fernet, from the ``cryptography`` package).

The key is either a Fernet key (``generate_key()``) or any passphrase, stretched with scrypt and a per-database
salt. Encrypted values are stored as ``enc:v1:<fernet token>``; values without that prefix are plain text (stored
before encryption was turned on) and are encrypted on their next write. ``cryptography`` is imported lazily.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from cscapi.errors import ConfigurationError, StorageError

__all__ = [
    "ENCRYPTED_PREFIX",
    "KEY_ENV_VAR",
    "SecretBox",
    "generate_key",
    "is_encrypted",
    "key_from_env",
    "new_salt",
]

ENCRYPTED_PREFIX = "enc:v1:"
KEY_ENV_VAR = "CSCAPI_STORAGE_KEY"
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_CRYPTO_HINT = "Install it with: pip install 'cscapi[crypto]'"


def _fernet_class() -> Any:
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise ConfigurationError(
            "Encrypting stored secrets needs the 'cryptography' package, which is not installed.",
            hint=_CRYPTO_HINT,
        ) from None
    return Fernet


def generate_key() -> str:
    """A new random Fernet key (URL-safe base64 text): keep it safe, e.g. in ``CSCAPI_STORAGE_KEY``."""
    return str(_fernet_class().generate_key().decode("ascii"))


def new_salt() -> bytes:
    """16 random bytes: the per-database salt for passphrase keys."""
    return os.urandom(16)


def key_from_env() -> str | None:
    """The key in ``CSCAPI_STORAGE_KEY``, or None when unset or empty."""
    value = os.environ.get(KEY_ENV_VAR, "")
    return value or None


def is_encrypted(value: str | None) -> bool:
    """True when ``value`` is an ``enc:v1:`` ciphertext."""
    return isinstance(value, str) and value.startswith(ENCRYPTED_PREFIX)


def _as_fernet_key(key: str | bytes) -> bytes | None:
    """The key's bytes if it already is a Fernet key (32 bytes in URL-safe base64), else None."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    try:
        decoded = base64.urlsafe_b64decode(raw)
    except (binascii.Error, ValueError):
        return None
    return raw if len(decoded) == 32 and len(raw) == 44 else None


class SecretBox:
    """Encrypts and decrypts secrets with one key. Never shows the key in its repr."""

    def __init__(self, key: str | bytes, salt: bytes) -> None:
        if not key:
            raise ConfigurationError(
                "The storage encryption key is empty.",
                hint="Pass a key from cscapi.storage_crypto.generate_key() or a long passphrase.",
            )
        fernet_class = _fernet_class()
        fernet_key = _as_fernet_key(key)
        self.derived = fernet_key is None
        if fernet_key is None:
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            passphrase = key.encode("utf-8") if isinstance(key, str) else key
            kdf = Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
            fernet_key = base64.urlsafe_b64encode(kdf.derive(passphrase))
        self._fernet = fernet_class(fernet_key)

    def __repr__(self) -> str:
        return f"SecretBox(key=***, derived={self.derived})"

    def encrypt(self, value: str) -> str:
        """``enc:v1:`` + the Fernet token of ``value``."""
        token: bytes = self._fernet.encrypt(value.encode("utf-8"))
        return ENCRYPTED_PREFIX + token.decode("ascii")

    def decrypt(self, value: str, *, what: str = "a stored secret") -> str:
        """The plain text of an ``enc:v1:`` value (plain values pass through); a wrong key raises StorageError."""
        if not is_encrypted(value):
            return value
        from cryptography.fernet import InvalidToken

        try:
            return str(self._fernet.decrypt(value[len(ENCRYPTED_PREFIX) :].encode("ascii")).decode("utf-8"))
        except (InvalidToken, UnicodeError, ValueError):
            raise StorageError(
                f"Cannot decrypt {what}: wrong {KEY_ENV_VAR}?",
                hint=f"Use the key the database was written with (encryption_key= or {KEY_ENV_VAR}).",
            ) from None
