"""Reading a JSON request body, for the CAPI endpoints and the admin API alike: size-bounded (before and after gzip),
nesting-bounded, and every problem an ``ApiError`` (400, 413 or 415) saying what was wrong, never a 500."""

from __future__ import annotations

import asyncio
import threading
import zlib
from typing import Any

from starlette.requests import ClientDisconnect, Request

from cscapi.emulator.jsonlimits import JSONTooDeep, loads_limited
from cscapi.emulator.state import ApiError

__all__ = ["BodyBudget", "decode_json", "read_json"]


SMALL_BODY = 64 * 1024
"""A body of at most this many bytes (a login, a registration, a few signals) may use the budget's reserve."""


class BodyBudget:
    """The request-body bytes all requests together may hold while their bodies arrive: many slow senders then get
    503 instead of growing the emulator's memory without bound (each body alone is bounded by ``max_bytes``).

    The last ``reserve`` bytes (an eighth of the limit, at most 1 MiB) are kept for small bodies: slow senders of large
    ones can fill the rest, never the whole, so a normal request is still served while they stall."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserve = min(limit // 8, 1024 * 1024)
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int, body_size: int | None = None) -> bool:
        """Reserve ``n`` more bytes of a body of at least ``body_size`` bytes (its Content-Length, or what arrived so
        far with these ``n``; ``n`` when not given); False (nothing reserved) when that would go over the limit, or
        into the reserve for a body of more than ``SMALL_BODY``."""
        cap = self.limit if (n if body_size is None else body_size) <= SMALL_BODY else self.limit - self.reserve
        with self._lock:
            if self.used + n > cap:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        """Release bytes reserved with :meth:`take`."""
        with self._lock:
            self.used -= n


async def _read_body(request: Request, max_bytes: int, budget: BodyBudget | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    try:
        async for chunk in request.stream():
            if size + len(chunk) > max_bytes:
                raise ApiError(413, "request body too large", f"at most {max_bytes} bytes")
            if budget is not None and not budget.take(len(chunk), max(declared, size + len(chunk))):
                raise ApiError(
                    503,
                    "emulator busy: too many request bodies arriving at once",
                    "retry in a few seconds",
                    {"Retry-After": "5", "Connection": "close"},
                )
            size += len(chunk)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client disconnected before sending the whole body") from None
    finally:
        if budget is not None:
            budget.give(size)
    return b"".join(chunks)


def decode_json(raw: bytes, *, drop_null: bool = False) -> Any:
    """Parse a body already read; ``ApiError(400)`` when it is not UTF-8 JSON or nests too deep."""
    try:
        return loads_limited(raw, drop_null=drop_null)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed JSON body", "the body is not UTF-8") from None
    except JSONTooDeep as exc:
        raise ApiError(400, "malformed JSON body: nested too deeply", str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, "malformed JSON body", str(exc)) from None


async def read_json(
    request: Request,
    max_bytes: int,
    *,
    drop_null: bool = False,
    empty: Any = None,
    timeout: float | None = None,
    budget: BodyBudget | None = None,
) -> Any:
    """The JSON body (gzip accepted), bounded by ``max_bytes`` before and after decompression; ``ApiError`` 400/413/415.

    With ``drop_null``, ``null`` object members are removed as the body is parsed (they count as absent).
    An empty body is a 400, unless ``empty`` is given: it is then returned instead. A body not all received
    within ``timeout`` seconds is a 408 (and the connection is closed); ``budget`` bounds the bytes all requests
    hold at once (503 beyond).
    """
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > max_bytes:
                raise ApiError(413, "request body too large", f"at most {max_bytes} bytes")
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
    try:
        raw = await asyncio.wait_for(_read_body(request, max_bytes, budget), timeout)
    except asyncio.TimeoutError:
        raise ApiError(
            408, "request body too slow", f"send the whole body within {timeout:g} s", {"Connection": "close"}
        ) from None
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in {"gzip", "x-gzip"}:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(raw, max_bytes + 1)
        except zlib.error as exc:
            raise ApiError(400, "request body is not valid gzip", str(exc)) from None
        if len(raw) > max_bytes or inflater.unconsumed_tail:
            raise ApiError(413, "request body too large once decompressed", f"at most {max_bytes} bytes")
        if not inflater.eof:
            raise ApiError(400, "request body is not valid gzip", "truncated gzip stream")
    elif encoding not in {"", "identity"}:
        raise ApiError(415, f"unsupported Content-Encoding {encoding!r}", "send identity or gzip")
    if not raw.strip():
        if empty is not None:
            return empty
        raise ApiError(400, "empty request body", "a JSON body is required")
    return decode_json(raw, drop_null=drop_null)
