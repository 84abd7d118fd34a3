"""Bulk C-speed work in slices, handing the GIL over between slices (keeps an event loop responsive).

A single C call over 100k items (``dict.update(zip(...))``, ``json.dumps``, ``list(map(...))``) never reaches a
bytecode boundary, so it holds the GIL from start to end: an event loop sharing the process stalls for its whole
duration (figures: docs/benchmarks.md). Cut into slices of ``CHUNK`` items, each call is short, and ``time.sleep(0)``
between slices lets a waiting thread (the event loop) take the GIL right away.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["CHUNK", "slices", "yield_gil"]

T = TypeVar("T")
CHUNK = 8192
"""Items per slice: about a millisecond of C-speed work, small enough that the event loop never waits long."""


def yield_gil() -> None:
    """Release the GIL for a moment so that any thread waiting for it (an event loop) runs now."""
    time.sleep(0)


def slices(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``, yielding the GIL before each slice but the first."""
    for start in range(0, len(items), size):
        if start:
            yield_gil()
        yield items[start : start + size]
