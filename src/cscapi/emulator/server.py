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

__all__ = ["build_parser", "config_from_args", "main", "serve"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    p = argparse.ArgumentParser(
        prog="python -m cscapi.emulator",
        description="A local CrowdSec Central API (CAPI v3 and legacy v2) for development and tests.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="port to listen on; 0 picks a free one (default 8081)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings (flags override it)")
    p.add_argument("--seed", type=int, help="seed of the generated community blocklist (default 0)")
    p.add_argument("--community-size", type=int, help="number of generated community decisions (default 1000)")
    p.add_argument("--community-file", metavar="FILE", help="load the community blocklist from a file instead")
    p.add_argument("--state", metavar="FILE", help="keep state in this SQLite file (survives restarts)")
    p.add_argument("--admin-token", help="token of the admin API (default: random, printed at start)")
    p.add_argument("--token-lifetime", type=float, help="login token lifetime in seconds (default 3600)")
    p.add_argument("--no-login-rate-limit", action="store_true", help="turn the login rate limit off")
    p.add_argument(
        "--attachment-key",
        action="append",
        default=None,
        metavar="KEY",
        help="an enrollment attachment key to accept (repeatable)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=None,
        metavar="ENDPOINT:key=value[,...]",
        help="inject a fault, e.g. signals:error_rate=0.5,error_status=503 (repeatable)",
    )
    p.add_argument("--max-batch", type=int, help="most signals accepted per POST (default 250)")
    p.add_argument(
        "--tailor-to-scenarios",
        action="store_true",
        help="give each machine only the community decisions of the scenarios it logged in with",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """An :class:`EmulatorConfig` from the config file (if any) with the flags applied on top."""
    from cscapi.emulator.config import EmulatorConfig, LoginRateLimit, load_config_file, parse_fault_option

    data: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for flag, key in (
        ("seed", "seed"),
        ("community_size", "community_size"),
        ("community_file", "community_file"),
        ("state", "state_path"),
        ("admin_token", "admin_token"),
        ("token_lifetime", "token_lifetime"),
        ("max_batch", "max_batch"),
    ):
        value = getattr(args, flag)
        if value is not None:
            data[key] = value
    if args.tailor_to_scenarios:
        data["tailor_to_scenarios"] = True
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
) -> int:
    """Run until SIGINT/SIGTERM; prints the base URL and the admin token first. Returns the exit code (0)."""
    import signal

    import uvicorn

    from cscapi.emulator.app import create_app
    from cscapi.emulator.embedded import base_url_for, bind_socket

    out = out or sys.stdout
    app = create_app(config)
    state = app.state.emulator
    sock = bind_socket(host, port)
    real_port = int(sock.getsockname()[1])
    base_url = base_url_for(host, real_port)
    print(f"cscapi emulator listening on {base_url} (give this URL to the client: base_url={base_url!r})", file=out)
    print(f"admin API: {base_url}admin/  token: {config.admin_token}", file=out)
    persisted = f"state in {config.state_path}" if config.state_path else "state in memory"
    limit = "on" if config.login_rate_limit.enabled else "off"
    print(
        f"{len(state.decisions)} community decisions, {persisted}, login rate limit {limit}; Ctrl-C to stop",
        file=out,
        flush=True,
    )
    uv_config = uvicorn.Config(
        app, log_level=log_level, access_log=access_log, lifespan="off", timeout_graceful_shutdown=3
    )
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
        return serve(config, args.host, args.port, access_log=args.access_log, log_level=args.log_level)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
