"""The HTTP values the protocol layer speaks: a request to send, a response received, a network failure.

Plain data, no I/O: ``cscapi.transport`` turns a :class:`Request` into a :class:`Response` (or a
:class:`NetworkFailure`) with httpx; everything else only builds and reads these values.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field, replace
from typing import Any

from cscapi._version import __version__
from cscapi.errors import ValidationError
from cscapi.redact import mask_userinfo

__all__ = [
    "DEFAULT_GZIP_THRESHOLD",
    "NetworkFailure",
    "Request",
    "Response",
    "encode_json_body",
    "loads_json",
    "safe_url",
    "user_agent",
]

DEFAULT_GZIP_THRESHOLD = 5120
"""Bodies larger than this many bytes are gzipped, as the official Go client does (5 KiB)."""

_GZIP_LEVEL = 5


@dataclass(frozen=True)
class Request:
    """One HTTP request, fully built: absolute ``url``, headers, and the already encoded body.

    ``operation`` names what the request does (``login``, ``signals`` ...) for messages and logs; ``authenticated``
    says the caller must add ``Authorization: Bearer <token>`` (the protocol layer never holds tokens).
    ``max_bytes`` caps the decompressed 2xx body (None: the transport's ``max_response_bytes``); ``limit_name`` is the
    ``CAPIClientConfig`` field that sets it, named in the error when a body is larger. ``deadline`` shortens the
    transport's total deadline for this request only (a signals POST must end before its claim's lease does).
    """

    method: str
    url: str
    operation: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    authenticated: bool = False
    follow_redirects: bool = False
    max_bytes: int | None = None
    limit_name: str = "max_response_bytes"
    deadline: float | None = None

    def with_header(self, name: str, value: str) -> Request:
        """A copy with one more header (used to add the bearer token just before sending)."""
        headers = dict(self.headers)
        headers[name] = value
        return replace(self, headers=headers)

    def with_limit(self, max_bytes: int, limit_name: str) -> Request:
        """A copy whose decompressed 2xx body may hold at most ``max_bytes`` (``limit_name`` names the setting)."""
        return replace(self, max_bytes=max_bytes, limit_name=limit_name)

    def with_deadline(self, seconds: float) -> Request:
        """A copy whose whole exchange must end within ``seconds`` (at most the transport's own deadline)."""
        return replace(self, deadline=seconds)

    def __repr__(self) -> str:  # never show headers (Authorization) nor the body (passwords)
        return f"Request({self.method} {safe_url(self.url)}, operation={self.operation!r})"


@dataclass(frozen=True)
class Response:
    """One HTTP response: status, headers (lowercase names) and the raw body."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    url: str = ""

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.content.decode("utf-8", errors="replace")

    def header(self, name: str) -> str | None:
        """A header value, looked up case-insensitively."""
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` when it is not JSON or nested too deeply to read."""
        return loads_json(self.content)

    def __repr__(self) -> str:  # a login response body holds a token
        return f"Response({self.status_code}, url={safe_url(self.url)!r}, {len(self.content)} bytes)"


@dataclass(frozen=True)
class NetworkFailure:
    """No HTTP answer: ``kind`` is ``timeout``, ``deadline`` (no complete answer within the total deadline),
    ``connect`` (refused, reset, DNS), ``tls`` (certificate not verified: not retried) or ``protocol``."""

    kind: str
    detail: str
    url: str = ""

    def describe(self) -> str:
        """A one-line description without secrets (URLs we build carry none)."""
        return f"{self.kind} error ({self.detail})"


PIECEWISE_JSON_BYTES = 256 * 1024
"""Documents larger than this are parsed in pieces (``jsonchunks``): no single C call holds the GIL for long."""


def loads_json(data: bytes | str) -> Any:
    """``json.loads`` that raises ``ValueError`` (never ``RecursionError``) on a hostile, deeply nested document.

    A large document (a startup decisions stream) is parsed in many short steps, so that a worker thread parsing it
    lets the event loop's thread run in between (one ``json.loads`` holds the GIL for the whole document; figures in
    docs/benchmarks.md).
    """
    try:
        if len(data) > PIECEWISE_JSON_BYTES:
            from cscapi.protocol.jsonchunks import loads_in_pieces

            return loads_in_pieces(data)
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def safe_url(url: str) -> str:
    """``url`` without its query string or user info, for logs and messages (signed link URLs carry secrets there)."""
    base, _, query = mask_userinfo(url).partition("?")  # a password may hold '/' or '?': masked first
    return f"{base}?…" if query else base


def encode_json_body(payload: Any, gzip_threshold: int = DEFAULT_GZIP_THRESHOLD) -> tuple[bytes, dict[str, str]]:
    """Encode ``payload`` as compact JSON; gzip it when larger than ``gzip_threshold`` bytes.

    Returns the body and the headers that describe it (``Content-Type`` and, if compressed, ``Content-Encoding``).
    """
    try:
        raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # not serialisable, circular, or nested too deeply
        raise ValidationError(
            f"The request body cannot be encoded as JSON ({type(exc).__name__}: {str(exc)[:100]}).",
            field="payload",
            hint="Pass plain dicts, lists, strings and numbers; nothing was sent.",
        ) from None
    headers = {"Content-Type": "application/json"}
    if gzip_threshold >= 0 and len(raw) > gzip_threshold:
        headers["Content-Encoding"] = "gzip"
        return gzip.compress(raw, compresslevel=_GZIP_LEVEL, mtime=0), headers
    return raw, headers


def user_agent(prefix: str = "") -> str:
    """``{prefix}-capi-py-sdk/{version}``, or ``capi-py-sdk/{version}`` without a prefix (never a leading dash)."""
    product = f"{prefix}-capi-py-sdk" if prefix else "capi-py-sdk"
    return f"{product}/{__version__}"
