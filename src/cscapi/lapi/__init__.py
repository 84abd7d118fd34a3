"""CrowdSec's Local API (LAPI): a decision source for the remediation engine (``LapiClient``, ``AsyncLapiClient``)
and, in :mod:`cscapi.lapi.watcher`, the destination of detections (``LapiWatcher``)."""

from __future__ import annotations

from typing import Any

from cscapi.lapi.client import DEFAULT_REFRESH_INTERVAL, AsyncLapiClient, LapiClient
from cscapi.lapi.protocol import LapiDecision

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "AsyncLapiClient",
    "AsyncLapiWatcher",
    "LapiClient",
    "LapiDecision",
    "LapiWatcher",
]


def __getattr__(name: str) -> Any:
    """``LapiWatcher`` / ``AsyncLapiWatcher`` are imported on first use (the watcher side lives in its own module)."""
    if name in ("LapiWatcher", "AsyncLapiWatcher"):
        from cscapi.lapi import watcher

        return getattr(watcher, name)
    raise AttributeError(f"module 'cscapi.lapi' has no attribute {name!r}")
