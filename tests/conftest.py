"""Shared test fixtures: real services (PostgreSQL, MariaDB, Redis), the spec, and free loopback ports.

A service that is not running skips its tests on a developer's machine but FAILS them when ``CI=true``, so a green
CI run means the real database was tested.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

POSTGRES_ADMIN_URL = os.environ.get("CSCAPI_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get("CSCAPI_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("CSCAPI_TEST_REDIS", "redis://127.0.0.1:6379/0")


def service_unavailable(what: str, why: object) -> None:
    """Skip locally, fail in CI: a missing service must never turn CI green."""
    message = f"{what} is not reachable ({why})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true, so this test fails instead of skipping")
    pytest.skip(message)


def require_module(name: str) -> Any:
    """Import an optional dependency (e.g. ``cryptography``): skip locally when it is missing, fail in CI, like a
    service. Works at module level too (then the whole file is skipped, or fails to collect in CI)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        message = f"the optional dependency {name!r} is not installed ({exc})"
        if IN_CI:
            pytest.fail(f"{message}; CI=true, so this test fails instead of skipping")
        pytest.skip(message, allow_module_level=True)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()


def _with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not _port_open("127.0.0.1", 5432):
        service_unavailable("PostgreSQL on 127.0.0.1:5432", "connection refused")
    from sqlalchemy import create_engine, text

    name = f"cscapi_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        service_unavailable("PostgreSQL", exc)
    try:
        yield _with_database(POSTGRES_ADMIN_URL, name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh, empty MariaDB database for one test, dropped afterwards."""
    if not _port_open("127.0.0.1", 3306):
        service_unavailable("MariaDB on 127.0.0.1:3306", "connection refused")
    from sqlalchemy import create_engine, text

    name = f"cscapi_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(MYSQL_ADMIN_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except Exception as exc:
        admin.dispose()
        service_unavailable("MariaDB", exc)
    try:
        yield _with_database(MYSQL_ADMIN_URL, name)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cscapi.db'}"


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each SQL back end in turn: SQLite, PostgreSQL, MariaDB."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The Redis server's URL; the test must put every key under its own prefix (see ``redis_prefix``)."""
    if not _port_open("127.0.0.1", 6379):
        service_unavailable("Redis on 127.0.0.1:6379", "connection refused")
    yield REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix; every key under it is deleted after the test."""
    import redis

    prefix = f"cscapi-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# ---- the official spec ---------------------------------------------------------------------------------


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    with path.open() as fh:
        return dict(yaml.safe_load(fh))


@pytest.fixture(scope="session")
def capi_spec() -> dict[str, Any]:
    """The CAPI v3 swagger (from ``../shared/specs``, or the copy shipped in the package)."""
    path = SHARED / "specs" / "capi-v3-swagger.yaml"
    if path.exists():
        return _load_yaml(path)
    from cscapi._spec import load_capi_spec  # pragma: no cover - fallback when shared/ is absent

    return load_capi_spec()


@pytest.fixture(scope="session")
def lapi_spec() -> dict[str, Any]:
    path = SHARED / "specs" / "lapi-swagger.yaml"
    if path.exists():
        return _load_yaml(path)
    from cscapi._spec import load_lapi_spec  # pragma: no cover

    return load_lapi_spec()


@pytest.fixture(scope="session")
def validate_against() -> Any:
    """``validate_against(spec, "AddSignalsRequest", body)`` raises if ``body`` does not fit the definition."""
    import jsonschema

    def validate(spec: dict[str, Any], definition: str, body: Any) -> None:
        schema = {"$ref": f"#/definitions/{definition}", "definitions": spec["definitions"]}
        jsonschema.Draft4Validator(schema).validate(json.loads(json.dumps(body)))

    return validate


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- a private CrowdSec Local API (Debian's crowdsec 1.4.6; tests/lapi_support.py) -------------------------


@pytest.fixture(scope="session")
def crowdsec_lapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One private LAPI for the session (own config, SQLite database, loopback port; no CAPI, no network).
    Missing crowdsec: skipped locally with the install command, a failure in CI."""
    from lapi_support import LapiUnavailable, start_lapi

    try:
        engine = start_lapi(tmp_path_factory.mktemp("crowdsec-lapi"))
    except LapiUnavailable as exc:
        service_unavailable("the CrowdSec Local API", exc)
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def lapi(crowdsec_lapi: Any) -> Any:
    """The session's private LAPI with every decision deleted first (a :class:`lapi_support.LocalLapi`)."""
    if not crowdsec_lapi.alive():
        pytest.fail(f"the private CrowdSec LAPI died: {crowdsec_lapi.log_tail()}")
    crowdsec_lapi.delete_decisions(everything=True)
    crowdsec_lapi.delete_alerts()  # their decisions' ids would show in a later test's alerts()
    return crowdsec_lapi


@pytest.fixture
def lapi_bouncer_key(lapi: Any) -> str:
    """A fresh bouncer API key on the emptied private LAPI (``cscli bouncers add NAME -o raw``)."""
    key: str = lapi.add_bouncer()
    return key


@pytest.fixture(scope="session")
def crowdsec_lapi_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A second private LAPI serving TLS, accepting bouncer client certificates (``.certs``: CA, server, bouncer
    OU ``bouncer-ou``, stranger OU ``other-ou``; tests/lapi_support.py). Skipped/failed like ``crowdsec_lapi``."""
    from lapi_support import LapiUnavailable, make_lapi_certs, start_lapi

    root = tmp_path_factory.mktemp("crowdsec-lapi-tls")
    try:
        engine = start_lapi(root, certs=make_lapi_certs(root / "pki"))
    except LapiUnavailable as exc:
        service_unavailable("the CrowdSec Local API (TLS)", exc)
    try:
        yield engine
    finally:
        engine.stop()
