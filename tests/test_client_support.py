"""Helpers shared by the client tests (no tests here): a scriptable fake CAPI for ``httpx.MockTransport``.

The fake behaves like CAPI by default (register, login with a JWT, Bearer checks, signals, stream, enroll, metrics)
and validates every JSON body it receives against the official swagger, so each flow test also proves the client
builds valid requests. ``script(path, ...)`` queues scripted answers (a status, a dict, or an exception to raise).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema

from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.sql_storage import SQLStorage

BASE = "http://capi.test/"
SCENARIOS = ["crowdsecurity/ssh-bf", "acme/http-bf"]

_BODY_SCHEMAS = {
    "/v3/watchers": "RegisterRequest",
    "/v3/watchers/login": "LoginRequest",
    "/v3/watchers/enroll": "EnrollRequest",
    "/v3/signals": "AddSignalsRequest",
    "/v3/metrics": "MetricsRequest",
    "/v3/decisions/delete": "DecisionsDeleteRequest",
}


def make_jwt(claims: dict[str, Any]) -> str:
    def seg(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg(claims)}.c2lnbmF0dXJl"


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: dict[str, str]
    gzipped: bool


@dataclass
class FakeCAPI:
    """A scriptable CAPI. ``requests`` logs everything; ``signals`` holds accepted signal items."""

    capi_spec: dict[str, Any]
    lapi_spec: dict[str, Any] | None = None
    token_lifetime: float = 3600.0
    login_delay: float = 0.0
    stream: dict[str, Any] = field(default_factory=lambda: {"new": [], "deleted": [], "links": None})
    bad_scenario: str = "bad/signal"
    links: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (body, last-modified)
    machines: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)
    scripts: dict[str, deque[Any]] = field(default_factory=lambda: defaultdict(deque))
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- scripting -------------------------------------------------------------------------------------

    def script(self, path: str, *answers: Any) -> None:
        """Queue answers for ``path``: an int status, a (status, body[, headers]) tuple, or an exception."""
        self.scripts[path].extend(answers)

    def calls(self, path: str, method: str | None = None) -> list[Seen]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def count(self, path: str) -> int:
        return len(self.calls(path))

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # ---- the server --------------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        raw = request.read()
        gzipped = request.headers.get("content-encoding") == "gzip"
        if gzipped:
            raw = gzip.decompress(raw)
        body = json.loads(raw) if raw else None
        path = request.url.path
        seen = Seen(request.method, path, dict(request.headers), body, dict(request.url.params), gzipped)
        with self.lock:
            self.requests.append(seen)
            scripted = self.scripts[path].popleft() if self.scripts.get(path) else None
        if request.method == "POST" and path in _BODY_SCHEMAS:
            schema = {"$ref": f"#/definitions/{_BODY_SCHEMAS[path]}", "definitions": self.capi_spec["definitions"]}
            jsonschema.Draft4Validator(schema).validate(body)
        if path == "/v3/usage-metrics" and self.lapi_spec is not None:
            schema = {"$ref": "#/definitions/AllMetrics", "definitions": self.lapi_spec["definitions"]}
            jsonschema.Draft4Validator(schema).validate(body)
        if scripted is not None:
            return self._scripted(scripted, request)
        return self._default(seen, request)

    @staticmethod
    def _scripted(answer: Any, request: httpx.Request) -> httpx.Response:
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, type) and issubclass(answer, BaseException):
            raise answer("scripted failure", request=request)  # type: ignore[call-arg]
        if isinstance(answer, int):
            return httpx.Response(answer, json={"message": f"scripted {answer}"})
        status, data, *rest = answer
        headers = rest[0] if rest else {}
        if isinstance(data, (bytes, str)):
            return httpx.Response(status, content=data, headers=headers)
        return httpx.Response(status, json=data, headers=headers)

    def _token_machine(self, seen: Seen) -> str | None:
        auth = seen.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return self.tokens.get(auth[len("Bearer ") :])

    def _default(self, seen: Seen, request: httpx.Request) -> httpx.Response:
        path = seen.path
        if path == "/v3/watchers":
            mid, pw = seen.body["machine_id"], seen.body["password"]
            with self.lock:
                if mid in self.machines:  # as the emulator answers
                    return httpx.Response(409, json={"message": f"machine {mid} is already registered"})
                self.machines[mid] = pw
            return httpx.Response(200, json={"message": "OK"})
        if path == "/v3/watchers/login":
            if self.login_delay:
                time.sleep(self.login_delay)
            mid, pw = seen.body["machine_id"], seen.body["password"]
            if self.machines.get(mid) != pw:  # CAPI and the emulator refuse credentials with a 403
                return httpx.Response(403, json={"message": "invalid machine_id or password"})
            exp = int(time.time() + self.token_lifetime)
            token = make_jwt({"exp": exp, "sub": mid, "n": len(self.requests)})
            with self.lock:
                self.tokens[token] = mid
            return httpx.Response(200, json={"code": 200, "expire": "2099-01-01T00:00:00Z", "token": token})
        if path.startswith("/v3/"):
            if self._token_machine(seen) is None:
                return httpx.Response(401, json={"message": "The incoming token has expired"})
            if path == "/v3/signals":
                if len(seen.body) > 250:
                    return httpx.Response(400, json={"message": "too many signals"})
                bad = [i for i, s in enumerate(seen.body) if s["scenario"] == self.bad_scenario]
                if bad:
                    return httpx.Response(400, json={"message": "invalid signal", "errors": f"item {bad[0]}: bad"})
                with self.lock:
                    self.signals.extend(seen.body)
                return httpx.Response(200, json={"message": "OK"})
            if path == "/v3/decisions/stream":
                return httpx.Response(200, json=self.stream)
            if path == "/v3/watchers/enroll":
                return httpx.Response(200, json={"message": "OK"})
            return httpx.Response(200, json={"message": "OK"})
        if path in self.links:
            text, last_modified = self.links[path]
            if "authorization" in seen.headers:
                return httpx.Response(400, text="signed URLs take no Authorization header")
            if seen.headers.get("if-modified-since") == last_modified:
                return httpx.Response(304)
            return httpx.Response(200, text=text, headers={"Last-Modified": last_modified})
        return httpx.Response(404, json={"message": "not found"})


# ---- one test body, two clients ------------------------------------------------------------------------


class Api:
    """Calls a ``CAPIClient`` or an ``AsyncCAPIClient`` (on a private event loop) with the same syntax.

    ``sleeps`` records every pause the client asked for (no real sleeping: the tests stay fast).
    """

    def __init__(self, mode: str, storage: SQLStorage, config: CAPIClientConfig) -> None:
        self.mode = mode
        self.sleeps: list[float] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client: CAPIClient | AsyncCAPIClient
        if mode == "sync":
            self.client = CAPIClient(storage, config)
            self.client._sleep = self.sleeps.append
        else:
            self.loop = asyncio.new_event_loop()
            self.client = AsyncCAPIClient(storage, config)

            async def fake_sleep(seconds: float) -> None:
                self.sleeps.append(seconds)

            self.client._sleep = fake_sleep

    def set_clock(self, clock: Callable[[], Any]) -> None:
        self.client._clock = clock

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        if self.mode == "sync":
            return method  # type: ignore[no-any-return]

        def call(*args: Any, **kwargs: Any) -> Any:
            assert self.loop is not None
            return self.loop.run_until_complete(method(*args, **kwargs))

        return call

    def close(self) -> None:
        if self.mode == "sync":
            self.client.close()
        else:
            assert self.loop is not None and isinstance(self.client, AsyncCAPIClient)
            self.loop.run_until_complete(self.client.close())
            self.loop.close()


def make_config(fake: FakeCAPI | None = None, **overrides: Any) -> CAPIClientConfig:
    options: dict[str, Any] = {
        "scenarios": SCENARIOS,
        "base_url": BASE,
        "retry_delay": 0.01,
        "transport": fake.transport if fake is not None else None,
    }
    options.update(overrides)
    return CAPIClientConfig(**options)
