"""Old name of :mod:`cscapi.storage_crypto` (encryption at rest), kept because docs of 1.0.0a1 imported it.

Renamed because ``cscapi/secrets.py`` shadows the standard library's :mod:`secrets` for any tool that puts
``src/cscapi`` on ``sys.path``. New code imports ``cscapi.storage_crypto``.
"""

from __future__ import annotations

from cscapi.storage_crypto import (
    ENCRYPTED_PREFIX,
    KEY_ENV_VAR,
    SecretBox,
    generate_key,
    is_encrypted,
    key_from_env,
    new_salt,
)

__all__ = [
    "ENCRYPTED_PREFIX",
    "KEY_ENV_VAR",
    "SecretBox",
    "generate_key",
    "is_encrypted",
    "key_from_env",
    "new_salt",
]
