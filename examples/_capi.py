"""Shared by the examples: the CAPI to talk to, an embedded emulator unless ``--base-url`` (or ``$CSCAPI_BASE_URL``,
the variable the library and the CLI read too) is given.

Not an example itself; each example imports ``capi_url`` from here so that it runs with no account and no network.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any


def arguments(description: str, *, data_dir: bool = False) -> argparse.Namespace:
    """``--base-url`` (default ``$CSCAPI_BASE_URL``), and ``--data-dir`` when the example keeps files."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--base-url",
        default=os.environ.get("CSCAPI_BASE_URL"),
        help="a CAPI root URL (default: $CSCAPI_BASE_URL, else an embedded emulator; https://api.crowdsec.net/ is the "
        "real one)",
    )
    if data_dir:
        parser.add_argument(
            "--data-dir", help="keep the databases here, to run it again (default: a temporary directory)"
        )
    return parser.parse_args()


@contextlib.contextmanager
def capi_url(base_url: str | None, **emulator_options: Any) -> Iterator[tuple[str, Any]]:
    """Yield ``(base_url, emulator or None)``: the given URL, or an embedded emulator started for the example."""
    if base_url:
        yield base_url, None
        return
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    with EmbeddedEmulator(EmulatorConfig(seed=1, **emulator_options)) as emu:
        yield emu.base_url, emu
