"""The package's shape (issue 10): public import paths, sync/async twins that agree, no process-wide side effects
at import, ``aclose`` on every async class."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path
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
    "cscapi.lapi": ("LapiClient", "AsyncLapiClient", "LapiWatcher", "AsyncLapiWatcher", "LapiDecision"),
    "cscapi.web": ("Bouncer", "BouncerCounters", "Decision", "Request", "Response"),
    "cscapi.settings": ("Settings", "load_settings", "SETTINGS"),
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

_ASYNC_ONLY = {"aclose", "aready", "__aenter__", "__aexit__"}  # aready: require_ready off the loop (async engine)
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
        "add_local_decision",  # in force in process; the sync thread (or awaited write_local_decisions) writes it
        "local_decisions",
        "require_ready",
        "release_locks",
        "sync",
        "close",
    }
    _assert_twins(RemediationEngine, AsyncRemediationEngine, blocking_in_async=plain)


def test_the_two_lapi_clients_expose_the_same_methods_and_signatures() -> None:
    from cscapi.lapi import AsyncLapiClient, LapiClient

    _assert_twins(LapiClient, AsyncLapiClient, blocking_in_async={"live_cache"})  # builds the engine's cache, no I/O


def test_the_two_lapi_watchers_expose_the_same_methods_and_signatures() -> None:
    from cscapi.lapi import AsyncLapiWatcher, LapiWatcher

    _assert_twins(LapiWatcher, AsyncLapiWatcher, blocking_in_async=set())


# ---- aclose on every async class -------------------------------------------------------------------------------------


def _async_classes() -> list[type]:
    from cscapi.aio import AsyncCAPIClient
    from cscapi.lapi import AsyncLapiClient, AsyncLapiWatcher
    from cscapi.remediation import AsyncRemediationEngine
    from cscapi.transport import AsyncTransport

    return [AsyncCAPIClient, AsyncRemediationEngine, AsyncTransport, AsyncLapiClient, AsyncLapiWatcher]


def _async_classes_with_close_alias() -> list[type]:
    from cscapi.aio import AsyncCAPIClient
    from cscapi.lapi import AsyncLapiClient, AsyncLapiWatcher

    return [AsyncCAPIClient, AsyncLapiClient, AsyncLapiWatcher]


@pytest.mark.parametrize("cls", _async_classes_with_close_alias(), ids=lambda c: c.__name__)
def test_async_clients_have_a_coroutine_close_alias_of_aclose(cls: type) -> None:
    """The house convention: ``close()`` is a coroutine too (the engine's blocking close is the documented
    exception)."""
    assert inspect.iscoroutinefunction(cls.close)
    assert "aclose()" in inspect.getsource(cls.close)


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


# ---- import graph and protocol limits (HA, issue 10 item 2) ---------------------------------------------------------

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "cscapi"


# ---- import graph (item 2) ----------------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The modules of ``known`` one import statement names (``from pkg import sub`` names ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    found: set[str] = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            found.add(f"{base}.{alias.name}")
        elif base in known:
            found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` for every module of ``src/cscapi``, read with ``ast``.

    Counted: every import statement that runs, at import time (module level, ``try``/``if`` blocks) or at call time
    (inside functions and methods): a function-level (lazy) import still makes its module depend on the other one.
    The old ``client.py`` <-> ``_core.py`` circle was exactly that: a module-level import one way, a function-level
    import in ``Core.__init__`` back. Not counted: imports under ``if TYPE_CHECKING:`` (they never run: annotations
    only), and the body of a module-level ``__getattr__`` (PEP 562): a lazy re-export makes the module a facade for a
    name that lives elsewhere, not a dependency of its own code (``cscapi.storage.LegacyStorageAdapter``).
    """
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = {
            id(node)
            for node in ast.walk(tree)
            if (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
            or (
                node in tree.body
                and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.name == "__getattr__"
            )
        }
        edges: set[str] = set()
        stack: list[ast.AST] = [tree]
        while stack:
            node = stack.pop()
            if id(node) in skipped:
                if isinstance(node, ast.If):  # the else branch of ``if TYPE_CHECKING:`` does run
                    stack.extend(node.orelse)
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(name, path.name == "__init__.py", node, known)
            stack.extend(ast.iter_child_nodes(node))
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None when the graph is acyclic (iterative DFS, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path = [root]
        iterators = [iter(sorted(graph[root]))]
        state[root] = 1
        while iterators:
            child = next(iterators[-1], None)
            if child is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                iterators.append(iter(sorted(graph.get(child, ()))))
    return None


def test_house_find_cycle_sees_a_circle_through_a_lazy_import(tmp_path: Path) -> None:
    """The checker itself: a function-level import back is a circle; TYPE_CHECKING and ``__getattr__`` ones are not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    assert "cscapi._core" in graph["cscapi.client"]  # module-level import seen
    assert "cscapi.machines" in graph["cscapi._validators"]  # a function-level import is counted
    assert "cscapi.legacy_storage" not in graph["cscapi.storage"]  # TYPE_CHECKING and PEP 562 re-export only
    assert "cscapi.storage" in graph["cscapi.legacy_storage"]


def test_house_no_import_cycle_in_src() -> None:
    """No module of ``src/cscapi`` depends on itself through others (issue 10: "no import circle in src/")."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_house_clients_and_core_import_the_config_not_each_other() -> None:
    """``CAPIClientConfig`` lives in ``cscapi._config``: the flows and the async client never import the sync client."""
    graph = import_graph()
    assert "cscapi.client" not in graph["cscapi._core"]
    assert "cscapi.client" not in graph["cscapi.aio"]
    assert "cscapi._config" in graph["cscapi._core"] and "cscapi._config" in graph["cscapi.aio"]
    for light in ("cscapi.limits", "cscapi._validators"):  # read by `cscapi --help` through cscapi.settings
        assert not graph[light] - {"cscapi.errors", "cscapi.limits", "cscapi.machines", "cscapi.signals"}, light


# ---- one copy of the protocol limits and URLs (item 2) ------------------------------------------------------------

_LIMITS_HOME = PACKAGE / "limits.py"
#: The emulator keeps its own copies on purpose: it checks the client from outside (docs/internals.md).
_INDEPENDENT = PACKAGE / "emulator"


@pytest.mark.parametrize("needle", ["api.crowdsec.net", "api.dev.crowdsec.net"])
def test_house_capi_urls_are_written_once(needle: str) -> None:
    """CAPI's URLs appear in ``cscapi/limits.py`` only; everything else imports ``PROD_URL``/``DEV_URL``."""
    strays = [
        f"{path.relative_to(SRC)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != _LIMITS_HOME
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if needle in line
    ]
    assert strays == []
    assert needle in _LIMITS_HOME.read_text(encoding="utf-8")


def test_house_cadence_limits_are_written_once() -> None:
    """The pull cadence (5400 s minimum, 7200 s default) is a number in ``cscapi/limits.py`` only (emulator aside)."""
    strays = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == _LIMITS_HOME or _INDEPENDENT in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value in (5400, 7200):
                strays.append(f"{path.relative_to(SRC)}:{node.lineno}")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and any(word in node.value for word in ("5400", "7200"))
            ):
                strays.append(f"{path.relative_to(SRC)}:{node.lineno} (text)")
    assert strays == []


# ---- one AllMetrics builder ------------------------------------------------------------------------------------------


def test_the_engine_and_the_public_builder_send_the_same_component(
    lapi_spec: dict[str, Any], validate_against: Any
) -> None:
    from cscapi.protocol import usage_metrics_payload
    from cscapi.remediation.metrics import build_usage_metrics

    long = "x" * 300
    counts = {("CAPI", "ban"): 3, ("lists:" + long, "captcha"): 2, ("CAPI", "bypass"): 5}
    engine = build_usage_metrics(
        counts, name=long, type_=long, version=long, startup_ts=1000, window_start=1500, now=2000, last_pull=1900
    )
    public = usage_metrics_payload(
        name=long,
        component_type=long,
        version=long,
        startup=1000,
        now=2000,
        window_seconds=500,
        last_pull=1900,
        items=[
            ("dropped", 3, "request", {"origin": "CAPI", "remediation": "ban"}),
            ("dropped", 2, "request", {"origin": "lists:" + long, "remediation": "captcha"}),
            ("processed", 10, "request", None),
        ],
    )
    assert engine == public
    (component,) = engine["remediation_components"]
    assert component["os"]["family"] and component["os"]["name"] and component["os"]["version"]
    assert len(component["name"]) == len(component["type"]) == len(component["version"]) == 255
    assert max(len(v) for i in component["metrics"][0]["items"] for v in i.get("labels", {}).values()) == 255
    validate_against(lapi_spec, "AllMetrics", public)


# ---- one URL masker --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:pw@h:1/x", "http://***@h:1/x"),
        ("http://bob:s3@proxy.internal:3128/?auth=x", "http://***@proxy.internal:3128/?auth=***"),
        ("http://proxy:3128", "http://proxy:3128"),
        ("http://u:p/w?x#y@proxy:3128", "http://***@proxy:3128"),
        ("http://a@b:pw@h/x?token=1#f", "http://***@h/x?token=***"),  # the whole user name, up to the last '@'
        ("socks5://u@h:1", "socks5://***@h:1"),
        ("http://[::1:u:pw@x", "http://***@x"),  # urlsplit raises on this one
        ("not a url", "not a url"),
    ],
)
def test_mask_userinfo_hides_the_whole_user_info(url: str, expected: str) -> None:
    from cscapi.redact import mask_userinfo

    assert mask_userinfo(url) == expected


def test_request_logs_and_config_repr_mask_urls_through_redact() -> None:
    from cscapi.client import CAPIClientConfig
    from cscapi.protocol import safe_url

    # the user name 'a@b' is hidden whole (safe_url used to show 'b:***@h')
    assert safe_url("http://a@b:pw@h/x?sig=1") == "http://***@h/x?…"
    assert safe_url("http://user:pw@h:1/x") == "http://***@h:1/x"
    config = CAPIClientConfig(scenarios=["a/b"], base_url="http://capi.test/", proxy="http://a@b:s3cret@proxy:3128")
    shown = repr(config)
    assert "proxy='http://***@proxy:3128'" in shown and "s3cret" not in shown and "a@b" not in shown


# ---- one runtime: the effect types and the two drivers (HD) -------------------------------------------------------


def _functions_calling(attribute: str) -> list[str]:
    """``module:function`` of every function in src/ that calls ``<something>.<attribute>(...)``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("cscapi", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                calls = [
                    c
                    for c in ast.walk(node)
                    if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == attribute
                ]
                if calls:
                    found.append(f"{module}:{node.name}")
    return found


def test_house_one_driver_pair_runs_every_flow() -> None:
    """A driver is what sends values and throws errors into a flow: only ``cscapi.runtime`` does (its two drivers
    share one stepping), and the sync/async clients and engines (and the LAPI sources) run their flows with exactly
    those two functions."""
    import cscapi.aio
    import cscapi.client
    import cscapi.remediation.engine
    import cscapi.runtime

    assert _functions_calling("throw") == ["cscapi.runtime:__next__"]  # _Steps: the stepping run_sync/run_async share
    runtime = cscapi.runtime
    users = [cscapi.client, cscapi.aio, cscapi.remediation.engine]
    if (PACKAGE / "lapi" / "client.py").exists():
        users.append(importlib.import_module("cscapi.lapi.client"))
    for module in users:
        drivers = {getattr(module, name, None) for name in ("run_sync", "run_async")} - {None}
        assert drivers and drivers <= {runtime.run_sync, runtime.run_async}, module.__name__
    # the engine's flows yield the runtime's effects (no private effect type, no dispatch by name)
    core = importlib.import_module("cscapi.remediation.core")
    assert not hasattr(core, "Op") and not hasattr(cscapi.remediation.engine, "_to_thread")
    for cls in (cscapi.remediation.engine.RemediationEngine, cscapi.remediation.engine.AsyncRemediationEngine):
        assert not hasattr(cls, "_drive")


_CLOCK_READS = {"time", "monotonic", "perf_counter", "utcnow", "now", "today", "time_ns"}


@pytest.mark.parametrize(
    "path",
    [*sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "flows").glob("*.py")), "remediation/core.py"],
)
def test_house_flows_read_no_clock_themselves(path: str) -> None:
    """Inside a flow (a generator function of the flow modules) the time comes from the runtime (``Now`` effects):
    no ``time.time()``, ``time.monotonic()``, ``perf_counter()``, ``utcnow()``, ``datetime.now()``."""
    tree = ast.parse((PACKAGE / path).read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if not any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(node)):
            continue
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
                if name in _CLOCK_READS or name == "clock":
                    bad.append(f"{node.name}:{call.lineno} {name}()")
    assert not bad, bad


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_house_retry_after_is_dated_by_the_runtime_clock(tmp_path: Path, mode: str) -> None:
    """A 503 whose Retry-After is an HTTP date 30 s after the driver's (fake) clock waits 30 s: the retry flow reads
    the time through the runtime's ``Now``, not the system clock (which put that 2031 date years away: 120 s)."""
    from datetime import datetime, timedelta, timezone

    from cscapi.aio import AsyncCAPIClient
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.sql_storage import SQLStorage
    from cscapi.timeutil import format_http_date
    from hostile_server import HostileServer

    fake_now = datetime(2031, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    retry_at = format_http_date(fake_now + timedelta(seconds=30))
    answers = iter([(503, b"busy", {"Retry-After": retry_at}), (200, b"192.0.2.1\n", {})])
    sleeps: list[float] = []
    storage = SQLStorage(f"sqlite:///{tmp_path / 's.db'}")
    with HostileServer() as srv:
        srv.route("/list.txt", lambda c, r: c.answer(*next(answers)))
        cfg = CAPIClientConfig(["crowdsecurity/ssh-bf"], base_url=srv.url, retry_delay=0.01, max_retries=2)
        if mode == "sync":
            with CAPIClient(storage, cfg) as client:
                client._clock = lambda: fake_now
                client._sleep = sleeps.append
                got = client.download_link(srv.url + "list.txt")
        else:

            async def run() -> Any:
                async def fake_sleep(seconds: float) -> None:
                    sleeps.append(seconds)

                async with AsyncCAPIClient(storage, cfg) as client:
                    client._clock = lambda: fake_now
                    client._sleep = fake_sleep
                    return await client.download_link(srv.url + "list.txt")

            got = asyncio.run(run())
    storage.close()
    assert got.status_code == 200 and got.text == "192.0.2.1\n"
    assert sleeps == [pytest.approx(30.0, abs=0.5)]


_SIZE_LINES, _SIZE_METHODS = 400, 25


def test_house_no_class_over_the_size_limit_without_a_reason() -> None:
    """Every class in src/ stays within ~400 lines and ~25 methods, or says why in its docstring
    ("Why this size: ...")."""
    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            methods = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
            if (lines > _SIZE_LINES or methods > _SIZE_METHODS) and "Why this size" not in (
                ast.get_docstring(node) or ""
            ):
                too_big.append(f"{path.relative_to(PACKAGE)}:{node.name} ({lines} lines, {methods} methods)")
    assert not too_big, too_big
