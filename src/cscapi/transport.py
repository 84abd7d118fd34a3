"""The only HTTP code of the client: send a protocol :class:`~cscapi.protocol.Request` with httpx (sync or async).

One ``httpx.Client`` (or ``AsyncClient``) per CAPI client, created on first use, so batches reuse one connection
pool. A request that gets no answer (timeout, refused or reset connection) comes back as a
:class:`~cscapi.protocol.NetworkFailure` value; the caller decides whether to retry.

Test hook: ``DEFAULT_TRANSPORT`` / ``DEFAULT_ASYNC_TRANSPORT`` (module attributes, None by default) are used when the
config gives no ``transport``; tests set them (``monkeypatch``) to run unchanged legacy code against a mock server.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from cscapi.errors import ConfigurationError
from cscapi.protocol.http import NetworkFailure, Request, Response

__all__ = ["DEFAULT_ASYNC_TRANSPORT", "DEFAULT_TRANSPORT", "AsyncTransport", "SyncTransport", "TransportSettings"]

DEFAULT_TRANSPORT: httpx.BaseTransport | None = None
DEFAULT_ASYNC_TRANSPORT: httpx.AsyncBaseTransport | None = None


@dataclass(frozen=True)
class TransportSettings:
    """What the httpx client is built from (taken from ``CAPIClientConfig``)."""

    user_agent: str
    timeout: float | httpx.Timeout | None = 30.0
    proxy: str | None = None
    verify: bool | str | ssl.SSLContext = True
    transport: httpx.BaseTransport | None = None
    async_transport: httpx.AsyncBaseTransport | None = None

    def __repr__(self) -> str:
        """Every field, with the password of the proxy URL masked."""
        from dataclasses import fields

        from cscapi.redact import mask_url

        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown.append(f"{f.name}={mask_url(value) if f.name == 'proxy' and value else value!r}")
        return f"TransportSettings({', '.join(shown)})"

    def client_kwargs(self) -> dict[str, Any]:
        verify = self.verify
        if isinstance(verify, str):
            try:
                verify = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"Cannot load the CA bundle {verify!r}: {exc}.") from None
        kwargs: dict[str, Any] = {
            "timeout": self.timeout,
            "verify": verify,
            "headers": {"User-Agent": self.user_agent},
            "follow_redirects": False,
            "trust_env": False,
        }
        if self.proxy:
            kwargs["proxy"] = self.proxy
        return kwargs


def _response(resp: httpx.Response, content: bytes | None = None) -> Response:
    return Response(
        status_code=resp.status_code,
        headers={k.lower(): v for k, v in resp.headers.items()},
        content=resp.content if content is None else content,
        url=str(resp.request.url.copy_with(query=None)),
    )


INLINE_DECODE_BYTES = 64 * 1024
"""Async answers whose raw body is larger than this are joined and decompressed in a worker thread, not on the loop."""


def _decode(resp: httpx.Response, chunks: list[bytes]) -> bytes:
    """The raw (still ``Content-Encoding``-encoded) body chunks of ``resp``, joined and decoded exactly as httpx would.

    httpx picks the decoders from the headers when a ``Response`` is built from content (gzip, deflate, br and zstd
    when their packages are installed, several encodings in order, unknown ones left as they are), so building one
    here applies its own semantics, off the event loop. Raises ``httpx.DecodingError`` on a corrupt body.
    """
    raw = b"".join(chunks)
    if not resp.headers.get("content-encoding"):
        return raw
    return httpx.Response(resp.status_code, headers=resp.headers, content=raw).content


def _failure(exc: httpx.HTTPError, url: str) -> NetworkFailure:
    if isinstance(exc, httpx.TimeoutException):
        return NetworkFailure("timeout", type(exc).__name__, url)
    if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.ProtocolError):
        return NetworkFailure("connect", f"{type(exc).__name__}: {str(exc)[:120]}", url)
    return NetworkFailure("protocol", f"{type(exc).__name__}: {str(exc)[:120]}", url)


def _build(client: httpx.Client | httpx.AsyncClient, request: Request) -> httpx.Request:
    try:
        return client.build_request(
            request.method,
            request.url,
            headers=request.headers,
            content=request.content,
            params=request.params or None,
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise ConfigurationError(f"Cannot send the {request.operation} request: {exc}.") from None


_NOT_RETRYABLE = (httpx.InvalidURL, httpx.UnsupportedProtocol)


class SyncTransport:
    """Blocking sender over one ``httpx.Client``."""

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()  # threads sharing a CAPIClient share one pool

    @property
    def client(self) -> httpx.Client:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    kwargs = self.settings.client_kwargs()
                    transport = self.settings.transport or DEFAULT_TRANSPORT
                    if transport is not None:
                        kwargs["transport"] = transport
                    self._client = httpx.Client(**kwargs)
                client = self._client
        return client

    def send(self, request: Request) -> Response | NetworkFailure:
        """Send and read the whole answer; a network failure is returned, not raised."""
        client = self.client
        built = _build(client, request)
        try:
            resp = client.send(built, follow_redirects=request.follow_redirects)
        except _NOT_RETRYABLE as exc:
            raise ConfigurationError(f"Cannot send the {request.operation} request: {exc}.") from None
        except httpx.HTTPError as exc:
            return _failure(exc, request.url)
        return _response(resp)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class AsyncTransport:
    """Awaiting sender over one ``httpx.AsyncClient`` (created inside the running event loop)."""

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            kwargs = self.settings.client_kwargs()
            transport = self.settings.async_transport or DEFAULT_ASYNC_TRANSPORT
            if transport is None and isinstance(self.settings.transport, httpx.AsyncBaseTransport):
                transport = self.settings.transport  # e.g. an httpx.MockTransport serves both
            if transport is not None:
                kwargs["transport"] = transport
            self._client = httpx.AsyncClient(**kwargs)
        return self._client

    async def send(self, request: Request) -> Response | NetworkFailure:
        """Send and read the whole answer; a network failure is returned, not raised.

        The body is read raw, chunk by chunk (the loop runs between chunks); a large one (a startup decisions
        stream is ~10 MB decompressed) is joined and decompressed in a worker thread, so the loop never stalls on it.
        """
        client = self.client
        built = _build(client, request)
        try:
            resp = await client.send(built, follow_redirects=request.follow_redirects, stream=True)
            if resp.is_stream_consumed:  # a body read before it reached us (an httpx.MockTransport answer)
                await resp.aclose()
                return _response(resp)
            try:
                chunks = [chunk async for chunk in resp.aiter_raw()]
            finally:
                await resp.aclose()
            if sum(len(chunk) for chunk in chunks) <= INLINE_DECODE_BYTES:
                content = _decode(resp, chunks)
            else:
                content = await asyncio.to_thread(_decode, resp, chunks)
        except _NOT_RETRYABLE as exc:
            raise ConfigurationError(f"Cannot send the {request.operation} request: {exc}.") from None
        except httpx.HTTPError as exc:
            return _failure(exc, request.url)
        return _response(resp, content)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
