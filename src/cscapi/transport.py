"""The only HTTP code of the client: send a protocol :class:`~cscapi.protocol.Request` with httpx (sync or async).

One ``httpx.Client`` (or ``AsyncClient``) per CAPI client, created on first use, so batches reuse one connection
pool. A request that gets no answer (timeout, refused or reset connection, total deadline passed, certificate not
verified) comes back as a :class:`~cscapi.protocol.NetworkFailure` value; the caller decides whether to retry.

Every request is bounded: in time by a total ``deadline`` (on top of httpx's per-read ``timeout``), in size by a cap
on the *decompressed* body, enforced while decompressing (a gzip bomb never inflates past the cap), and links follow
at most ``max_redirects`` redirects, never from https down to http. See "Limits and deadlines" in docs/client.md.

No module-level state: a test hands its own httpx transport in through the config (``transport=``), or points the
code at the emulator with ``CSCAPI_BASE_URL``.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from cscapi.errors import ConfigurationError, ResponseTooLargeError, UnsafeLinkError
from cscapi.limits import DEFAULT_DEADLINE as _DEADLINE_DEFAULT
from cscapi.protocol.http import NetworkFailure, Request, Response, safe_url

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_ERROR_BYTES",
    "DEFAULT_MAX_REDIRECTS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "AsyncTransport",
    "SyncTransport",
    "TransportSettings",
]

DEFAULT_DEADLINE = _DEADLINE_DEFAULT  # the one copy lives in cscapi.limits (the CLI settings read it without httpx)
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
"""Decompressed size of a 2xx answer without a limit of its own (signals, enroll, metrics: a few bytes in practice)."""
DEFAULT_MAX_ERROR_BYTES = 64 * 1024
"""Decompressed bytes of a non-2xx body kept (the rest is dropped: only the status and the message matter)."""
DEFAULT_MAX_REDIRECTS = 3
"""Redirects a link download follows."""

_STEP = 256 * 1024  # decompressed bytes produced per zlib call: memory stays bounded whatever the ratio
_ACCEPT_ENCODING = "gzip, deflate"  # what we can decompress incrementally under a cap
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class TransportSettings:
    """What the httpx client is built from (taken from ``CAPIClientConfig``)."""

    user_agent: str
    timeout: float | httpx.Timeout | None = 30.0
    proxy: str | None = None
    verify: bool | str | ssl.SSLContext = True
    transport: httpx.BaseTransport | None = None
    async_transport: httpx.AsyncBaseTransport | None = None
    deadline: float = DEFAULT_DEADLINE
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES
    max_redirects: int = DEFAULT_MAX_REDIRECTS

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
            "headers": {"User-Agent": self.user_agent, "Accept-Encoding": _ACCEPT_ENCODING},
            "follow_redirects": False,
            "trust_env": False,
        }
        if self.proxy:
            kwargs["proxy"] = self.proxy
        return kwargs

    def deadline_of(self, request: Request) -> float:
        """The total deadline of ``request``: the transport's, shortened by the request's own when it has one."""
        return self.deadline if request.deadline is None else max(0.001, min(self.deadline, request.deadline))

    def request_timeout(self, cap: float | None = None) -> httpx.Timeout:
        """The per-phase timeout of one request, each part capped at the total deadline (or ``cap``)."""
        base = httpx.Timeout(self.timeout)
        cap = self.deadline if cap is None else cap

        def part(value: float | None) -> float:
            return cap if value is None else min(value, cap)

        return httpx.Timeout(
            connect=part(base.connect), read=part(base.read), write=part(base.write), pool=part(base.pool)
        )


def _response(resp: httpx.Response, content: bytes) -> Response:
    return Response(
        status_code=resp.status_code,
        headers={k.lower(): v for k, v in resp.headers.items()},
        content=content,
        url=str(resp.request.url.copy_with(query=None)),
    )


INLINE_DECODE_BYTES = 64 * 1024
"""Async answers whose raw body is larger than this are decompressed in a worker thread, not on the loop."""


class _Inflater:
    """Incremental decoder of a ``Content-Encoding`` chain (gzip, deflate; unknown codings passed through, as httpx
    does), producing at most ``_STEP`` bytes per zlib call so the caller can stop at its cap at any ratio."""

    def __init__(self, content_encoding: str) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
        self.layers: list[Any] = []
        self.raw_deflate: list[bool] = []  # per layer: a deflate layer still deciding zlib-wrapped vs raw
        for coding in reversed(codings):  # the last coding applied is undone first
            if coding in ("gzip", "x-gzip"):
                self.layers.append(zlib.decompressobj(zlib.MAX_WBITS | 16))
                self.raw_deflate.append(False)
            elif coding == "deflate":
                self.layers.append(zlib.decompressobj())
                self.raw_deflate.append(True)

    def feed(self, data: bytes) -> Iterator[bytes]:
        yield from self._push(0, data)

    def flush(self) -> Iterator[bytes]:
        for i in range(len(self.layers)):
            rest = self.layers[i].flush()
            if rest:
                yield from self._push(i + 1, rest)

    def _push(self, i: int, data: bytes) -> Iterator[bytes]:
        if i == len(self.layers):
            if data:
                yield data
            return
        layer = self.layers[i]
        while not layer.eof:
            try:
                out = layer.decompress(data, _STEP)
            except zlib.error as exc:
                if not self.raw_deflate[i]:
                    raise httpx.DecodingError(f"cannot decompress the body: {exc}") from None
                layer = self.layers[i] = zlib.decompressobj(-zlib.MAX_WBITS)  # deflate without the zlib wrapper
                self.raw_deflate[i] = False
                continue
            self.raw_deflate[i] = False
            data = layer.unconsumed_tail
            if out:
                yield from self._push(i + 1, out)
            if not data and len(out) < _STEP:
                break


class _TooLarge(Exception):
    pass


def _decode(resp: httpx.Response, chunks: Iterable[bytes], limit: int, truncate: bool) -> bytes:
    """The body of ``resp`` from its raw (still ``Content-Encoding``-encoded) chunks, decoded with httpx's semantics
    (gzip, deflate, several in order, unknown codings left as they are) but incrementally: at most ``limit`` bytes
    ever exist, the rest is dropped when ``truncate``, else ``_TooLarge``. A corrupt body: ``httpx.DecodingError``.
    """
    inflater = _Inflater(resp.headers.get("content-encoding", ""))
    pieces: list[bytes] = []
    size = 0

    def pieces_of(chunk_iter: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunk_iter:
            yield from inflater.feed(chunk)
        yield from inflater.flush()

    for piece in pieces_of(chunks):
        if size + len(piece) > limit:
            if not truncate:
                raise _TooLarge
            pieces.append(piece[: limit - size])
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)


class _Reading:
    """How much of one answer to read: the decompressed cap, and whether an excess is dropped or an error."""

    def __init__(self, settings: TransportSettings, request: Request, status: int) -> None:
        if 200 <= status < 300:
            self.limit = request.max_bytes if request.max_bytes is not None else settings.max_response_bytes
            self.name = request.limit_name if request.max_bytes is not None else "max_response_bytes"
            self.truncate = False
        else:  # an error body only carries a message: keep its start, never fail on its size
            self.limit = settings.max_error_bytes
            self.name = "max_error_bytes"
            self.truncate = True
        # A compressed body a little larger than its decompressed cap cannot be legitimate (deflate expands
        # incompressible data by well under 1 %): stop reading it off the network there.
        self.raw_limit = self.limit + self.limit // 64 + 4096

    def capped(self, request: Request, resp: httpx.Response) -> bytes:
        """An already-read body within the cap: cut (error bodies) or refused (``ResponseTooLargeError``)."""
        content = resp.content
        if len(content) > self.limit:
            if not self.truncate:
                raise self.too_large(request, resp.request.url)
            content = content[: self.limit]
        return content

    def too_large(self, request: Request, url: httpx.URL) -> ResponseTooLargeError:
        return ResponseTooLargeError(
            f"The {request.operation} answer from {safe_url(str(url))} is larger than {self.name} "
            f"({self.limit} bytes) once decompressed; nothing of it was used.",
            limit=self.name,
            max_bytes=self.limit,
        )


def _check_redirect(
    request: Request, settings: TransportSettings, current: httpx.URL, target: httpx.URL, hops: int
) -> None:
    """Refuse a redirect past ``max_redirects`` or from https down to plain http (``UnsafeLinkError``)."""
    if hops >= settings.max_redirects:
        raise UnsafeLinkError(
            f"The {request.operation} of {safe_url(request.url)} was redirected more than "
            f"{settings.max_redirects} times (max_redirects)."
        )
    if current.scheme == "https" and target.scheme != "https":
        raise UnsafeLinkError(
            f"The {request.operation} of {safe_url(request.url)} was redirected from https to "
            f"{safe_url(str(target))}: a downgrade to plain http is never followed.",
            hint="The list was not downloaded; its previous content stays in force. Ask the list's provider to "
            "serve it over https.",
        )


def _deadline_failure(request: Request, settings: TransportSettings) -> NetworkFailure:
    seconds = settings.deadline_of(request)
    return NetworkFailure("deadline", f"no complete answer within the {seconds:g} s deadline", request.url)


def _is_certificate_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _failure(exc: httpx.HTTPError, url: str) -> NetworkFailure:
    if isinstance(exc, httpx.TimeoutException):
        return NetworkFailure("timeout", type(exc).__name__, url)
    if isinstance(exc, httpx.ConnectError) and _is_certificate_failure(exc):
        return NetworkFailure("tls", f"certificate verify failed: {str(exc)[:160]}", url)
    if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.ProtocolError):
        return NetworkFailure("connect", f"{type(exc).__name__}: {str(exc)[:120]}", url)
    return NetworkFailure("protocol", f"{type(exc).__name__}: {str(exc)[:120]}", url)


def _build(client: httpx.Client | httpx.AsyncClient, request: Request, timeout: httpx.Timeout) -> httpx.Request:
    try:
        return client.build_request(
            request.method,
            request.url,
            headers=request.headers,
            content=request.content,
            params=request.params or None,
            timeout=timeout,
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise ConfigurationError(f"Cannot send the {request.operation} request: {exc}.") from None


_NOT_RETRYABLE = (httpx.InvalidURL, httpx.UnsupportedProtocol)


_DEADLINE = threading.local()  # ``at``: the monotonic deadline of the request this thread is sending (sync only)


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left of this thread's request deadline; ``error`` once it has passed."""
    deadline: float | None = getattr(_DEADLINE, "at", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's total deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write waits at most until the request's deadline (so a server dripping
    its status line or headers is cut off too, not only one dripping its body)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, with every stream bounded by the sending thread's request deadline."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _bounded_transport(kwargs: dict[str, Any]) -> httpx.BaseTransport:
    """httpx's default transport (TLS and proxy from ``kwargs``, which lose them), its sockets bounded by the
    deadline. Should httpx's internals change, the plain transport is used (the deadline is then checked between
    the reads of the body only)."""
    transport = httpx.HTTPTransport(verify=kwargs.pop("verify"), proxy=kwargs.pop("proxy", None), trust_env=False)
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return transport


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
                    transport = self.settings.transport
                    kwargs["transport"] = transport if transport is not None else _bounded_transport(kwargs)
                    self._client = httpx.Client(**kwargs)
                client = self._client
        return client

    def send(self, request: Request) -> Response | NetworkFailure:
        """Send and read the whole answer within the deadline and size caps; a network failure is returned.

        Raises ``ResponseTooLargeError`` (a body over its cap) and ``UnsafeLinkError`` (a refused redirect): neither
        is worth a retry. No socket read or write waits past the deadline (``_DeadlineBackend``), and it is checked
        between the reads of the body too.
        """
        client = self.client
        limit = self.settings.deadline_of(request)
        built = _build(client, request, self.settings.request_timeout(limit))
        deadline = time.monotonic() + limit
        outer = getattr(_DEADLINE, "at", None)
        _DEADLINE.at = deadline
        try:
            return self._exchange(client, request, built, deadline)
        except _NOT_RETRYABLE as exc:
            raise ConfigurationError(f"Cannot send the {request.operation} request: {exc}.") from None
        except httpx.HTTPError as exc:
            if time.monotonic() >= deadline:
                return _deadline_failure(request, self.settings)
            return _failure(exc, request.url)
        except TimeoutError:
            return _deadline_failure(request, self.settings)
        finally:
            _DEADLINE.at = outer

    def _exchange(
        self, client: httpx.Client, request: Request, built: httpx.Request, deadline: float
    ) -> Response | NetworkFailure:
        hops = 0
        while True:
            resp = client.send(built, follow_redirects=False, stream=True)
            try:
                target = resp.next_request
                if request.follow_redirects and target is not None and resp.status_code in _REDIRECT_STATUSES:
                    _check_redirect(request, self.settings, built.url, target.url, hops)
                    hops += 1
                    built = target
                    continue
                reading = _Reading(self.settings, request, resp.status_code)
                if resp.is_stream_consumed:  # a body read before it reached us (an httpx.MockTransport answer)
                    return _response(resp, reading.capped(request, resp))
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_raw():
                    if time.monotonic() >= deadline:
                        raise TimeoutError
                    size += len(chunk)
                    chunks.append(chunk)
                    if size > reading.raw_limit:
                        if not reading.truncate:
                            raise reading.too_large(request, resp.request.url)
                        break
                try:
                    content = _decode(resp, chunks, reading.limit, reading.truncate)
                except _TooLarge:
                    raise reading.too_large(request, resp.request.url) from None
                return _response(resp, content)
            finally:
                resp.close()

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
            transport = self.settings.async_transport
            if transport is None and isinstance(self.settings.transport, httpx.AsyncBaseTransport):
                transport = self.settings.transport  # e.g. an httpx.MockTransport serves both
            if transport is not None:
                kwargs["transport"] = transport
            self._client = httpx.AsyncClient(**kwargs)
        return self._client

    async def send(self, request: Request) -> Response | NetworkFailure:
        """Send and read the whole answer within the deadline and size caps; a network failure is returned.

        The body is read raw, chunk by chunk (the loop runs between chunks); a large one (a startup decisions
        stream is ~10 MB decompressed) is decompressed in a worker thread, so the loop never stalls on it. The
        whole exchange is cancelled when the deadline passes.
        """
        client = self.client
        limit = self.settings.deadline_of(request)
        built = _build(client, request, self.settings.request_timeout(limit))
        try:
            return await asyncio.wait_for(self._exchange(client, request, built), limit)
        except _NOT_RETRYABLE as exc:
            raise ConfigurationError(f"Cannot send the {request.operation} request: {exc}.") from None
        except httpx.HTTPError as exc:
            return _failure(exc, request.url)
        except asyncio.TimeoutError:
            return _deadline_failure(request, self.settings)

    async def _exchange(
        self, client: httpx.AsyncClient, request: Request, built: httpx.Request
    ) -> Response | NetworkFailure:
        hops = 0
        while True:
            resp = await client.send(built, follow_redirects=False, stream=True)
            try:
                target = resp.next_request
                if request.follow_redirects and target is not None and resp.status_code in _REDIRECT_STATUSES:
                    _check_redirect(request, self.settings, built.url, target.url, hops)
                    hops += 1
                    built = target
                    continue
                reading = _Reading(self.settings, request, resp.status_code)
                if resp.is_stream_consumed:  # a body read before it reached us (an httpx.MockTransport answer)
                    return _response(resp, reading.capped(request, resp))
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_raw():
                    size += len(chunk)
                    chunks.append(chunk)
                    if size > reading.raw_limit:
                        if not reading.truncate:
                            raise reading.too_large(request, resp.request.url)
                        break
            finally:
                await resp.aclose()
            try:
                if size <= INLINE_DECODE_BYTES or not resp.headers.get("content-encoding"):
                    content = _decode(resp, chunks, reading.limit, reading.truncate)
                else:
                    content = await asyncio.to_thread(_decode, resp, chunks, reading.limit, reading.truncate)
            except _TooLarge:
                raise reading.too_large(request, resp.request.url) from None
            return _response(resp, content)

    async def aclose(self) -> None:
        """Close the connection pool (a later request opens a new one)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def close(self) -> None:
        """Alias of :meth:`aclose` (redis-py's convention: ``aclose`` on async classes, ``close`` kept)."""
        await self.aclose()
