"""cscapi: share attacks with CrowdSec's Central API, protect with what it returns, and test it all offline.

The heavy parts (HTTP client, SQL storage, remediation engine, emulator) are imported on first use, so
``import cscapi`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cscapi._version import __version__

if TYPE_CHECKING:
    from cscapi.aio import AsyncCAPIClient
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.errors import CAPIError
    from cscapi.remediation import RemediationEngine
    from cscapi.sql_storage import SQLStorage
    from cscapi.utils import create_signal, generate_machine_id_from_key

__all__ = [
    "AsyncCAPIClient",
    "CAPIClient",
    "CAPIClientConfig",
    "CAPIError",
    "RemediationEngine",
    "SQLStorage",
    "__version__",
    "create_signal",
    "generate_machine_id_from_key",
]

_LAZY = {
    "AsyncCAPIClient": "cscapi.aio",
    "CAPIClient": "cscapi.client",
    "CAPIClientConfig": "cscapi.client",
    "CAPIError": "cscapi.errors",
    "RemediationEngine": "cscapi.remediation",
    "SQLStorage": "cscapi.sql_storage",
    "create_signal": "cscapi.utils",
    "generate_machine_id_from_key": "cscapi.utils",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cscapi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
