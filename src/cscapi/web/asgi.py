"""Pure ASGI middleware (no ``BaseHTTPMiddleware``): ``BouncerMiddleware(app, bouncer=...)``.

Works with ``app.add_middleware(BouncerMiddleware, bouncer=...)`` in Starlette/FastAPI and around any ASGI callable.
http and websocket scopes are checked; lifespan and other scopes pass through. A stopped websocket handshake is
answered with the wall as a ``websocket.http.response`` when the server offers that extension, else closed with code
1008 (policy violation; 1013 "try again later" when the store is unavailable and ``fail_open`` is False).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cscapi.web._bouncer import Bouncer, Request, Response

__all__ = ["BouncerMiddleware", "request_from_scope", "send_response"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_from_scope(scope: Scope) -> Request:
    """The bouncer's view of an ASGI http or websocket scope (headers decoded only if read)."""
    client = scope.get("client")
    return Request(
        scope.get("method", "GET"),
        scope.get("path", "/"),
        query=scope.get("query_string", b"").decode("latin-1"),
        raw_headers=scope.get("headers", ()),
        peer=client[0] if client else None,
        scheme=scope.get("scheme", "http"),
    )


async def send_response(send: Send, response: Response, *, websocket: bool = False) -> None:
    """Send a bouncer :class:`Response` (as a ``websocket.http.response`` when ``websocket``)."""
    prefix = "websocket.http.response" if websocket else "http.response"
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": f"{prefix}.start", "status": response.status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": response.body, "more_body": False})


class BouncerMiddleware:
    """Checks each http request and websocket handshake with ``bouncer`` before ``app`` runs."""

    def __init__(self, app: ASGIApp, bouncer: Bouncer) -> None:
        if not isinstance(bouncer, Bouncer):
            raise TypeError("bouncer must be a cscapi.web.Bouncer")
        self.app = app
        self.bouncer = bouncer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        bouncer = self.bouncer
        request = request_from_scope(scope)
        if bouncer.is_captcha_post(request):
            body = await self._read_body(receive, bouncer.max_body)
            await send_response(send, await bouncer.asolve(request, body))
            return
        decision = await bouncer.adecide(request)
        if decision.remediation == "bypass":
            detectors = bouncer.detectors
            if detectors is None or detectors.not_found is None:
                await self.app(scope, receive, send)
                return

            async def watch(message: Any) -> None:  # the detectors' 404 hook sees the status, nothing else changes
                if message["type"] == "http.response.start":
                    bouncer.observe_status(request, message["status"])
                await send(message)

            await self.app(scope, receive, watch)
            return
        response = await bouncer.arespond(request, decision)
        assert response is not None
        await send_response(send, response)

    @staticmethod
    async def _read_body(receive: Receive, limit: int) -> bytes:
        """At most ``limit + 1`` bytes of the request body (enough to tell it is too large)."""
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return body
            chunk: bytes = message.get("body", b"")
            body += chunk
            if len(body) > limit:
                return body[: limit + 1]
            if not message.get("more_body", False):
                return body

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        bouncer = self.bouncer
        request = request_from_scope(scope)
        decision = await bouncer.adecide(request)
        if decision.remediation == "bypass":
            await self.app(scope, receive, send)
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            response = await bouncer.arespond(request, decision)
            assert response is not None
            if decision.remediation == "captcha":  # a handshake cannot solve a challenge: refuse it like a ban
                response = Response(403, response.headers, response.body)
            await send_response(send, response, websocket=True)
            return
        message = await receive()  # websocket.connect
        if message["type"] != "websocket.connect":
            return
        code = 1013 if decision.remediation == "unavailable" else 1008
        await send({"type": "websocket.close", "code": code})
