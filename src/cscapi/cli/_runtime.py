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
    from cscapi.config import Settings
    from cscapi.sql_storage import SQLStorage

#: Scenarios used when nothing is configured and the command only needs *some* valid list (e.g. to register).
FALLBACK_SCENARIOS = ("crowdsecurity/ssh-bf",)


def _sqlite_parent(uri: str) -> Path | None:
    if not uri.startswith("sqlite") or "///" not in uri:
        return None
    path = uri.split("///", 1)[1].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).parent


def open_storage(settings: Settings) -> SQLStorage:
    """The signal storage; the directory of a SQLite file is created (mode 0700) when missing."""
    from cscapi.sql_storage import SQLStorage

    uri = settings.storage_uri
    parent = _sqlite_parent(uri)
    if parent is not None and not parent.exists():
        try:
            parent.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the storage directory {parent}: {exc.strerror}",
                hint="Set storage (--storage, CSCAPI_STORAGE) to a writable location.",
            ) from None
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
    if settings.verify_tls and settings.ca_bundle:
        verify = settings.ca_bundle
    options: dict[str, Any] = {
        "scenarios": chosen,
        "user_agent_prefix": settings.user_agent_prefix,
        "max_retries": settings.max_retries,
        "base_url": settings.base_url,
        "timeout": settings.timeout,
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
    """A ``CAPIClient`` on ``storage`` for the configured target."""
    from cscapi.client import CAPIClient

    return CAPIClient(storage, client_config(settings, **overrides))


def stored_machine_id(settings: Settings, storage: Any) -> str | None:
    """The configured machine, else the first stored one, else None (nothing is registered)."""
    if settings.machine_id:
        return str(settings.machine_id)
    machines = storage.list_machines()
    return machines[0].machine_id if machines else None


def require_machine_id(settings: Settings, storage: Any) -> str:
    """Like :func:`stored_machine_id`, but a ``ConfigurationError`` saying what to do when there is none."""
    machine_id = stored_machine_id(settings, storage)
    if machine_id is None:
        raise ConfigurationError(
            "no machine is registered in this storage", hint="Run `cscapi machines register` first."
        )
    if storage.get_machine_by_id(machine_id) is None:
        raise ConfigurationError(
            f"machine {machine_id} is not in the storage {settings.display('storage')}",
            hint="Register it with `cscapi machines register --machine-id ...`, or fix machine_id.",
        )
    return machine_id


def open_engine(settings: Settings, client: Any, machine_id: str | None) -> Any:
    """The remediation engine on the configured decision store."""
    from cscapi.remediation import RemediationEngine

    uri = settings.decision_store_uri
    parent = _sqlite_parent(uri)
    if parent is not None and not parent.exists():
        parent.mkdir(parents=True, mode=0o700)
    return RemediationEngine(client, store=uri, machine_id=machine_id, key_prefix=settings.decision_key_prefix)


@contextlib.contextmanager
def session(settings: Settings, **overrides: Any) -> Iterator[tuple[Any, CAPIClient]]:
    """Open the storage and a client on it; close both afterwards."""
    storage = open_storage(settings)
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
