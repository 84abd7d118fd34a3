"""WSGI middleware (PEP 3333): ``BouncerMiddleware(app, bouncer=...)`` around any WSGI application."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cscapi.web._bouncer import Bouncer, Request, Response, status_line

__all__ = ["BouncerMiddleware", "request_from_environ"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _EnvironHeaders(Mapping[str, str]):
    """The ``HTTP_*`` keys of a WSGI environ as headers by lower-case name (plus content type and length)."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    @staticmethod
    def _key(name: str) -> str:
        upper = name.upper().replace("-", "_")
        return upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + upper

    def __getitem__(self, name: str) -> str:
        value = self._environ[self._key(name)]
        if not isinstance(value, str):
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        value = self._environ.get(self._key(name), default)
        return value if isinstance(value, str) else default

    def __iter__(self) -> Any:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].lower().replace("_", "-")
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)


def request_from_environ(environ: Mapping[str, Any]) -> Request:
    """The bouncer's view of a WSGI request (``PATH_INFO``, bytes as latin-1 per PEP 3333, read back as UTF-8)."""
    path = environ.get("PATH_INFO", "/") or "/"
    if not path.isascii():
        path = path.encode("latin-1", "replace").decode("utf-8", "replace")
    return Request(
        environ.get("REQUEST_METHOD", "GET"),
        path,
        query=environ.get("QUERY_STRING", ""),
        headers=_EnvironHeaders(environ),
        peer=environ.get("REMOTE_ADDR") or None,
        scheme=environ.get("wsgi.url_scheme", "http"),
    )


def _read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``wsgi.input`` (bounded by CONTENT_LENGTH when given)."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        return b"x" * (limit + 1)  # too large: not read at all
    if length <= 0:
        return b""
    data: bytes = stream.read(length)
    return data


class BouncerMiddleware:
    """Checks each request with ``bouncer`` before ``app`` runs (any WSGI application)."""

    def __init__(self, app: WSGIApp, bouncer: Bouncer) -> None:
        if not isinstance(bouncer, Bouncer):
            raise TypeError("bouncer must be a cscapi.web.Bouncer")
        self.app = app
        self.bouncer = bouncer

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        bouncer = self.bouncer
        request = request_from_environ(environ)
        if bouncer.is_captcha_post(request):
            return self._send(bouncer.solve(request, _read_body(environ, bouncer.max_body)), start_response)
        decision = bouncer.decide(request)
        if decision.remediation == "bypass":
            detectors = bouncer.detectors
            if detectors is None or detectors.not_found is None:
                return self.app(environ, start_response)

            def watch(status: str, headers: Any, exc_info: Any = None) -> Any:  # the detectors' 404 hook
                code = status.split(" ", 1)[0]
                bouncer.observe_status(request, int(code) if code.isdigit() else 0)
                if exc_info is None:
                    return start_response(status, headers)
                return start_response(status, headers, exc_info)

            return self.app(environ, watch)
        response = bouncer.respond(request, decision)
        assert response is not None
        return self._send(response, start_response)

    @staticmethod
    def _send(response: Response, start_response: StartResponse) -> Iterable[bytes]:
        headers = [*response.headers, ("content-length", str(len(response.body)))]
        start_response(status_line(response.status), headers)
        return [response.body]
