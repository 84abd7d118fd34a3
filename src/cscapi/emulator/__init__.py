"""A local CrowdSec Central API: CAPI v3 (and legacy v2) served by Starlette, for demos, development and tests.

Every name is imported on first use: ``EmulatorConfig`` is cheap (standard library only); ``create_app``,
``EmbeddedEmulator`` and ``EmulatorAdminClient`` load Starlette, uvicorn and httpx. Importing the package (or
``cscapi.emulator.server``, whose parser ``cscapi emulator --help`` builds) loads nothing else. The library itself
never imports this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cscapi.emulator.admin import EmulatorAdminClient, EmulatorAdminError
    from cscapi.emulator.app import create_app
    from cscapi.emulator.config import EmulatorConfig, FaultSpec, LoginRateLimit
    from cscapi.emulator.embedded import EmbeddedEmulator
    from cscapi.emulator.state import EmulatorState

__all__ = [
    "EmbeddedEmulator",
    "EmulatorAdminClient",
    "EmulatorAdminError",
    "EmulatorConfig",
    "EmulatorState",
    "FaultSpec",
    "LoginRateLimit",
    "create_app",
]

_LAZY = {
    "EmbeddedEmulator": "cscapi.emulator.embedded",
    "EmulatorAdminClient": "cscapi.emulator.admin",
    "EmulatorAdminError": "cscapi.emulator.admin",
    "EmulatorState": "cscapi.emulator.state",
    "EmulatorConfig": "cscapi.emulator.config",
    "FaultSpec": "cscapi.emulator.config",
    "LoginRateLimit": "cscapi.emulator.config",
    "create_app": "cscapi.emulator.app",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cscapi.emulator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
