"""Pause the cyclic garbage collector while a large, acyclic result is built (a parsed stream, an index, a state).

Parsing 100k decisions allocates a few hundred thousand dicts and strings; each generation-2 pass they trigger holds
the GIL 30-60 ms and frees nothing (there are no cycles), stalling every other thread, the event loop's included.
Thread-safe and nestable: the collector is re-enabled when the last pauser leaves, and only if it was enabled when
the first one came in.
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
