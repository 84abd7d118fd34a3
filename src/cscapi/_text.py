"""Small text helpers shared by the library's log lines and the CLI's output (standard library only)."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, one: str, many: str | None = None) -> str:
    """``1 signal``, ``2 signals``: a count with its noun (``many`` for irregular plurals)."""
    return f"{count} {one if count == 1 else (many or one + 's')}"
