"""Pause the cyclic garbage collector while a large, acyclic result is built (a parsed stream, an index, a state).

Parsing a startup stream allocates a few hundred thousand dicts and strings; the generation-2 passes they trigger
hold the GIL, free nothing (there are no cycles) and stall every other thread, the event loop's included. Pausing
is a measured win (shorter parse, shorter longest stall: docs/benchmarks.md), so it stays, scoped:

* only around the functions decorated with :func:`without_gc` (``parse_stream``, the engine's ``apply_stream``,
  ``parse_blocklist``, ``build_index``, ``encode_state`` / ``decode_state``), never at import or for a whole call;
* restored in a ``finally``, so an exception never leaves the collector off;
* nestable and thread-safe: one counter under a lock; the collector is re-enabled when the last pauser leaves, and
  only if it was enabled when the first one came in (a host that turned it off keeps it off).

What remains process-wide (``gc`` has no per-thread switch): while one thread parses, other threads run without
automatic collection too; the collection they miss runs when the pause ends. A host that calls ``gc.disable()``
*during* a pause has the collector re-enabled when the pause ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

__all__ = ["gc_paused", "without_gc"]

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_pausers = 0
_restore = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the collector for the ``with`` block (restored as it was, even on error)."""
    global _pausers, _restore
    with _lock:
        if _pausers == 0:
            _restore = gc.isenabled()
            gc.disable()
        _pausers += 1
    try:
        yield
    finally:
        with _lock:
            _pausers -= 1
            if _pausers == 0 and _restore:
                gc.enable()


def without_gc(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with the collector paused."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with gc_paused():
            return fn(*args, **kwargs)

    return wrapper
