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
    "lapi": ("cscapi.cli.cmd_lapi:lapi", "Check the connection to a local CrowdSec engine (LAPI source)."),
    "run": ("cscapi.cli.cmd_run:run", "Run the agent: push signals, refresh decisions, push metrics."),
    "emulator": ("cscapi.cli.cmd_emulator:emulator", "Start the local CAPI emulator (a real HTTP server)."),
    "demo": ("cscapi.cli.cmd_demo:demo", "Show the whole flow end to end against an embedded emulator."),
}

#: Raised (click >= 8.2) for a group called without a subcommand: its message is the help itself.
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError", click.UsageError)

EPILOG = "Exit codes: " + ", ".join(f"{code} {label}" for code, label in _exit.LABELS.items()) + " (docs/cli.md)."


class RootGroup(LazyGroup):
    """The root group: turns errors into one line and an exit code, whichever subcommand raised them.

    Usage errors too (click's own, from parsing, and ``click.UsageError`` raised by a command) are printed in the
    documented style, ``error: what is wrong. What to do.``, with exit code 2, instead of click's ``Error:`` block.
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            result = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.UsageError as exc:
            if _NO_ARGS_IS_HELP is not click.UsageError and isinstance(
                exc, _NO_ARGS_IS_HELP
            ):  # `cscapi` or `cscapi signals` alone: the help, as click does
                click.echo(exc.format_message(), err=True)
            else:
                show_usage_error(exc)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _print_error(exc.format_message(), "")
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(_exit.FAILURE)
        # without standalone mode click returns the exit code of ``ctx.exit(code)`` instead of exiting
        sys.exit(result if isinstance(result, int) else _exit.OK)

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


#: What to do when nothing answered: the commands fail at once on a refused connection (``fail_fast_connect``).
UNREACHABLE_HINT = (
    "Nothing answered there: start the emulator (`cscapi emulator`, in another terminal) or check the CAPI URL "
    "(--target, CSCAPI_TARGET, CSCAPI_BASE_URL; `cscapi config show`) and the network."
)


def _print_error(message: str, hint: str) -> None:
    from cscapi.cli._output import clean

    text = clean(message.strip())
    text += ("" if text.endswith((".", "?", "!")) else ".") + (f" {hint}" if hint else "")
    click.secho(f"error: {text}", err=True, fg="red")


def show_usage_error(exc: click.UsageError) -> None:
    """``error: <what is wrong>. Run `cscapi ... --help` for the options.`` on stderr (exit code 2 follows)."""
    path = exc.ctx.command_path if exc.ctx is not None else "cscapi"
    _print_error(exc.format_message(), f"Run `{path} --help` for the options and examples.")


def report_error(app: AppContext, exc: BaseException) -> int:
    """Print ``exc`` as one line (plus a traceback with ``--debug``) and return its exit code."""
    from cscapi.errors import CAPIError, TransportError

    if app.debug:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, CAPIError):
        # a plain network failure (the subclasses, TLS or a deadline, keep their own advice)
        lapi = "Local API" in (exc.hint or "")  # a LAPI's own advice (`cscli lapi status`), not the CAPI one
        hint = UNREACHABLE_HINT if type(exc) is TransportError and not lapi else exc.hint
        text = exc.message.rstrip(".") + (f". {hint}" if hint else "")
        code = _exit.code_for(exc)
    elif isinstance(exc, ModuleNotFoundError):
        text = (
            f"a dependency is missing ({exc.name}). Install the extras: pip install -e '.[all]' in a clone of cscapi "
            "(pip install 'cscapi[all]' once 1.0 is on PyPI)"
        )
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
@click.option(
    "--source",
    type=click.Choice(["capi", "lapi"], case_sensitive=False),
    help="Where decisions come from: capi or lapi, a local CrowdSec engine [env CSCAPI_SOURCE].",
)
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
    source: str | None,
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
        root_flags={"target": target, "source": source, "storage": storage, "decision_store": decision_store},
        json_mode=json_mode,
        debug=debug,
        color=color,
    )


def main(argv: list[str] | None = None) -> None:
    """The console-script entry point (``cscapi``)."""
    cli.main(args=argv, prog_name="cscapi")
