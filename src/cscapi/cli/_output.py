"""How the CLI prints: rich tables and progress for people, plain JSON for scripts, no colour when not a terminal.

rich is imported on first use, never at ``--help`` time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from cscapi._text import plural as plural  # the one helper, shared with the library's log lines

if TYPE_CHECKING:
    from rich.console import Console


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        from cscapi.timeutil import format_rfc3339

        return format_rfc3339(value)
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


#: Characters a terminal may act on: C0 controls (but tab), DEL, C1 controls (0x9b is a one-byte CSI), line and
#: paragraph separators, and the bidirectional overrides that reorder what is shown.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_NEWLINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: The same characters, except the C0 ones that JSON escapes already.
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: Any, *, keep_newlines: bool = False) -> str:
    """``value`` as text safe for a terminal: control characters (ESC, OSC, BEL, C1, bidi overrides ...) are shown
    escaped (``\\x1b``), never sent raw. Every text the CLI prints that came from outside (a server, a file, a
    database) goes through here, so a hostile answer cannot retitle, clear or rewrite the terminal."""
    text = value if isinstance(value, str) else str(value)
    pattern = _CONTROL_KEEP_NEWLINES if keep_newlines else _CONTROL
    return pattern.sub(_escape, text) if pattern.search(text) else text


def esc(value: Any) -> str:
    """``value`` as text that rich prints literally: no markup (square brackets in names, reasons or paths) and no
    terminal control characters (see :func:`clean`)."""
    text = clean(value)
    return text.replace("[", "\\[") if "[" in text else text


def to_json(data: Any) -> str:
    """Serialise for ``--json``: datetimes as RFC 3339, dataclasses as dicts; C1 and bidi controls escaped too (JSON
    escapes the C0 ones), so piping the JSON to a terminal is as safe as the tables."""
    text = json.dumps(data, indent=2, default=_json_default, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) if _JSON_UNSAFE.search(text) else text


class Progress:
    """A progress bar that does nothing when the output is not a terminal (or in ``--json`` mode)."""

    def __init__(self, bar: Any | None, task: Any | None) -> None:
        self._bar = bar
        self._task = task

    def advance(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        if self._bar is not None:
            kwargs: dict[str, Any] = {}
            if total is not None:
                kwargs["total"] = total
            if description is not None:
                kwargs["description"] = description
            self._bar.update(self._task, **kwargs)


class Output:
    """Everything a command prints goes through here."""

    def __init__(self, *, json_mode: bool = False, color: bool | None = None) -> None:
        self.json_mode = json_mode
        self.color = color
        self._console: Console | None = None
        self._err_console: Console | None = None

    # ---- consoles ----------------------------------------------------------------------------------------------

    def _make_console(self, stderr: bool) -> Console:
        from rich.console import Console

        stream = sys.stderr if stderr else sys.stdout
        tty = stream.isatty()
        no_color = self.color is False or (self.color is None and (not tty or "NO_COLOR" in os.environ))
        return Console(
            stderr=stderr,
            no_color=no_color,
            force_terminal=True if self.color else None,
            highlight=False,
            emoji=False,
            width=None if tty else 200,
            soft_wrap=not tty,
        )

    @property
    def console(self) -> Console:
        """The stdout console (rich)."""
        if self._console is None:
            self._console = self._make_console(False)
        return self._console

    @property
    def err_console(self) -> Console:
        """The stderr console (rich)."""
        if self._err_console is None:
            self._err_console = self._make_console(True)
        return self._err_console

    @property
    def interactive(self) -> bool:
        """True when progress bars make sense: a terminal on stderr and not ``--json``."""
        return not self.json_mode and sys.stderr.isatty()

    # ---- printing ----------------------------------------------------------------------------------------------

    def emit_json(self, data: Any) -> None:
        """Print ``data`` as JSON on stdout."""
        click.echo(to_json(data))

    def print(self, text: str = "", *, style: str | None = None) -> None:
        """A line for people (rich markup allowed); silent in ``--json`` mode."""
        if not self.json_mode:
            self.console.print(text, style=style)

    def step(self, text: str) -> None:
        """A headline for one step of a longer story (``cscapi demo``)."""
        if not self.json_mode:
            self.console.print(f"\n[bold]{text}[/bold]")

    def ok(self, text: str) -> None:
        self.print(f"[green]✓[/green] {text}")

    def note(self, text: str) -> None:
        """A secondary line, on stderr, also in ``--json`` mode (it does not pollute stdout). Printed literally."""
        self.err_console.print(clean(text), style="dim", markup=False)

    def warn(self, text: str) -> None:
        """A warning line on stderr; ``text`` is printed literally (it often carries a server's reason)."""
        self.err_console.print(f"[yellow]warning:[/yellow] {esc(text)}")

    def error(self, text: str) -> None:
        """One line on stderr, markup disabled (messages come from errors, not from us)."""
        line = clean(text.replace("\r\n", " ").replace("\n", " "))
        self.err_console.print("error: " + line, markup=False, style="red", soft_wrap=True)

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        title: str | None = None,
        empty: str = "nothing to show",
        markup: bool = False,
    ) -> None:
        """A rich table of ``rows``; ``empty`` is printed instead when there are none.

        Cells are printed literally unless ``markup`` (then the caller escapes untrusted parts with :func:`esc`).
        """
        if self.json_mode:
            return
        if not rows:
            self.console.print(empty, style="dim")
            return
        from rich.table import Table

        table = Table(title=title and esc(title), title_justify="left", header_style="bold")
        for name in columns:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*("" if cell is None else (str(cell) if markup else esc(cell)) for cell in row))
        self.console.print(table)

    def key_values(self, pairs: Sequence[tuple[str, Any]], *, title: str | None = None) -> None:
        """A two-column table of labels and values."""
        if self.json_mode:
            return
        from rich.table import Table

        table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in pairs:
            table.add_row(esc(key), "" if value is None else esc(value))
        self.console.print(table)

    @contextlib.contextmanager
    def progress(
        self, description: str, total: int | None = None, *, counted: bool | None = None
    ) -> Iterator[Progress]:
        """A transient rich progress bar on stderr (a no-op when not interactive).

        ``counted`` (default: a total is given) shows a bar and ``done/total``; otherwise a spinner.
        """
        if not self.interactive:
            yield Progress(None, None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        # an unknown total is a spinner, never "0/?"; a total set later (update) shows the count from then on
        columns = [BarColumn(), MofNCompleteColumn()] if (counted or total is not None) else [SpinnerColumn()]
        bar = RichProgress(
            TextColumn("{task.description}"),
            *columns,
            TimeElapsedColumn(),
            console=self.err_console,
            transient=True,
        )
        with bar:
            task = bar.add_task(description, total=total)
            yield Progress(bar, task)
