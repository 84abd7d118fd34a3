"""The state one ``cscapi`` invocation carries: global flags, the effective settings, and the output."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from cscapi.cli._output import Output, clean

F = TypeVar("F", bound=Callable[..., Any])


class AppContext:
    """Root options plus lazily loaded settings. Commands get it with :func:`pass_app`."""

    def __init__(
        self,
        *,
        config_path: str | None = None,
        root_flags: dict[str, Any] | None = None,
        json_mode: bool = False,
        debug: bool = False,
        color: bool | None = None,
    ) -> None:
        self.config_path = config_path
        self.root_flags = {k: v for k, v in (root_flags or {}).items() if v is not None}
        self.debug = debug
        self.out = Output(json_mode=json_mode, color=color)

    @property
    def json_mode(self) -> bool:
        return self.out.json_mode

    def settings(self, **flags: Any) -> Any:
        """The effective settings: command flags, then root flags, then env, file and defaults."""
        from cscapi.settings import load_settings

        merged = dict(self.root_flags)
        merged.update({k: v for k, v in flags.items() if v is not None and v != ()})
        settings = load_settings(merged, config_path=self.config_path)
        for warning in settings.warnings:
            self.out.warn(warning)
        return settings


def json_option(func: F) -> F:
    """Add ``--json`` to a command (the root ``cscapi --json`` works too)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.ensure_object(AppContext).out.json_mode = True
        return value

    return click.option(
        "--json",
        "json_flag",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=callback,
        help="Print JSON on stdout for scripts.",
    )(func)


def pass_app(func: F) -> F:
    """Pass the :class:`AppContext` as the first argument."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        return func(ctx.ensure_object(AppContext), *args, **kwargs)

    return cast(F, wrapper)


class _EchoHandler(logging.Handler):
    """Log records as ``warning: message`` lines on the *current* stderr (test runners swap it).

    With ``service_format()`` (``cscapi run``), lines are ``2026-11-21T22:59:42Z INFO message`` instead.
    """

    level_prefix = True

    def service_format(self, enabled: bool) -> None:
        """Timestamped ``LEVEL message`` lines for a long-running service, or back to ``level: message``."""
        import time

        self.level_prefix = not enabled
        if enabled:
            formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
            formatter.converter = time.gmtime
            self.setFormatter(formatter)
        else:
            self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # a message often carries a server's text: its CR/LF are escaped too, so it cannot forge a log line;
            # only a traceback (our own, appended by the formatter) keeps its newlines
            line = logging.makeLogRecord(record.__dict__)
            line.msg, line.args = clean(record.getMessage()), None
            text = clean(self.format(line), keep_newlines=True)
            click.echo(f"{record.levelname.lower()}: {text}" if self.level_prefix else text, err=True)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


_HANDLER = _EchoHandler()


def setup_logging(level: int) -> None:
    """Show the library's log records at ``level`` and above on stderr (installed once, level updated each run)."""
    logger = logging.getLogger("cscapi")
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)
    logger.setLevel(level)
    _HANDLER.setLevel(level)
    logger.propagate = False
