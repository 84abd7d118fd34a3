"""cscapi.web.asgi.BouncerMiddleware in a FastAPI app, with FastAPI's (Starlette's) TestClient: the shared scenarios,
the async engine, a websocket route, and the image captcha over ASGI."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from conftest import require_module
from cscapi.web import Bouncer
from cscapi.web.asgi import BouncerMiddleware, request_from_scope
from test_web_support import BANNED, CAPTCHA, CLEAN_IP, make_bouncer, make_engine
from web_framework_scenarios import SCENARIOS, Resp, header_map


def make_app(bouncer: Bouncer, ran: list[str]) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    @app.api_route("/{path:path}", methods=["GET", "POST"], response_class=PlainTextResponse)
    async def page(request: Request, path: str) -> str:
        ran.append(request.url.path)
        if request.url.path == "/login" and request.method == "POST":  # a wrong password
            bouncer.report_failed_login(request_from_scope(request.scope))
        return f"app {request.url.path}"

    app.add_middleware(BouncerMiddleware, bouncer=bouncer)
    return app


class FastAPISite:
    def __init__(self, bouncer: Bouncer) -> None:
        self.ran: list[str] = []
        self.app = make_app(bouncer, self.ran)
        self._clients: dict[str, TestClient] = {}

    def _client(self, ip: str, cookie: str | None = None) -> TestClient:
        if cookie is not None:
            return TestClient(self.app, client=(ip, 4321), follow_redirects=False, cookies={"cscapi_captcha": cookie})
        if ip not in self._clients:
            self._clients[ip] = TestClient(self.app, client=(ip, 4321), follow_redirects=False)
        return self._clients[ip]

    @staticmethod
    def _resp(r: Any) -> Resp:
        return Resp(r.status_code, header_map(r.headers.items()), r.text, r.cookies.get("cscapi_captcha"))

    def get(self, ip: str, path: str, *, headers: dict[str, str] | None = None, cookie: str | None = None) -> Resp:
        return self._resp(self._client(ip, cookie).get(path, headers=headers or {}))

    def post(self, ip: str, path: str, form: dict[str, str], *, cookie: str | None = None) -> Resp:
        return self._resp(self._client(ip, cookie).post(path, data=form))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario(scenario: str) -> None:
    SCENARIOS[scenario](FastAPISite)


def test_websocket_routes_are_protected() -> None:
    engine = make_engine()
    try:
        site = FastAPISite(make_bouncer(engine))
        with TestClient(site.app, client=(CLEAN_IP, 1)).websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hello"
        for ip in (BANNED, CAPTCHA):
            with (
                pytest.raises(WebSocketDenialResponse) as info,
                TestClient(site.app, client=(ip, 1)).websocket_connect("/ws"),
            ):
                pass
            assert info.value.status_code == 403
    finally:
        engine.close()


def test_the_image_captcha_over_asgi() -> None:
    require_module("captcha")
    from test_web_image import solve_image_page

    solve_image_page(FastAPISite)
