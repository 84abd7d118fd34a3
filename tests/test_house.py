"""The package's shape (issue 10): public import paths, sync/async twins that agree, no process-wide side effects
at import, ``aclose`` on every async class."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

# ---- public import paths --------------------------------------------------------------------------------------------

PUBLIC_NAMES: dict[str, tuple[str, ...]] = {
    "cscapi": ("__version__",),
    "cscapi.client": ("CAPIClient", "CAPIClientConfig", "has_valid_token", "CAPI_BASE_URL", "CAPI_BASE_DEV_URL"),
    "cscapi.aio": ("AsyncCAPIClient",),
    "cscapi.sql_storage": ("SQLStorage",),
    "cscapi.storage": (
        "StorageInterface",
        "LegacyStorageAdapter",
        "MachineModel",
        "SignalModel",
        "SourceModel",
        "ContextModel",
        "DecisionModel",
        "IncompatibleStorageError",
    ),
    "cscapi.utils": ("create_signal", "generate_machine_id", "generate_machine_id_from_key", "generate_password"),
    "cscapi.models": ("Signal", "Source", "Context", "Machine", "DecisionStream", "SendReport", "LinkDownload"),
    "cscapi.errors": ("CAPIError", "ConfigurationError", "StorageError", "AuthenticationError", "DecisionStoreError"),
    "cscapi.remediation": (
        "RemediationEngine",
        "AsyncRemediationEngine",
        "DecisionSource",
        "AsyncDecisionSource",
        "DecisionStore",
        "Policy",
        "Remediation",
        "CLEAN",
        "open_store",
    ),
    "cscapi.remediation.contracts": ("DecisionSource", "AsyncDecisionSource"),
    "cscapi.emulator": ("EmbeddedEmulator", "EmulatorConfig", "EmulatorAdminClient", "create_app"),
    "cscapi.agent": ("Agent", "AgentConfig"),
    "cscapi.redact": ("mask_url", "scrub"),
    "cscapi.storage_crypto": ("generate_key", "KEY_ENV_VAR", "SecretBox", "is_encrypted"),
    "cscapi.secrets": ("generate_key", "KEY_ENV_VAR", "SecretBox", "is_encrypted"),  # old name, documented in 1.0.0a1
}


@pytest.mark.parametrize("module", sorted(PUBLIC_NAMES))
def test_every_public_path_imports_with_its_documented_names(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC_NAMES[module] if not hasattr(mod, name)]
    assert missing == [], f"{module} lacks {missing}"
    for name in getattr(mod, "__all__", ()):
        assert hasattr(mod, name), f"{module}.__all__ names {name}, which does not exist"


def test_secrets_alias_is_the_same_objects_as_storage_crypto() -> None:
    import cscapi.secrets
    import cscapi.storage_crypto

    for name in cscapi.secrets.__all__:
        assert getattr(cscapi.secrets, name) is getattr(cscapi.storage_crypto, name)


def _run_python(code: str) -> Any:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_cscapi_loads_no_http_sql_or_driver_module() -> None:
    heavy = ("httpx", "httpcore", "sqlalchemy", "psycopg", "psycopg2", "pymysql", "redis", "cryptography", "starlette")
    loaded = _run_python(
        f"import sys, json, cscapi\nprint(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"
    )
    assert loaded == []


# ---- process-wide side effects ---------------------------------------------------------------------------------------


def test_fork_hook_is_registered_by_the_first_engine_not_at_import() -> None:
    code = """
import json, os
calls = []
real = os.register_at_fork
def spy(**kwargs):
    if any(getattr(f, "__module__", "").startswith("cscapi") for f in kwargs.values()):
        calls.append(sorted(kwargs))  # the standard library (random, threading, ...) registers its own
    real(**kwargs)
os.register_at_fork = spy
import cscapi, cscapi.remediation, cscapi.remediation.engine, cscapi.client, cscapi.aio
at_import = len(calls)
from cscapi.remediation import RemediationEngine
first = RemediationEngine(None, "memory://", sync_interval_ms=0)
after_first = len(calls)
second = RemediationEngine(None, "memory://", sync_interval_ms=0)
after_second = len(calls)
first.close(); second.close()
print(json.dumps([at_import, after_first, after_second]))
"""
    assert _run_python(code) == [0, 1, 1]


def test_no_module_level_transport_hook() -> None:
    import cscapi.transport

    assert not hasattr(cscapi.transport, "DEFAULT_TRANSPORT")
    assert not hasattr(cscapi.transport, "DEFAULT_ASYNC_TRANSPORT")


# ---- sync and async twins --------------------------------------------------------------------------------------------

_ASYNC_ONLY = {"aclose", "__aenter__", "__aexit__"}
_SYNC_ONLY = {"__enter__", "__exit__"}  # the async engine keeps no sync context manager


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    out = {}
    for name, member in inspect.getmembers(cls):
        if (name.startswith("_") and name not in _ASYNC_ONLY | _SYNC_ONLY) or not callable(member):
            continue
        if isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod, type)):
            continue
        out[name] = inspect.signature(member)
    return out


def _shape(sig: inspect.Signature) -> list[tuple[str, Any, Any, str]]:
    return [(p.name, p.kind, p.default, str(p.annotation)) for p in sig.parameters.values()]


def _assert_twins(sync_cls: type, async_cls: type, blocking_in_async: set[str]) -> None:
    sync = _public_methods(sync_cls)
    aio = _public_methods(async_cls)
    assert set(sync) - _SYNC_ONLY == set(aio) - _ASYNC_ONLY, "the two classes expose different methods"
    for name in sorted(set(sync) - _SYNC_ONLY):
        assert _shape(sync[name]) == _shape(aio[name]), f"{name}: {sync[name]} != {aio[name]}"
        assert str(sync[name].return_annotation) == str(aio[name].return_annotation), name
        is_coroutine = inspect.iscoroutinefunction(getattr(async_cls, name))
        assert is_coroutine == (name not in blocking_in_async), f"{async_cls.__name__}.{name} coroutine={is_coroutine}"
        assert not inspect.iscoroutinefunction(getattr(sync_cls, name)), f"{sync_cls.__name__}.{name} is a coroutine"


def test_the_two_clients_expose_the_same_methods_and_signatures() -> None:
    from cscapi.aio import AsyncCAPIClient
    from cscapi.client import CAPIClient

    _assert_twins(CAPIClient, AsyncCAPIClient, blocking_in_async=set())


def test_the_two_engines_expose_the_same_methods_and_signatures() -> None:
    from cscapi.remediation import AsyncRemediationEngine, RemediationEngine

    # plain methods on both, as documented in docs/remediation.md: lookups and counters do no network I/O;
    # close() stays the blocking close it was in 1.0.0a1 (aclose is the coroutine)
    plain = {
        "get_ip_remediation",
        "get_origins_count",
        "update_metrics_origins_count",
        "require_ready",
        "release_locks",
        "sync",
        "close",
    }
    _assert_twins(RemediationEngine, AsyncRemediationEngine, blocking_in_async=plain)


# ---- aclose on every async class -------------------------------------------------------------------------------------


def _async_classes() -> list[type]:
    from cscapi.aio import AsyncCAPIClient
    from cscapi.remediation import AsyncRemediationEngine
    from cscapi.transport import AsyncTransport

    return [AsyncCAPIClient, AsyncRemediationEngine, AsyncTransport]


@pytest.mark.parametrize("cls", _async_classes(), ids=lambda c: c.__name__)
def test_every_async_class_has_a_coroutine_aclose(cls: type) -> None:
    assert inspect.iscoroutinefunction(cls.aclose)
    if hasattr(cls, "__aexit__"):
        source = inspect.getsource(cls.__aexit__)
        assert "aclose()" in source, f"{cls.__name__}.__aexit__ should await aclose()"


def test_async_client_aclose_and_its_close_alias_close_the_pool(tmp_path: Any) -> None:
    from cscapi.aio import AsyncCAPIClient
    from cscapi.client import CAPIClientConfig
    from cscapi.sql_storage import SQLStorage

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={})

    async def main() -> list[bool]:
        storage = SQLStorage(f"sqlite:///{tmp_path}/q.db")
        config = CAPIClientConfig(
            scenarios=["a/b"], base_url="http://capi.test/", transport=httpx.MockTransport(handler)
        )
        seen = []
        try:
            for close_name in ("aclose", "close"):
                client = AsyncCAPIClient(storage, config)
                pool = client._transport.client  # created on first use
                await getattr(client, close_name)()
                seen.append(pool.is_closed)
            async with AsyncCAPIClient(storage, config) as client:
                pool = client._transport.client
            seen.append(pool.is_closed)
        finally:
            storage.close()
        return seen

    assert asyncio.run(main()) == [True, True, True]


def test_a_failed_parse_leaves_the_collector_as_it_was() -> None:
    import gc

    from cscapi.errors import CAPIError
    from cscapi.protocol.http import Response
    from cscapi.protocol.responses import parse_stream

    bad = Response(200, {"content-type": "application/json"}, b'{"new": [', "http://capi.test/v3/decisions/stream")
    assert gc.isenabled()
    with pytest.raises(CAPIError):
        parse_stream(bad, startup=True)
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(CAPIError):
            parse_stream(bad, startup=True)
        assert not gc.isenabled()  # the host's choice is kept
    finally:
        gc.enable()
