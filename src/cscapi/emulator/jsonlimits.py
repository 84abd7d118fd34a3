"""Bounded JSON decoding for everything the emulator reads from outside (request bodies, tokens, config files).

``json.loads`` recurses once per nesting level and raises ``RecursionError`` (not a ``ValueError``) on a body such as
``"[" * 100_000``; a body just under the interpreter's limit parses, then breaks whatever walks it next (schema
validation, ``repr`` in an error message, ``json.dumps`` when stored). :func:`loads_limited` turns both into a
:class:`JSONTooDeep` (a ``ValueError``), so callers keep a single ``except ValueError``. Standard library only.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "JSONTooDeep", "depth_exceeds", "loads_limited"]

#: Deepest nesting of arrays and objects accepted (CAPI bodies need about 7: usage metrics).
MAX_JSON_DEPTH = 64

_CONTAINERS = (dict, list)


class JSONTooDeep(ValueError):
    """A JSON document nested deeper than allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels of arrays and objects")
        self.limit = limit


def depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` (decoded JSON) nests arrays/objects more than ``limit`` deep. Iterative: no recursion."""
    level = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            items = node.values() if type(node) is dict else node
            below += [v for v in items if type(v) in _CONTAINERS]
        level = below
    return False


def _without_nulls(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None} if None in obj.values() else obj


def loads_limited(raw: bytes | str, *, drop_null: bool = False, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses documents nested more than ``max_depth`` levels (``JSONTooDeep``).

    With ``drop_null``, ``null`` object members are removed as the text is parsed (they count as absent).
    Other errors are the usual ``ValueError`` (``JSONDecodeError``, ``UnicodeDecodeError``).
    """
    if isinstance(raw, bytes):
        opened = raw.count(b"[") + raw.count(b"{")
        has_null = drop_null and b"null" in raw
    else:
        opened = raw.count("[") + raw.count("{")
        has_null = drop_null and "null" in raw
    try:
        value = json.loads(raw, object_hook=_without_nulls) if has_null else json.loads(raw)
    except RecursionError:
        raise JSONTooDeep(max_depth) from None
    if opened > max_depth and depth_exceeds(value, max_depth):  # fewer brackets than the limit: cannot be too deep
        raise JSONTooDeep(max_depth)
    return value
