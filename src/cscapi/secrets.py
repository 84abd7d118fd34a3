"""Old name of :mod:`cscapi.storage_crypto` (encryption at rest), kept because docs of 1.0.0a1 imported it.

Renamed because ``cscapi/secrets.py`` shadows the standard library's :mod:`secrets` for any tool that puts
``src/cscapi`` on ``sys.path``. New code imports ``cscapi.storage_crypto``; the names here are the same objects.
"""

from __future__ import annotations

from cscapi import storage_crypto as _storage_crypto
from cscapi.storage_crypto import *  # noqa: F403 - the alias re-exports exactly the new module's public names

__all__ = list(_storage_crypto.__all__)
