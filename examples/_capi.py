"""Shared by the examples: the CAPI to talk to, an embedded emulator unless ``--base-url`` (or ``$CAPI_URL``) is given.

Not an example itself; each example imports ``capi_url`` from here so that it runs with no account and no network.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--base-url",
        default=os.environ.get("CAPI_URL"),
        help="a CAPI root URL (default: start an embedded emulator; https://api.crowdsec.net/ is the real one)",
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
