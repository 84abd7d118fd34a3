"""``cscapi config show``: the effective settings, secrets masked, and where each value came from."""

from __future__ import annotations

import click

from cscapi.cli._context import AppContext, json_option, pass_app
from cscapi.cli._lazy import FullHelpGroup
from cscapi.cli._output import esc


@click.group(cls=FullHelpGroup)
def config() -> None:
    """Inspect the configuration (flags > CSCAPI_* environment > config file > defaults)."""


@config.command("show")
@json_option
@pass_app
def show(app: AppContext) -> None:
    """Print every setting's effective value and its source; secrets are masked.

    \b
    Example:
      CSCAPI_PUSH_INTERVAL=30 cscapi --target dev config show
    """
    import os

    from cscapi.settings import SETTINGS

    settings = app.settings()
    encryption = "on (CSCAPI_STORAGE_KEY is set)" if os.environ.get("CSCAPI_STORAGE_KEY") else "off"
    if app.json_mode:
        app.out.emit_json(
            {
                "config_file": str(settings.config_path),
                "config_file_found": settings.config_found,
                "capi_url": settings.display_base_url,
                "settings": settings.as_dict(),
                "warnings": settings.warnings,
                "storage_encryption": encryption,
            }
        )
        return
    found = "" if settings.config_found else " (not found: defaults apply; `cscapi init` creates it)"
    app.out.print(f"config file: {esc(settings.config_path)}{found}")
    app.out.print(f"CAPI URL:    {esc(settings.display_base_url)}")
    if settings.is_lapi:
        app.out.print(f"decisions:   from the LAPI at {esc(settings.display('lapi_url'))} ({settings.lapi_mode} mode)")
    app.out.print(f"secrets at rest in the storage: encryption {encryption}")
    rows = [(s.section, s.name, settings.display(s.name), settings.source(s.name)) for s in SETTINGS]
    app.out.table(["section", "setting", "value", "source"], rows)


@config.command("path")
@pass_app
def path(app: AppContext) -> None:
    """Print the path of the config file in use (it may not exist yet).

    \b
    Example:
      cscapi config path
    """
    import os

    from cscapi.settings import default_config_path

    click.echo(app.config_path or os.environ.get("CSCAPI_CONFIG") or str(default_config_path()))
