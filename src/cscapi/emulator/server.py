"""``python -m cscapi.emulator``: run the emulator as a real server (uvicorn), with clean SIGINT/SIGTERM shutdown.

``main(argv)`` parses flags and returns an exit code; ``serve(config, host, port)`` is what ``cscapi emulator``
(click) calls once it has built an :class:`EmulatorConfig`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from cscapi.emulator.config import EmulatorConfig

# Building the parser (``cscapi emulator --help``) must stay instant: everything heavier than argparse (the config
# module, the state, Starlette, uvicorn, jsonschema) is imported inside the functions that run the server.

__all__ = ["ADMIN_TOKEN_ENV", "build_parser", "config_from_args", "main", "serve"]

#: Environment variable read for the admin token when neither ``--admin-token`` nor ``--admin-token-file`` is given.
ADMIN_TOKEN_ENV = "CSCAPI_EMULATOR_ADMIN_TOKEN"  # noqa: S105 - a variable name, not a secret

_DESCRIPTION = """\
  Start the local CAPI emulator: a CrowdSec Central API (CAPI v3 and legacy v2)
  for development and tests, listening on loopback. Nothing in it contacts the
  network. Flags override the --config file; docs/emulator.md has the details.

  Example:
    cscapi emulator --port 8081 --seed 1 --state /tmp/capi.db
    CSCAPI_TARGET=emulator cscapi machines register    # in another terminal
    cscapi emulator --admin-token-file token.txt --host 0.0.0.0 --port 18081
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse help laid out like the rest of the (click) CLI: ``Usage:``, description, example, ``Options:``."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=80)

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, "Usage: " if prefix is None else prefix)


def build_parser(prog: str = "python -m cscapi.emulator") -> argparse.ArgumentParser:
    """The command-line flags (standard library only, so ``--help`` answers at once)."""
    p = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [OPTIONS]",
        description=_DESCRIPTION,
        formatter_class=_HelpFormatter,
        add_help=False,
    )
    p._optionals.title = "Options"
    add = p.add_argument
    add(
        "--host",
        default="127.0.0.1",
        metavar="HOST",
        help="Address to listen on (default 127.0.0.1; warns if not loopback).",
    )
    add("--port", type=int, default=8081, metavar="N", help="Port to listen on; 0 picks a free one (default 8081).")
    add("--config", metavar="FILE", help="JSON or TOML file of settings.")
    add("--seed", type=int, metavar="N", help="Seed of the generated community blocklist and of faults (default 0).")
    add("--community-size", type=int, metavar="N", help="Number of generated community decisions (default 1000).")
    add("--community-file", metavar="FILE", help="Load the community blocklist from this file instead.")
    add(
        "--community-scenario",
        action="append",
        default=None,
        metavar="NAME",
        help="Generate the community list from this scenario only (repeatable; default: a realistic mix).",
    )
    add("--state", metavar="FILE", help="Keep state in this SQLite file (created 0600; survives restarts).")
    add(
        "--admin-token",
        metavar="TOKEN",
        help=f"Admin API token; visible in `ps`, prefer --admin-token-file or ${ADMIN_TOKEN_ENV} "
        "(default: random, printed at start).",
    )
    add("--admin-token-file", metavar="FILE", help="Read the admin API token from this file (first line).")
    add("--token-lifetime", type=float, metavar="SECONDS", help="Login token lifetime (default 3600).")
    add("--no-login-rate-limit", action="store_true", help="Turn the login rate limit off.")
    add(
        "--attachment-key",
        action="append",
        default=None,
        metavar="KEY",
        help="An enrollment attachment key to list (repeatable).",
    )
    add(
        "--only-listed-attachment-keys",
        action="store_true",
        help="Accept only listed attachment keys (default: any well-formed key, letters and digits).",
    )
    add(
        "--fault",
        action="append",
        default=None,
        metavar="SPEC",
        help="Inject a fault, ENDPOINT:key=value[,...], e.g. signals:error_rate=0.5 (repeatable).",
    )
    add("--max-batch", type=int, metavar="N", help="Most signals accepted per POST (default 250).")
    add(
        "--no-tailor-to-scenarios",
        action="store_true",
        help="Give every machine the whole community list (default: only the scenarios it logged in with).",
    )
    add("--tailor-to-scenarios", action="store_true", help=argparse.SUPPRESS)  # the default since 0.8; kept
    add("--max-connections", type=int, metavar="N", help="Most open connections; more get 503 (default 512).")
    add("--access-log", action="store_true", help="Log every request.")
    add(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        metavar="LEVEL",
        help="Log level: debug, info, warning or error (default info).",
    )
    add("-h", "--help", action="help", help="Show this message and exit.")
    return p


def _read_token_file(path: str) -> str:
    from cscapi.errors import ConfigurationError

    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"the admin token file {path} is not UTF-8 text") from None
    if not token:
        raise ConfigurationError(f"the admin token file {path} is empty", hint="Write the token on its first line.")
    return token


def admin_token_from(args: argparse.Namespace) -> tuple[str | None, str]:
    """The admin token the flags and environment give, and where it came from when that should keep it off the
    start-up banner (a file or the environment; ``""`` for ``--admin-token``, or when none is given: ``None``).

    Precedence: ``--admin-token``, ``--admin-token-file``, ``$CSCAPI_EMULATOR_ADMIN_TOKEN`` (then the config
    file's ``admin_token``, then a random one).
    """
    import os

    if args.admin_token:
        return args.admin_token, ""  # already on the command line: the banner may show it
    if args.admin_token_file:
        return _read_token_file(args.admin_token_file), args.admin_token_file
    env = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if env:
        return env, f"${ADMIN_TOKEN_ENV}"
    return None, ""


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """An :class:`EmulatorConfig` from the config file (if any) with the flags applied on top."""
    from cscapi.emulator.config import EmulatorConfig, LoginRateLimit, load_config_file, parse_fault_option

    data: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for flag, key in (
        ("seed", "seed"),
        ("community_size", "community_size"),
        ("community_file", "community_file"),
        ("state", "state_path"),
        ("token_lifetime", "token_lifetime"),
        ("max_batch", "max_batch"),
        ("max_connections", "max_connections"),
    ):
        value = getattr(args, flag)
        if value is not None:
            data[key] = value
    token, _source = admin_token_from(args)
    if token is not None:
        data["admin_token"] = token
    if args.no_tailor_to_scenarios:
        data["tailor_to_scenarios"] = False
    elif args.tailor_to_scenarios:
        data["tailor_to_scenarios"] = True
    if args.community_scenario:
        data["community_scenarios"] = list(args.community_scenario)
    if args.only_listed_attachment_keys:
        data["only_listed_attachment_keys"] = True
    if args.attachment_key:
        data["attachment_keys"] = [*data.get("attachment_keys", []), *args.attachment_key]
    if args.fault:
        faults = dict(data.get("faults", {}))
        for option in args.fault:
            endpoint, spec = parse_fault_option(option)
            faults[endpoint] = spec
        data["faults"] = faults
    config = EmulatorConfig.from_dict(data)
    if args.no_login_rate_limit:
        limit = config.login_rate_limit
        config.login_rate_limit = LoginRateLimit(**{**limit.__dict__, "enabled": False})
    return config


def _quiet_signal_handlers() -> dict[int, Any]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: None)
    return previous


def serve(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8081,
    *,
    access_log: bool = False,
    log_level: str = "info",
    out: TextIO | None = None,
    token_source: str = "",
) -> int:
    """Run until SIGINT/SIGTERM; prints the base URL (and the admin token, unless ``token_source`` says where the
    operator gave it) first. Returns the exit code (0)."""
    import signal

    import uvicorn

    from cscapi.emulator.app import create_app
    from cscapi.emulator.embedded import base_url_for, bind_socket, is_loopback_host, uvicorn_config

    out = out or sys.stdout
    app = create_app(config)
    state = app.state.emulator
    try:
        sock = bind_socket(host, port)
    except BaseException:
        state.close()
        raise
    real_port = int(sock.getsockname()[1])
    base_url = base_url_for(host, real_port)
    if not is_loopback_host(host):
        print(
            f"warning: listening on {host}, reachable from other hosts: the emulator has no TLS, weak defaults "
            "and an admin API that can reset everything; use it on trusted networks only (--host 127.0.0.1 "
            "keeps it local)",
            file=sys.stderr,
            flush=True,
        )
    print(f"cscapi emulator listening on {base_url} (give this URL to the client: base_url={base_url!r})", file=out)
    shown = f"(from {token_source})" if token_source else config.admin_token
    print(f"admin API: {base_url}admin/  token: {shown}", file=out)
    persisted = f"state in {config.state_path}" if config.state_path else "state in memory"
    limit = "on" if config.login_rate_limit.enabled else "off"
    print(
        f"{len(state.decisions)} community decisions, {persisted}, login rate limit {limit}; Ctrl-C to stop",
        file=out,
        flush=True,
    )
    uv_config = uvicorn_config(app, config, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=3)
    server = uvicorn.Server(uv_config)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was in place
    # before it started: make that a no-op so the process exits with status 0 instead of dying from the signal.
    previous = _quiet_signal_handlers()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        state.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("cscapi emulator stopped", file=out, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m cscapi.emulator``; returns 2 on a configuration error."""
    import logging

    from cscapi.errors import ConfigurationError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        return serve(
            config,
            args.host,
            args.port,
            access_log=args.access_log,
            log_level=args.log_level,
            token_source=admin_token_from(args)[1],
        )
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
