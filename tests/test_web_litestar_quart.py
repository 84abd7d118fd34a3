"""cscapi.web.asgi.BouncerMiddleware in Litestar (``middleware=[DefineMiddleware(...)]``) and Quart
(``app.asgi_app = BouncerMiddleware(app.asgi_app, ...)``), each driven by its own test client: the shared scenarios
(walls, captcha flow, bad cookies, proxies, allowlist, JSON, fail policy)."""

from __future__ import annotations

import asyncio
from http.cookies import SimpleCookie
from typing import Any

import pytest

from conftest import require_module
from cscapi.web import Bouncer
from cscapi.web.asgi import ASGIApp, BouncerMiddleware, Receive, Scope, Send, request_from_scope
from test_web_support import BANNED, CAPTCHA, CLEAN_IP, make_bouncer, make_engine, solved_form
from web_framework_scenarios import SCENARIOS, Resp, header_map

require_module("litestar")
require_module("quart")

from litestar import Litestar, Request, route  # noqa: E402
from litestar.middleware.base import DefineMiddleware  # noqa: E402
from litestar.testing import TestClient as LitestarClient  # noqa: E402
from quart import Quart, request  # noqa: E402

PEER_HEADER = "x-test-peer"


def peer_from_test_header(app: ASGIApp) -> ASGIApp:
    """Test only: Litestar's TestClient always says the peer is ``testclient``; this sets ``scope["client"]`` from a
    header the test sends (and removes it), as a server would from the socket."""

    async def shim(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = [(k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() != PEER_HEADER]
            peer = next((v.decode() for k, v in scope["headers"] if k.decode("latin-1").lower() == PEER_HEADER), None)
            scope = {**scope, "headers": headers, "client": (peer, 4321) if peer else None}
        await app(scope, receive, send)

    return shim


def pass_cookie(set_cookie: str | None) -> str | None:
    if not set_cookie:
        return None
    jar: SimpleCookie = SimpleCookie()
    jar.load(set_cookie)
    morsel = jar.get("cscapi_captcha")
    return morsel.value if morsel is not None else None


class LitestarSite:
    """Litestar with ``middleware=[DefineMiddleware(BouncerMiddleware, ...)]`` (``wrap`` False; Litestar runs it only
    for requests a route matches, hence the catch-all route) or its ASGI app wrapped (``wrap`` True, docs/web.md)."""

    wrap = False

    def __init__(self, bouncer: Bouncer) -> None:
        self.ran: list[str] = []
        ran = self.ran

        @route(["/", "/{rest:path}"], http_method=["GET", "POST"], status_code=200)
        async def page(request: Request[Any, Any, Any]) -> str:
            ran.append(request.url.path)
            if request.url.path == "/login" and request.method == "POST":  # a wrong password
                bouncer.report_failed_login(request_from_scope(request.scope))
            return f"app {request.url.path}"

        if self.wrap:
            app: Any = peer_from_test_header(BouncerMiddleware(Litestar(route_handlers=[page]), bouncer=bouncer))
        else:
            middleware = [peer_from_test_header, DefineMiddleware(BouncerMiddleware, bouncer=bouncer)]
            app = Litestar(route_handlers=[page], middleware=middleware)
        self.client = LitestarClient(app)
        self.jars: dict[str, str] = {}

    def _send(self, method: str, ip: str, path: str, cookie: str | None, **kw: Any) -> Resp:
        headers = {PEER_HEADER: ip, **kw.pop("headers", {})}
        value = self.jars.get(ip) if cookie is None else cookie
        if value:
            headers["cookie"] = f"cscapi_captcha={value}"
        self.client.cookies.clear()
        r = self.client.request(method, path, headers=headers, follow_redirects=False, **kw)
        got = pass_cookie(r.headers.get("set-cookie"))
        if got:
            self.jars[ip] = got
        return Resp(r.status_code, header_map(r.headers.items()), r.text, got)

    def get(self, ip: str, path: str, *, headers: dict[str, str] | None = None, cookie: str | None = None) -> Resp:
        return self._send("GET", ip, path, cookie, headers=headers or {})

    def post(self, ip: str, path: str, form: dict[str, str], *, cookie: str | None = None) -> Resp:
        return self._send("POST", ip, path, cookie, data=form)


class WrappedLitestarSite(LitestarSite):
    wrap = True


class QuartSite:
    def __init__(self, bouncer: Bouncer) -> None:
        self.ran: list[str] = []
        app = Quart(__name__)

        @app.route("/", defaults={"rest": ""}, methods=["GET", "POST"])
        @app.route("/<path:rest>", methods=["GET", "POST"])
        async def page(rest: str) -> str:
            self.ran.append(request.path)
            if request.path == "/login" and request.method == "POST":  # a wrong password
                bouncer.report_failed_login(request_from_scope(request.scope))
            return f"app {request.path}"

        app.asgi_app = BouncerMiddleware(app.asgi_app, bouncer=bouncer)  # type: ignore[method-assign]
        self.app = app
        self.jars: dict[str, str] = {}

    def _send(self, method: str, ip: str, path: str, cookie: str | None, **kw: Any) -> Resp:
        headers = dict(kw.pop("headers", {}))
        value = self.jars.get(ip) if cookie is None else cookie
        if value:
            headers["cookie"] = f"cscapi_captcha={value}"

        async def call() -> Any:
            client = self.app.test_client(use_cookies=False)
            response = await client.open(path, method=method, headers=headers, scope_base={"client": (ip, 4321)}, **kw)
            return response, await response.get_data(as_text=True)

        r, text = asyncio.run(call())
        got = pass_cookie(r.headers.get("set-cookie"))
        if got:
            self.jars[ip] = got
        return Resp(r.status_code, header_map(r.headers.items()), text, got)

    def get(self, ip: str, path: str, *, headers: dict[str, str] | None = None, cookie: str | None = None) -> Resp:
        return self._send("GET", ip, path, cookie, headers=headers or {})

    def post(self, ip: str, path: str, form: dict[str, str], *, cookie: str | None = None) -> Resp:
        return self._send("POST", ip, path, cookie, form=form)


SITES: dict[str, Any] = {"litestar": LitestarSite, "litestar-wrapped": WrappedLitestarSite, "quart": QuartSite}


def test_litestar_route_middleware_never_sees_unrouted_paths() -> None:
    """Why docs/web.md says to wrap a Litestar app: its ``middleware=`` run only for a path a route matches, so the
    challenge form's POST (``/.cscapi/captcha``) never reaches the bouncer unless a route matches it."""
    from litestar import get

    @get("/")
    async def home() -> str:
        return "home"

    engine = make_engine()
    try:
        bouncer = make_bouncer(engine)
        routed = LitestarClient(Litestar([home], middleware=[DefineMiddleware(BouncerMiddleware, bouncer=bouncer)]))
        assert routed.post("/.cscapi/captcha", data={"x": "1"}).status_code == 404
        wrapped = LitestarClient(BouncerMiddleware(Litestar([home]), bouncer=bouncer))
        assert wrapped.post("/.cscapi/captcha", data={"x": "1"}, follow_redirects=False).status_code == 303
    finally:
        engine.close()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("framework", sorted(SITES))
def test_scenario(framework: str, scenario: str) -> None:
    SCENARIOS[scenario](SITES[framework])


@pytest.mark.parametrize("framework", sorted(SITES))
def test_ban_captcha_and_clean(framework: str) -> None:
    """The three outcomes spelled out: a banned IP gets the 403 wall, a captcha IP the 401 challenge and, once solved,
    the page; a clean IP the page; the application runs only for the allowed requests."""
    engine = make_engine()
    try:
        site = SITES[framework](make_bouncer(engine))
        assert site.get(BANNED, "/admin").status == 403
        challenge = site.get(CAPTCHA, "/cart")
        assert challenge.status == 401
        solved = site.post(CAPTCHA, "/.cscapi/captcha", solved_form(challenge.text))
        assert solved.status == 303 and solved.set_cookie and solved.headers["location"] == "/cart"
        assert site.get(CAPTCHA, "/cart").status == 200
        clean = site.get(CLEAN_IP, "/")
        assert clean.status == 200 and clean.text == "app /"
        assert site.ran == ["/cart", "/"]
    finally:
        engine.close()


def test_the_docs_snippet_for_litestar_and_quart(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/web.md's Litestar and Quart factories, as written, stop a banned IP and let a clean one through."""
    import sys
    import types

    from test_web_docs import block

    monkeypatch.setitem(sys.modules, "web_docs_snippet", types.ModuleType("web_docs_snippet"))  # Quart(__name__)

    namespace = block("def create_litestar_app(")
    engine = make_engine()
    try:
        bouncer = make_bouncer(engine)
        litestar_app = peer_from_test_header(namespace["create_litestar_app"](bouncer))
        client = LitestarClient(litestar_app)
        assert client.get("/", headers={PEER_HEADER: CLEAN_IP}).text == "hello"
        assert client.get("/", headers={PEER_HEADER: BANNED}).status_code == 403
        quart_app = namespace["create_quart_app"](bouncer)

        async def ask(ip: str) -> int:
            response = await quart_app.test_client().get("/", scope_base={"client": (ip, 1)})
            return int(response.status_code)

        assert asyncio.run(ask(CLEAN_IP)) == 200
        assert asyncio.run(ask(BANNED)) == 403
    finally:
        engine.close()
