"""Helpers users call directly: build a signal, and generate machine ids and passwords.

Kept at the legacy ``cscapi.utils`` location so that code written for cscapi 0.7.0 imports unchanged.
"""

from __future__ import annotations

import hashlib

from cscapi.machines import MACHINE_ID_LENGTH, random_machine_id, random_password, validate_machine_id_prefix
from cscapi.signals import create_signal

__all__ = ["create_signal", "generate_machine_id", "generate_machine_id_from_key", "generate_password"]


def generate_machine_id_from_key(key: str, prefix: str = "") -> str:
    """A deterministic machine id for ``key``: ``prefix`` + the sha256 of ``prefix + key``, 48 characters in all.

    The same key and prefix always give the same id (so a host can find its machine again), and the prefix counts in
    the 48 (the legacy SDK returned more than 48 characters with a prefix, which CAPI's login refuses).
    """
    if not isinstance(key, str) or not key:
        from cscapi.errors import ValidationError

        raise ValidationError("generate_machine_id_from_key needs a non-empty string key.", field="key")
    validate_machine_id_prefix(prefix)
    digest = hashlib.sha256((prefix + key).encode("utf-8")).hexdigest()
    return prefix + digest[: MACHINE_ID_LENGTH - len(prefix)]


def generate_machine_id(prefix: str = "") -> str:
    """A random machine id: ``prefix`` + random lowercase letters and digits (CSPRNG), 48 characters in all."""
    return random_machine_id(prefix)


def generate_password(length: int = 64) -> str:
    """A random password of letters and digits from the operating system's CSPRNG (64 characters by default)."""
    return random_password(length)
