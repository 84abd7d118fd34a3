"""Parse a large JSON document in many short C calls instead of one long ``json.loads``.

``json.loads`` holds the GIL for the whole document (tens of milliseconds for a large stream: docs/benchmarks.md), so
even in a worker thread it stalls the event loop that long. :func:`loads_in_pieces` walks the outer containers in
Python and hands the C scanner either one value or a batch of array elements of about ``budget`` characters at a time;
the GIL can change hands between calls. The result equals ``json.loads`` (same values, same errors as ``ValueError``).

Why a batch is safe: a batch is the text between an element's start and a candidate separator (``},{``...), parsed as
``[...]``. The scanner starts in the state the full parse has there (outside any string, at the array's depth), so if
the batch parses to its very end, the candidate was a separator of this array and the elements are the real ones; if
not (the separator was inside a string, deeper, or past the array's end), the array goes on element by element.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["DEFAULT_BUDGET", "loads_in_pieces"]

DEFAULT_BUDGET = 16 * 1024
"""Characters handed to the C scanner in one batch (well under a millisecond of GIL)."""

_WS = re.compile(r"[ \t\n\r]*")
_SEPARATORS = {  # the first character of an element -> what ends one element and starts the next of the same kind
    "{": re.compile(r"\}[ \t\n\r]*,[ \t\n\r]*\{"),
    "[": re.compile(r"\][ \t\n\r]*,[ \t\n\r]*\["),
    '"': re.compile(r'"[ \t\n\r]*,[ \t\n\r]*"'),
}
_DECODER = json.JSONDecoder()


def loads_in_pieces(data: bytes | str, *, depth: int = 4, budget: int = DEFAULT_BUDGET) -> Any:
    """``json.loads(data)``, parsed container by container down to ``depth``, arrays in batches of ``budget``."""
    text = data.decode(json.detect_encoding(data), "surrogatepass") if isinstance(data, (bytes, bytearray)) else data
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    parser = _Parser(text, budget)
    start = _WS.match(text, 0).end()  # type: ignore[union-attr]
    value, end = parser.value(start, depth)
    end = _WS.match(text, end).end()  # type: ignore[union-attr]
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


class _Parser:
    def __init__(self, text: str, budget: int) -> None:
        self.text = text
        self.budget = max(1, budget)
        self.ws = _WS.match

    def skip(self, i: int) -> int:
        return self.ws(self.text, i).end()  # type: ignore[union-attr]

    def scan(self, i: int) -> tuple[Any, int]:
        value, end = _DECODER.raw_decode(self.text, i)
        return value, end

    def char(self, i: int) -> str:
        if i >= len(self.text):
            raise json.JSONDecodeError("Unexpected end of document", self.text, i)
        return self.text[i]

    def value(self, i: int, depth: int) -> tuple[Any, int]:
        c = self.char(i)
        if depth <= 0 or c not in "[{":
            return self.scan(i)
        if c == "[":
            return self.array(i, depth)
        return self.object(i, depth)

    def object(self, i: int, depth: int) -> tuple[dict[str, Any], int]:
        text = self.text
        out: dict[str, Any] = {}
        i = self.skip(i + 1)
        if self.char(i) == "}":
            return out, i + 1
        while True:
            if self.char(i) != '"':
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
            key, i = self.scan(i)
            i = self.skip(i)
            if self.char(i) != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            out[key], i = self.value(self.skip(i + 1), depth - 1)
            i = self.skip(i)
            c = self.char(i)
            if c == "}":
                return out, i + 1
            if c != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
            i = self.skip(i + 1)

    def array(self, i: int, depth: int) -> tuple[list[Any], int]:
        text = self.text
        out: list[Any] = []
        i = self.skip(i + 1)
        if self.char(i) == "]":
            return out, i + 1
        batching = depth <= 1  # the elements would be scanned whole anyway: scan several at once
        while True:
            if batching:
                taken = self.batch(i)
                if taken is None:
                    batching = False
                else:
                    values, i = taken
                    out.extend(values)
                    i = self.skip(self.skip(i) + 1)  # past the separator's comma
                    continue
            value, i = self.value(i, depth - 1)
            out.append(value)
            i = self.skip(i)
            c = self.char(i)
            if c == "]":
                return out, i + 1
            if c != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
            i = self.skip(i + 1)

    def batch(self, i: int) -> tuple[list[Any], int] | None:
        """Elements from ``i`` up to a separator about ``budget`` characters on, or None when none is safe."""
        separator = _SEPARATORS.get(self.text[i])
        if separator is None:
            return None
        match = separator.search(self.text, i + self.budget)
        if match is None:
            return None
        cut = match.start() + 1  # just after the element's closing character
        piece = "[" + self.text[i:cut] + "]"
        try:
            values, end = _DECODER.raw_decode(piece, 0)
        except (ValueError, RecursionError):
            return None
        if end != len(piece):
            return None
        return values, cut
