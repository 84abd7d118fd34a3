"""``cscapi lapi``: check the connection to a local CrowdSec engine's Local API (LAPI) with real requests."""

from __future__ import annotations

from typing import Any

import click

from cscapi.cli._context import AppContext, json_option, pass_app
from cscapi.cli._lazy import FullHelpGroup
from cscapi.cli._output import esc


@click.group(cls=FullHelpGroup)
def lapi() -> None:
    """A local CrowdSec engine's Local API as the decision source (docs/lapi.md)."""


def _check_bouncer(settings: Any) -> dict[str, Any]:
    """Ask the LAPI about one IP with the bouncer's credentials: the answer proves the URL and the key/cert work."""
    from cscapi.cli._runtime import open_lapi_client
    from cscapi.errors import CAPIError

    with open_lapi_client(settings, max_retries=0) as client:
        try:
            client.get_ip_decisions("127.0.0.1")  # read-only: a stream pull would move this bouncer's position
        except CAPIError as exc:
            return {"ok": False, "auth": client.auth, "error": exc.message, "hint": exc.hint, "exc": exc}
        return {"ok": True, "auth": client.auth, "error": None, "hint": None, "exc": None}


def _check_watcher(settings: Any) -> dict[str, Any] | None:
    """Log the watcher in (``POST /v1/watchers/login``) when its machine and password are configured, else None."""
    if not settings.lapi_machine_id and not settings.lapi_password:
        return None
    from cscapi.errors import CAPIError, ConfigurationError
    from cscapi.lapi import LapiWatcher
    from cscapi.sql_storage import SQLStorage

    if not settings.lapi_machine_id or not settings.lapi_password:
        raise ConfigurationError(
            "lapi_machine_id and lapi_password go together (the watcher's machine and its password)",
            hint="Set both (CSCAPI_LAPI_MACHINE_ID, CSCAPI_LAPI_PASSWORD) from `cscli machines add NAME`, or neither.",
        )
    storage = SQLStorage("sqlite://")  # the login touches no queue; an in-memory one satisfies the watcher
    try:
        options = {"ca": settings.lapi_ca or None, "max_retries": 0, "timeout": settings.timeout}
        watcher = LapiWatcher(
            settings.lapi_url,
            storage,
            machine_id=settings.lapi_machine_id,
            password=settings.lapi_password,
            **options,
        )
        try:
            watcher.login()
        except CAPIError as exc:
            return {"ok": False, "machine_id": settings.lapi_machine_id, "error": exc.message, "exc": exc}
        finally:
            watcher.close()
    finally:
        storage.close()
    return {"ok": True, "machine_id": settings.lapi_machine_id, "error": None, "exc": None}


@lapi.command()
@json_option
@pass_app
def status(app: AppContext) -> None:
    """Check the bouncer credentials against the LAPI with a real request (a read-only decisions query), and the
    watcher's (a login) when lapi_machine_id and lapi_password are set.

    Exit 0 when the LAPI accepted them, 5 when it refused one (bad key, certificate or password), 3 when it did not
    answer, 2 when the [source] settings are incomplete.

    \b
    Example:
      CSCAPI_LAPI_API_KEY=... cscapi --source lapi lapi status
    """
    settings = app.settings()
    bouncer = _check_bouncer(settings)
    watcher = _check_watcher(settings)
    result = {
        "source": settings.values["source"],
        "lapi_url": settings.display("lapi_url"),
        "mode": settings.lapi_mode,
        "bouncer": {k: bouncer[k] for k in ("ok", "auth", "error")},
        "watcher": None if watcher is None else {k: watcher[k] for k in ("ok", "machine_id", "error")},
    }
    if app.json_mode:
        app.out.emit_json(result)
    else:
        if not settings.is_lapi:
            app.out.warn("source is capi: the commands use CAPI's decisions (--source lapi or CSCAPI_SOURCE=lapi)")
        app.out.print(f"LAPI:    {esc(result['lapi_url'])} ({esc(settings.lapi_mode)} mode)")
        auth = "API key" if bouncer["auth"] == "api_key" else "TLS client certificate"
        if bouncer["ok"]:
            app.out.ok(f"bouncer: the LAPI accepted the {auth}")
        else:
            app.out.print(f"[red]✗[/red] bouncer: {esc(bouncer['error'])}")
        if watcher is None:
            app.out.print("watcher: not configured (lapi_machine_id, lapi_password)")
        elif watcher["ok"]:
            app.out.ok(f"watcher: machine {esc(watcher['machine_id'])} logged in")
        else:
            app.out.print(f"[red]✗[/red] watcher: {esc(watcher['error'])}")
    if not bouncer["ok"]:
        raise bouncer["exc"]
    if watcher is not None and not watcher["ok"]:
        raise watcher["exc"]
