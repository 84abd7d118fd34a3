"""The emulator as a Starlette ASGI application: CAPI v3 and legacy v2 endpoints, list downloads, the admin API.

Every answer is JSON in the swagger's shapes; every refusal is an ``ErrorResponse`` (``message``, ``errors``).
Faults are applied by a small ASGI middleware before the endpoint runs; a catch-all turns a genuine bug into a
logged 500 ``ErrorResponse`` and counts it in ``state.internal_errors`` (tests assert it stays at zero).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cscapi.emulator.admin_api import admin_routes
from cscapi.emulator.bodies import BodyBudget, read_json
from cscapi.emulator.config import EmulatorConfig
from cscapi.emulator.responses import dumps, error_response, json_response
from cscapi.emulator.state import ApiError, EmulatorState, MachineRecord, rfc3339_seconds
from cscapi.emulator.validation import BodyValidator, validator_for
from cscapi.timeutil import format_http_date, parse_http_date

__all__ = ["ConnectionDropped", "create_app"]

log = logging.getLogger("cscapi.emulator")

_CAPI_PATHS = {
    "/watchers": "register",
    "/watchers/login": "login",
    "/watchers/enroll": "enroll",
    "/watchers/reset": "reset",
    "/signals": "signals",
    "/decisions/stream": "decisions_stream",
    "/decisions/delete": "decisions_delete",
    "/decisions/sync": "decisions_sync",
    "/metrics": "metrics",
    "/metrics/": "metrics",
    "/usage-metrics": "usage_metrics",
}


class ConnectionDropped(Exception):
    """Raised to the caller of an in-process app (no socket to close) when a drop fault fires."""


def endpoint_of(path: str) -> str | None:
    """The fault/counter name of a request path, or ``None`` for admin and unknown paths."""
    if path.startswith(("/v3/", "/v2/")):
        return _CAPI_PATHS.get(path[3:])
    if path.startswith("/downloads/blocklists/"):
        return "blocklist_download"
    if path.startswith("/downloads/allowlists/"):
        return "allowlist_download"
    return None


async def _error_send(
    send: Send, status: int, message: str, errors: str = "", headers: dict[str, str] | None = None
) -> None:
    body = dumps({"message": message, "errors": errors})
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def _drop_connection(receive: Receive) -> None:
    """Close the client's TCP connection without answering (uvicorn: abort the transport behind ``receive``)."""
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionDropped("emulator fault: connection dropped without a response")
    transport.abort()
    for _ in range(50):  # let connection_lost run, so the server does not answer 500 on a dead socket
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0.001)


class _FaultsAndGuard:
    """Pure ASGI middleware: counts requests, injects faults, and turns unexpected exceptions into a 500."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of(scope["path"])
        status_seen: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(int(message["status"]))
            await send(message)

        if endpoint is not None:
            action = self.state.take_fault(endpoint)
            if action.latency:
                await asyncio.sleep(action.latency)
            if action.kind == "drop":
                self.state.count_request(endpoint, 0)
                await _drop_connection(receive)
                return
            if action.kind == "429":
                self.state.count_request(endpoint, 429)
                await _error_send(
                    send,
                    429,
                    "Too Many Requests",
                    "rate limited (fault injection)",
                    {"Retry-After": str(action.retry_after)},
                )
                return
            if action.kind == "5xx":
                self.state.count_request(endpoint, action.status)
                phrase = HTTPStatus(action.status).phrase if action.status in HTTPStatus._value2member_map_ else "Error"
                await _error_send(send, action.status, phrase, "server error (fault injection)")
                return
        try:
            await self.app(scope, receive, counting_send)
        except ConnectionDropped:
            raise
        except Exception:
            with self.state.lock:
                self.state.internal_errors += 1
            log.exception("emulator bug while serving %s %s", scope.get("method"), scope.get("path"))
            if not status_seen:
                await _error_send(send, 500, "Internal Server Error", "unexpected emulator error (see its log)")
                status_seen.append(500)
        if endpoint is not None and status_seen:
            self.state.count_request(endpoint, status_seen[0])


# ---- request helpers -------------------------------------------------------------------------------------------


def check(validator: BodyValidator, body: Any, status: int = 400) -> None:
    """Raise ``ApiError(status)`` listing each failing field when ``body`` does not fit the definition."""
    if validator.is_valid(body):
        return
    problems = validator.errors(body)
    raise ApiError(status, f"invalid {validator.name}: {problems[0]}", "; ".join(problems))


def query_bool(request: Request, name: str, default: bool) -> bool:
    """A boolean query parameter (``true``/``false``/``1``/``0``); 400 naming it otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise ApiError(400, f"invalid query parameter {name}: {raw!r}", f"{name} must be true or false")


Handler = Callable[[Request], Awaitable[Response]]


def _api(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.errors, exc.headers)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


class _Endpoints:
    """The CAPI endpoints (both API versions) and the unauthenticated list downloads."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.cfg = state.config
        self.v_register = validator_for("RegisterRequest")
        self.v_login = validator_for("LoginRequest")
        self.v_enroll = validator_for("EnrollRequest")
        self.v_reset = validator_for("ResetPasswordRequest")
        self.v_signal = validator_for("AddSignalsRequestItem")
        self.v_delete = validator_for("DecisionsDeleteRequest")
        self.v_sync = validator_for("DecisionsSyncRequest")
        self.v_metrics = validator_for("MetricsRequest")
        self.v_usage = validator_for("AllMetrics", "lapi")
        self.budget = BodyBudget(self.cfg.max_inflight_body_bytes)

    @staticmethod
    def api_of(request: Request) -> str:
        return "v2" if request.url.path.startswith("/v2/") else "v3"

    async def body(self, request: Request) -> Any:
        return await read_json(
            request, self.cfg.max_body_bytes, drop_null=True, timeout=self.cfg.body_timeout, budget=self.budget
        )

    def machine(self, request: Request) -> MachineRecord:
        return self.state.authenticate(request.headers.get("authorization"))

    async def register(self, request: Request) -> Response:
        body = await self.body(request)
        check(self.v_register, body)
        # password hashing is slow on purpose: off the event loop, so other requests are served meanwhile
        await run_in_threadpool(self.state.register, body["machine_id"], body["password"], self.api_of(request))
        return json_response(200, {"message": "OK"})

    async def login(self, request: Request) -> Response:
        body = await self.body(request)
        check(self.v_login, body)
        client_ip = request.client.host if request.client else "unknown"
        token, expires = await run_in_threadpool(
            self.state.login, body["machine_id"], body["password"], body.get("scenarios") or [], client_ip
        )
        return json_response(200, {"code": 200, "expire": rfc3339_seconds(expires), "token": token})

    async def enroll(self, request: Request) -> Response:
        m = self.machine(request)
        body = await self.body(request)
        if isinstance(body, dict) and body.get("autoenroll") is True and "attachment_key" not in body:
            # current Go engines: no key, the answer carries a console URL to open (protocol notes, EnrollRequest)
            check(self.v_enroll, {**body, "attachment_key": "autoenroll"})
            return json_response(202, self.state.autoenroll(m, body, str(request.base_url)))
        check(self.v_enroll, body)
        status, answer = self.state.enroll(m, body)
        return json_response(status, answer)

    async def reset(self, request: Request) -> Response:
        body = await self.body(request)
        check(self.v_reset, body)
        await run_in_threadpool(self.state.reset_password, body["machine_id"], body["password"])
        return json_response(200, {"message": "OK"})

    async def signals(self, request: Request) -> Response:
        m = self.machine(request)
        body = await self.body(request)
        if not isinstance(body, list):
            raise ApiError(
                400,
                "invalid AddSignalsRequest: body must be a JSON array of signals",
                f"got a JSON {type(body).__name__}",
            )
        if len(body) > self.cfg.max_batch:
            raise ApiError(
                400,
                f"too many signals in one request: {len(body)}",
                f"send at most {self.cfg.max_batch} signals per request",
            )
        validator = self.v_signal
        problems: list[str] = []
        for i, item in enumerate(body):
            if not validator.is_valid(item):
                problems.extend(validator.errors(item, f"body[{i}]"))
                if len(problems) >= 10:
                    break
        if problems:
            raise ApiError(400, f"invalid signal: {problems[0]}", "; ".join(problems[:10]))
        _accepted, duplicates = self.state.add_signals(m, body, self.api_of(request))
        message = "OK" if not duplicates else f"OK ({duplicates} duplicate uuid(s) ignored)"
        return json_response(200, {"message": message})

    async def decisions_stream(self, request: Request) -> Response:
        m = self.machine(request)
        startup = query_bool(request, "startup", False)
        community = query_bool(request, "community_pull", True)
        additional = query_bool(request, "additional_pull", True)
        if self.api_of(request) == "v2":
            text = self.state.stream_v2(m, startup=startup, community_pull=community, additional_pull=additional)
        else:
            text = self.state.stream_v3(
                m, startup=startup, community_pull=community, additional_pull=additional, base_url=str(request.base_url)
            )
        return json_response(200, text)

    async def decisions_delete(self, request: Request) -> Response:
        m = self.machine(request)
        body = await self.body(request)
        check(self.v_delete, body)
        self.state.record_payload("decisions_delete", m, body, self.api_of(request))
        return json_response(200, {"message": "OK"})

    async def decisions_sync(self, request: Request) -> Response:
        m = self.machine(request)
        body = await self.body(request)
        check(self.v_sync, body)
        self.state.record_payload("decisions_sync", m, body, self.api_of(request))
        return json_response(200, {"message": "OK"})

    async def metrics(self, request: Request) -> Response:
        m = self.machine(request)
        body = await self.body(request)
        if isinstance(body, dict):  # 1.4.x engines send null for an empty list of bouncers or machines
            body.setdefault("bouncers", [])
            body.setdefault("machines", [])
        check(self.v_metrics, body)
        self.state.record_payload("metrics", m, body, self.api_of(request))
        return json_response(200, {"message": "OK"})

    async def usage_metrics(self, request: Request) -> Response:
        m = self.machine(request)
        body = await self.body(request)
        check(self.v_usage, body, status=422)
        self.state.record_payload("usage_metrics", m, body, self.api_of(request))
        return json_response(201, {"message": "OK"})

    def _conditional(self, request: Request, updated_at: float) -> tuple[bool, dict[str, str]]:
        headers = {"Last-Modified": format_http_date(_utc(updated_at)), "Cache-Control": "no-cache"}
        since = request.headers.get("if-modified-since")
        if since:
            when = parse_http_date(since)
            if when is not None and int(updated_at) <= when.timestamp():
                return True, headers
        return False, headers

    async def blocklist_download(self, request: Request) -> Response:
        list_id = request.path_params["list_id"]
        with self.state.lock:
            bl = self.state.blocklists.get(list_id)
            if bl is None:
                raise ApiError(404, "blocklist not found", "it was removed, or the link is wrong")
            not_modified, headers = self._conditional(request, bl["updated_at"])
            text = "".join(line + "\n" for line in bl["content"]) if not not_modified else ""
        if not_modified:
            return Response(status_code=304, headers=headers)
        return Response(text, media_type="text/plain; charset=utf-8", headers=headers)

    async def allowlist_download(self, request: Request) -> Response:
        list_id = request.path_params["list_id"]
        with self.state.lock:
            al = self.state.allowlists.get(list_id)
            if al is None:
                raise ApiError(404, "allowlist not found", "it was removed, or the link is wrong")
            not_modified, headers = self._conditional(request, al["updated_at"])
            text = "".join(json.dumps(item, separators=(",", ":")) + "\n" for item in al["items"])
        if not_modified:
            return Response(status_code=304, headers=headers)
        return Response(text, media_type="application/x-ndjson", headers=headers)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(int(ts), timezone.utc)


_CORS_PATHS = ("/decisions/stream", "/watchers/reset")  # the swagger declares an OPTIONS (CORS) answer for these


async def _cors_preflight(request: Request) -> Response:
    return Response(
        status_code=200,
        headers={
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": "GET,POST,OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type,Authorization,Content-Encoding",
        },
    )


def _capi_routes(ep: _Endpoints) -> list[Route]:
    routes: list[Route] = []
    for prefix in ("/v3", "/v2"):
        routes += [
            Route(f"{prefix}/watchers", _api(ep.register), methods=["POST"]),
            Route(f"{prefix}/watchers/login", _api(ep.login), methods=["POST"]),
            Route(f"{prefix}/watchers/enroll", _api(ep.enroll), methods=["POST"]),
            Route(f"{prefix}/watchers/reset", _api(ep.reset), methods=["POST"]),
            Route(f"{prefix}/signals", _api(ep.signals), methods=["POST"]),
            Route(f"{prefix}/decisions/stream", _api(ep.decisions_stream), methods=["GET"]),
            Route(f"{prefix}/decisions/delete", _api(ep.decisions_delete), methods=["POST"]),
            Route(f"{prefix}/decisions/sync", _api(ep.decisions_sync), methods=["POST"]),
            Route(f"{prefix}/metrics", _api(ep.metrics), methods=["POST"]),
            Route(f"{prefix}/metrics/", _api(ep.metrics), methods=["POST"]),
            Route(f"{prefix}/usage-metrics", _api(ep.usage_metrics), methods=["POST"]),
        ]
        routes += [Route(f"{prefix}{path}", _cors_preflight, methods=["OPTIONS"]) for path in _CORS_PATHS]
    routes += [
        Route("/downloads/blocklists/{list_id}", _api(ep.blocklist_download), methods=["GET"]),
        Route("/downloads/allowlists/{list_id}", _api(ep.allowlist_download), methods=["GET"]),
    ]
    return routes


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, "Not Found", f"no endpoint at {request.url.path}")
    if exc.status_code == 405:
        return error_response(
            405, "Method Not Allowed", f"{request.method} is not allowed on {request.url.path}", dict(exc.headers or {})
        )
    return error_response(exc.status_code, str(exc.detail))


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """Build the emulator app; its state is ``app.state.emulator`` (an :class:`EmulatorState`)."""
    config = config or EmulatorConfig()
    state = EmulatorState(config)
    endpoints = _Endpoints(state)
    routes = _capi_routes(endpoints) + admin_routes(state)
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
    app.add_middleware(_FaultsAndGuard, state=state)
    app.state.emulator = state
    return app
