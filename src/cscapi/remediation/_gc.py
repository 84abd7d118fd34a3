"""Pause the cyclic garbage collector while building large acyclic structures (index, state, parsed lists).

Hundreds of thousands of fresh tuples trigger many generation-0 and -2 passes that find nothing to free (there are no
cycles in them): pausing the collector halves a 200k-decision index build. It is restored as it was, even on error.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

__all__ = ["gc_paused", "without_gc"]

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def without_gc(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with the collector paused."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with gc_paused():
            return fn(*args, **kwargs)

    return wrapper
