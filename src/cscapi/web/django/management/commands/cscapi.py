"""``manage.py cscapi <cscapi CLI arguments>``: the cscapi CLI, with ``--decision-store`` taken from
``settings.CSCAPI['DECISION_STORE']`` unless given (``manage.py cscapi decisions refresh``)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def cli_arguments(args: list[str]) -> list[str]:
    """``args`` for the cscapi CLI: Django's own ``--settings``/``--pythonpath`` dropped, the decision store added."""
    from cscapi.web.django.middleware import settings_dict

    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in _DJANGO_OPTIONS:
            skip = True
            continue
        if arg.startswith(tuple(option + "=" for option in _DJANGO_OPTIONS)):
            continue
        kept.append(arg)
    store = settings_dict().get("decision_store")
    given = any(a == "--decision-store" or a.startswith("--decision-store=") for a in kept)
    if isinstance(store, str) and not given:
        kept = ["--decision-store", store, *kept]
    return kept


class Command(BaseCommand):  # type: ignore[misc]  # Django has no type hints
    help = "Run the cscapi CLI (cscapi --help) with the decision store of settings.CSCAPI."

    requires_system_checks: list[str] = []  # the CLI does not need a valid web configuration

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        """Django's parser, except that every argument goes to the CLI untouched (``call_command`` included)."""
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parse_defaults = parser.parse_args

        def parse_args(args: Any = None, namespace: Any = None) -> argparse.Namespace:
            parsed: argparse.Namespace = parse_defaults([], namespace)
            parsed.args = [str(a) for a in args or ()]
            return parsed

        parser.parse_args = parse_args
        return parser

    def run_from_argv(self, argv: list[str]) -> None:
        """Everything after ``cscapi`` goes to the CLI untouched (its own ``--help``, ``--json``, ...)."""
        code = self._run(argv[2:])
        if code:
            raise SystemExit(code)

    def handle(self, *args: Any, **options: Any) -> None:
        code = self._run(list(args))
        if code:
            raise CommandError(f"cscapi exited with status {code}", returncode=code)

    @staticmethod
    def _run(args: list[str]) -> int:
        from cscapi.cli import main

        try:
            main(cli_arguments(args))
        except SystemExit as exc:
            code = exc.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        return 0
