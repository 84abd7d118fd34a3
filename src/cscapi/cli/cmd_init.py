"""``cscapi init``: write a commented TOML config file (mode 0600), refusing to replace one without ``--force``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cscapi.cli._context import AppContext, json_option, pass_app
from cscapi.cli._output import esc

DEFAULT_SCENARIOS = ("crowdsecurity/ssh-bf", "crowdsecurity/http-probing")


@click.command()
@click.option("--target", metavar="TARGET", help="emulator (default), dev, prod, or the URL of a CAPI root.")
@click.option(
    "-s",
    "--scenario",
    "scenarios",
    multiple=True,
    metavar="AUTHOR/NAME",
    help="A scenario your software detects (repeat). Default: " + ", ".join(DEFAULT_SCENARIOS) + ".",
)
@click.option("--user-agent-prefix", metavar="NAME", help="Your product's name, first in the User-Agent.")
@click.option("--machine-id-prefix", metavar="PREFIX", help="Prefix of generated machine ids.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the file instead of writing it.")
@json_option
@pass_app
def init(
    app: AppContext,
    target: str | None,
    scenarios: tuple[str, ...],
    user_agent_prefix: str | None,
    machine_id_prefix: str | None,
    force: bool,
    to_stdout: bool,
) -> None:
    """Write a commented config file with the scenarios, CAPI target, storage URIs, user agent and cadences.

    \b
    Example:
      cscapi init --target emulator -s crowdsecurity/ssh-bf -s crowdsecurity/http-probing
      cscapi --config ./cscapi.toml init --target prod --user-agent-prefix myapp
    """
    from cscapi.settings import (
        SETTINGS,
        default_config_path,
        default_data_dir,
        render_config_file,
        write_config_file,
    )

    given = {
        "target": target or app.root_flags.get("target") or "emulator",
        "scenarios": list(scenarios) or list(DEFAULT_SCENARIOS),
        "user_agent_prefix": user_agent_prefix,
        "machine_id_prefix": machine_id_prefix,
        "storage": app.root_flags.get("storage"),
        "decision_store": app.root_flags.get("decision_store"),
    }
    specs = {s.name: s for s in SETTINGS}
    values = {}
    for name, raw in given.items():
        if raw is None:
            continue
        try:
            values[name] = specs[name].parse(raw)
        except Exception as exc:
            from cscapi.errors import ConfigurationError

            if isinstance(exc, ConfigurationError):
                raise ConfigurationError(f"{exc.message} (from {specs[name].flag})", hint=exc.hint) from None
            raise
    text = render_config_file(values, data_dir=default_data_dir())
    if to_stdout:
        click.echo(text, nl=False)
        return
    env_path = os.environ.get("CSCAPI_CONFIG")
    path = Path(app.config_path or env_path or default_config_path()).expanduser()
    write_config_file(path, text, force=force)
    from cscapi.redact import mask_url

    shown = {name: mask_url(v) if specs[name].uri and isinstance(v, str) else v for name, v in values.items()}
    if app.json_mode:
        app.out.emit_json({"path": str(path), "mode": "0600", "values": shown})
        return
    app.out.ok(f"wrote {esc(path)} (readable by you only)")
    app.out.print(f"  target: {esc(shown['target'])}; scenarios: {', '.join(values['scenarios'])}")
    app.out.print("Next: [bold]cscapi config show[/bold], then [bold]cscapi machines register[/bold].")
