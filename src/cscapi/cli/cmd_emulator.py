"""``cscapi emulator``: run the local CAPI emulator as a real server (delegates to ``cscapi.emulator.server``)."""

from __future__ import annotations

import click

from cscapi.cli._context import AppContext, pass_app


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def emulator(app: AppContext, args: tuple[str, ...]) -> None:
    """Start the local CAPI emulator (default http://127.0.0.1:8081/); `cscapi emulator --help` lists its options.

    \b
    Example:
      cscapi emulator --port 8081 --seed 1 --state /tmp/capi.db
      CSCAPI_TARGET=emulator cscapi machines register    # in another terminal
    """
    import logging

    from cscapi.emulator.server import admin_token_from, build_parser, config_from_args, serve

    parser = build_parser(prog="cscapi emulator")
    try:
        parsed = parser.parse_args(list(args))
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse already printed why
        raise click.exceptions.Exit(int(exc.code or 0)) from None
    logging.basicConfig(level=getattr(logging, parsed.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(parsed)
    code = serve(
        config,
        parsed.host,
        parsed.port,
        access_log=parsed.access_log,
        log_level=parsed.log_level,
        token_source=admin_token_from(parsed)[1],
    )
    if code:
        raise click.exceptions.Exit(code)
