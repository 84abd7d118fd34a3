"""Build the library objects a command needs (storage, client, engine) from the effective settings.

Heavy imports (SQLAlchemy, httpx) happen here, when a command really runs, never at ``--help`` time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cscapi.errors import ConfigurationError

if TYPE_CHECKING:
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.lapi import LapiClient
    from cscapi.settings import Settings
    from cscapi.sql_storage import SQLStorage

#: Scenarios used when nothing is configured and the command only needs *some* valid list (e.g. to register).
FALLBACK_SCENARIOS = ("crowdsecurity/ssh-bf",)


def _sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///path`` URI (None for other back ends and in-memory databases)."""
    if not uri.startswith("sqlite") or "///" not in uri:
        return None
    path = uri.split("///", 1)[1].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _require_file(path: Path | None, what: str, hint: str) -> None:
    """A read-only command on a SQLite file that does not exist: say so instead of creating it."""
    if path is not None and not path.is_file():
        raise ConfigurationError(f"the {what} {path} does not exist", hint=hint)


def _make_parent(path: Path | None, what: str, setting: str) -> None:
    if path is None or path.parent.exists():
        return
    try:
        path.parent.mkdir(parents=True, mode=0o700)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the directory of the {what} {path.parent}: {exc.strerror}",
            hint=f"Set {setting} to a writable location.",
        ) from None


def open_storage(settings: Settings, *, create: bool = True) -> SQLStorage:
    """The signal storage. ``create``: make a missing SQLite file's directory (mode 0700); else a missing SQLite file
    is a ``ConfigurationError`` (read-only commands never create files)."""
    from cscapi.sql_storage import SQLStorage

    uri = settings.storage_uri
    path = _sqlite_path(uri)
    if create:
        _make_parent(path, "signal storage", "storage (--storage, CSCAPI_STORAGE)")
    else:
        _require_file(
            path,
            "signal storage",
            "Check storage (--storage, CSCAPI_STORAGE); to start afresh run `cscapi init` then "
            "`cscapi machines register`.",
        )
    return SQLStorage(uri)


def client_config(
    settings: Settings,
    *,
    scenarios: Sequence[str] | None = None,
    logger: logging.Logger | None = None,
    **overrides: Any,
) -> CAPIClientConfig:
    """A ``CAPIClientConfig`` from the settings (``scenarios`` overrides the configured ones)."""
    from cscapi.client import CAPIClientConfig

    chosen = list(scenarios or settings.scenarios or FALLBACK_SCENARIOS)
    verify: bool | str = settings.verify_tls
    if not settings.verify_tls and settings.ca_bundle:
        raise ConfigurationError(
            "verify_tls is off and ca_bundle is set: the CA bundle would be silently ignored.",
            hint="Keep verify_tls on to verify with ca_bundle, or clear ca_bundle to turn verification off.",
        )
    if settings.ca_bundle:
        verify = settings.ca_bundle
    options: dict[str, Any] = {
        "scenarios": chosen,
        "user_agent_prefix": settings.user_agent_prefix,
        "max_retries": settings.max_retries,
        "base_url": settings.base_url,
        "timeout": settings.timeout,
        "deadline": settings.deadline,
        "max_stream_bytes": settings.max_stream_bytes,
        "max_link_bytes": settings.max_link_bytes,
        "proxy": settings.proxy or None,
        "verify": verify,
        "batch_size": settings.batch_size,
        "machine_id_prefix": settings.machine_id_prefix,
    }
    if logger is not None:
        options["logger"] = logger
    options.update(overrides)
    return CAPIClientConfig(**options)


def open_client(settings: Settings, storage: Any, **overrides: Any) -> CAPIClient:
    """A ``CAPIClient`` on ``storage`` for the configured target (with the library's retries, as the agent wants)."""
    from cscapi.client import CAPIClient

    return CAPIClient(storage, client_config(settings, **overrides))


def _lapi_limits(settings: Settings, *names: str) -> dict[str, Any]:
    """The transport limits (``deadline``, ``max_stream_bytes``) set in the settings, for a LAPI client or watcher;
    a limit left at its CAPI-sized default keeps the LAPI classes' own default (30 s: a local engine answers fast)."""
    return {name: getattr(settings, name) for name in names if settings.source(name) != "default"}


def open_lapi_client(settings: Settings, **overrides: Any) -> LapiClient:
    """A ``LapiClient`` (a decision source) from the ``[source]`` settings: API key or TLS client certificate."""
    from cscapi.lapi import LapiClient

    hint = (
        "Set lapi_api_key (CSCAPI_LAPI_API_KEY) to the key `cscli bouncers add NAME` prints, or lapi_cert and "
        "lapi_key to a client certificate (docs/lapi.md)."
    )
    if bool(settings.lapi_cert) != bool(settings.lapi_key):
        raise ConfigurationError("lapi_cert and lapi_key go together (a client certificate and its key)", hint=hint)
    if not settings.lapi_api_key and not settings.lapi_cert:
        raise ConfigurationError("source is lapi but no LAPI credentials are configured", hint=hint)
    for name in ("lapi_cert", "lapi_key", "lapi_ca"):
        value = getattr(settings, name)
        if value and not Path(value).expanduser().is_file():
            raise ConfigurationError(f"{name} {value} is not a readable file", hint=hint)
    options: dict[str, Any] = {
        "api_key": settings.lapi_api_key or None,
        "cert": settings.lapi_cert or None,
        "key": settings.lapi_key or None,
        "ca": settings.lapi_ca or None,
        "user_agent_prefix": settings.user_agent_prefix,
        "timeout": settings.timeout,
        "mode": settings.lapi_mode,
        "refresh_interval": settings.lapi_refresh_interval,
        "bad_ip_cache_duration": settings.bad_ip_cache_duration,
        "clean_ip_cache_duration": settings.clean_ip_cache_duration,
        **_lapi_limits(settings, "deadline", "max_stream_bytes"),
    }
    options.update(overrides)
    return LapiClient(settings.lapi_url, **options)


def open_lapi_watcher(settings: Settings, storage: Any, **overrides: Any) -> Any:
    """A ``LapiWatcher`` (pushes the ``lapi`` signal queue as alerts) from the ``[source]`` settings: lapi_url,
    lapi_machine_id + lapi_password (`cscli machines add`), or lapi_cert + lapi_key."""
    from cscapi.lapi import LapiWatcher

    if not settings.lapi_url:
        raise ConfigurationError(
            "signals go to lapi but lapi_url is not set", hint="Set [source] lapi_url (CSCAPI_LAPI_URL)."
        )
    if not settings.lapi_cert and not (settings.lapi_machine_id and settings.lapi_password):
        raise ConfigurationError(
            "signals go to lapi but no watcher credentials are configured",
            hint="Set lapi_machine_id and lapi_password to a machine from `cscli machines add NAME --password ...` "
            "(or lapi_cert and lapi_key to a client certificate); see docs/lapi.md.",
        )
    options: dict[str, Any] = {
        "machine_id": None if settings.lapi_cert else settings.lapi_machine_id,
        "password": None if settings.lapi_cert else settings.lapi_password,
        "cert": settings.lapi_cert or None,
        "key": settings.lapi_key or None,
        "ca": settings.lapi_ca or None,
        "user_agent_prefix": settings.user_agent_prefix,
        "timeout": settings.timeout,
        **_lapi_limits(settings, "deadline"),
    }
    options.update(overrides)
    return LapiWatcher(settings.lapi_url, storage, **options)


def _machine_ids(storage: Any, secrets: bool) -> list[str]:
    """The stored machines' ids; ``secrets=False`` reads no password (works without ``CSCAPI_STORAGE_KEY``)."""
    if not secrets and hasattr(storage, "machine_ids"):
        return list(storage.machine_ids())
    return [m.machine_id for m in storage.list_machines()]


def stored_machine_id(settings: Settings, storage: Any, *, secrets: bool = True) -> str | None:
    """The configured machine, else the first stored one, else None (nothing is registered)."""
    if settings.machine_id:
        return str(settings.machine_id)
    ids = _machine_ids(storage, secrets)
    return ids[0] if ids else None


def lapi_signal_machine_id(settings: Settings) -> str:
    """The machine id of signals queued for the LAPI only: ``lapi_machine_id`` when it is a 48-character id, else one
    derived from it (or from ``lapi_url`` with a client certificate). The watcher pushes them under its own login, so
    no CAPI machine is needed."""
    from cscapi.machines import is_valid_machine_id
    from cscapi.utils import generate_machine_id_from_key

    name = str(settings.lapi_machine_id or "")
    if name and is_valid_machine_id(name):
        return name
    return generate_machine_id_from_key(f"lapi-watcher:{name or settings.lapi_url or 'tls'}")


def require_machine_id(settings: Settings, storage: Any, *, secrets: bool = True) -> str:
    """Like :func:`stored_machine_id`, but a ``ConfigurationError`` saying what to do when there is none.

    ``secrets=False``: only the id is needed (queuing signals), so no stored secret is decrypted.
    """
    machine_id = stored_machine_id(settings, storage, secrets=secrets)
    if machine_id is None:
        raise ConfigurationError(
            "no machine is registered in this storage", hint="Run `cscapi machines register` first."
        )
    known = machine_id in _machine_ids(storage, secrets) if not secrets else storage.get_machine_by_id(machine_id)
    if not known:
        raise ConfigurationError(
            f"machine {machine_id} is not in the storage {settings.display('storage')}",
            hint="Register it with `cscapi machines register --machine-id ...`, or fix machine_id.",
        )
    return machine_id


def open_engine(
    settings: Settings, client: Any, machine_id: str | None, *, create: bool = True, strict: bool = True
) -> Any:
    """The remediation engine on the configured decision store.

    ``create``: make a missing SQLite file's directory; else a missing SQLite file is a ``ConfigurationError``.
    ``strict``: a store that cannot be read raises ``DecisionStoreError`` (exit 6) instead of serving no decisions,
    which would answer every IP "bypass/clean".
    """
    from cscapi.remediation import RemediationEngine

    uri = settings.decision_store_uri
    path = _sqlite_path(uri)
    if create:
        _make_parent(path, "decision store", "decision_store (--decision-store, CSCAPI_DECISION_STORE)")
    else:
        _require_file(
            path,
            "decision store",
            "Check decision_store (--decision-store, CSCAPI_DECISION_STORE); to fill it run `cscapi decisions refresh` "
            "(after `cscapi init` and `cscapi machines register`).",
        )
    return RemediationEngine(
        client, store=uri, machine_id=machine_id, key_prefix=settings.decision_key_prefix, strict=strict
    )


@contextlib.contextmanager
def session(settings: Settings, *, create: bool = True, **overrides: Any) -> Iterator[tuple[Any, CAPIClient]]:
    """Open the storage (see :func:`open_storage` for ``create``) and a client on it; close both afterwards.

    The client is an interactive command's: a connection error on a first try, or a refused connection on
    loopback, fails at once (``fail_fast_connect``) instead of backing off for half a minute.
    """
    overrides.setdefault("fail_fast_connect", True)
    storage = open_storage(settings, create=create)
    try:
        client = open_client(settings, storage, **overrides)
        try:
            yield storage, client
        finally:
            client.close()
    finally:
        storage.close()


def describe_token(machine: Any, now: datetime | None = None) -> str:
    """``valid until ... (in 52m)``, ``expired ...`` or ``none``: a machine's token state for people."""
    from cscapi.timeutil import format_go_duration, utcnow

    expires = getattr(machine, "token_expires_at", None)
    if not getattr(machine, "token", None) or expires is None:
        return "none (logs in on first use)"
    now = now or utcnow()
    left = (expires - now).total_seconds()
    when = expires.strftime("%Y-%m-%d %H:%M:%S UTC")
    if left <= 0:
        return f"expired {when} (renewed on next use)"
    return f"valid until {when} (in {format_go_duration(round(left))})"
