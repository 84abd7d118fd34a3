"""Decision stores, chosen by URI: ``memory://``, ``sqlite:///path.db``, ``redis://host:port/db``."""

from __future__ import annotations

from cscapi.errors import ConfigurationError
from cscapi.remediation.stores.base import Counters, DecisionStore

__all__ = ["Counters", "DecisionStore", "open_store"]


def open_store(uri: str | DecisionStore, *, key_prefix: str = "cscapi:") -> DecisionStore:
    """The store for ``uri`` (a ready :class:`DecisionStore` is returned as is)."""
    if isinstance(uri, DecisionStore):
        return uri
    if not isinstance(uri, str):
        raise ConfigurationError(f"store must be a URI string or a DecisionStore, not {type(uri).__name__}")
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "memory":
        from cscapi.remediation.stores.memory import MemoryStore

        return MemoryStore(uri)
    if scheme == "sqlite":
        from cscapi.remediation.stores.sqlite import SQLiteStore

        return SQLiteStore(uri)
    if scheme in ("redis", "rediss", "unix"):
        from cscapi.remediation.stores.redis import RedisStore

        return RedisStore(uri, key_prefix=key_prefix)
    raise ConfigurationError(
        "unknown decision store URI scheme; use memory://, sqlite:///path/decisions.db or redis://host:6379/0",
        hint="For example RemediationEngine(client, store='redis://127.0.0.1:6379/0').",
    )
