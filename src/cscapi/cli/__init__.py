"""The ``cscapi`` command line: share signals, pull the community blocklist, run the agent, try it all on an emulator.

Only click is imported here; each command's module, and the library parts it needs (httpx, SQLAlchemy, rich ...),
are imported when that command runs, so ``cscapi --help`` answers at once. Every cscapi error is turned into a
one-line message and a documented exit code (see ``cscapi.cli._exit``); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from cscapi._version import __version__
from cscapi.cli import _exit
from cscapi.cli._context import AppContext
from cscapi.cli._lazy import LazyGroup

__all__ = ["cli", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("cscapi.cli.cmd_init:init", "Write a commented config file (TOML)."),
    "config": ("cscapi.cli.cmd_config:config", "Show the effective configuration and where each value came from."),
    "machines": ("cscapi.cli.cmd_machines:machines", "Register, list, inspect, enroll machines; clear a login ban."),
    "signals": ("cscapi.cli.cmd_signals:signals", "Queue, push, list and prune signals."),
    "decisions": ("cscapi.cli.cmd_decisions:decisions", "Refresh the decisions cache, check IPs, show stats."),
    "run": ("cscapi.cli.cmd_run:run", "Run the agent: push signals, refresh decisions, push metrics."),
    "emulator": ("cscapi.cli.cmd_emulator:emulator", "Start the local CAPI emulator (a real HTTP server)."),
    "demo": ("cscapi.cli.cmd_demo:demo", "Show the whole flow end to end against an embedded emulator."),
}

EPILOG = "Exit codes: " + ", ".join(f"{code} {label}" for code, label in _exit.LABELS.items()) + " (docs/cli.md)."


class RootGroup(LazyGroup):
    """The root group: turns errors into one line and an exit code, whichever subcommand raised them."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(_exit.INTERRUPTED)
        except Exception as exc:  # one line for people, the traceback only with --debug
            app = ctx.find_object(AppContext) or AppContext()
            ctx.exit(report_error(app, exc))
        return None  # pragma: no cover - ctx.exit raises


def report_error(app: AppContext, exc: BaseException) -> int:
    """Print ``exc`` as one line (plus a traceback with ``--debug``) and return its exit code."""
    from cscapi.errors import CAPIError

    if app.debug:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, CAPIError):
        text = exc.message.rstrip(".") + (f". {exc.hint}" if exc.hint else "")
        code = _exit.code_for(exc)
    elif isinstance(exc, ModuleNotFoundError):
        text = f"a dependency is missing ({exc.name}). Install the extras: pip install 'cscapi[all]'"
        code = _exit.USAGE
    else:
        text = f"unexpected {type(exc).__name__}: {exc}. Run again with --debug for the traceback, and report it"
        code = _exit.FAILURE
    app.out.error(text)
    return code


@click.group(
    cls=RootGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=EPILOG,
)
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file (default: $CSCAPI_CONFIG, else ~/.config/cscapi/config.toml).",
)
@click.option("--target", metavar="TARGET", help="CAPI to use: emulator, dev, prod or a URL [env CSCAPI_TARGET].")
@click.option("--storage", metavar="URI", help="Signal storage URL [env CSCAPI_STORAGE].")
@click.option("--decision-store", metavar="URI", help="Decision store URI [env CSCAPI_DECISION_STORE].")
@click.option("--json", "json_mode", is_flag=True, help="Print JSON on stdout for scripts.")
@click.option("--color/--no-color", default=None, help="Force colours on or off (default: only on a terminal).")
@click.option("-v", "--verbose", is_flag=True, help="Show the library's informational log lines.")
@click.option("-q", "--quiet", is_flag=True, help="Show errors only (no warnings such as retries).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(__version__, "-V", "--version", prog_name="cscapi")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    target: str | None,
    storage: str | None,
    decision_store: str | None,
    json_mode: bool,
    color: bool | None,
    verbose: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """cscapi: share attacks with CrowdSec's Central API (CAPI) and protect with the community blocklist.

    Start with `cscapi demo` (no account, no network), then `cscapi init`.
    """
    import logging

    from cscapi.cli._context import setup_logging

    setup_logging(logging.DEBUG if debug else logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING)
    ctx.obj = AppContext(
        config_path=config_path,
        root_flags={"target": target, "storage": storage, "decision_store": decision_store},
        json_mode=json_mode,
        debug=debug,
        color=color,
    )


def main(argv: list[str] | None = None) -> None:
    """The console-script entry point (``cscapi``)."""
    cli.main(args=argv, prog_name="cscapi")
