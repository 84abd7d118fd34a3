"""cscapi.web.asgi.BouncerMiddleware in a real Starlette app, with a real engine: walls, captcha, proxies, websocket."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from cscapi.remediation import RemediationEngine
from cscapi.web import Bouncer, Walls
from cscapi.web.asgi import BouncerMiddleware
from test_web_support import (
    BANNED,
    CAPTCHA,
    CLEAN_IP,
    PROXY,
    RANGE_IP,
    V6_BANNED,
    V6_CAPTCHA,
    form_fields,
    make_bouncer,
    make_engine,
    solved_form,
    wrong_answer,
)

RAN: list[str] = []


async def page(request: StarletteRequest) -> PlainTextResponse:
    RAN.append(request.url.path)
    return PlainTextResponse(f"app {request.url.path}")


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def build(bouncer: Bouncer) -> Starlette:
    app = Starlette(routes=[WebSocketRoute("/ws", ws_endpoint), Route("/{path:path}", page, methods=["GET", "POST"])])
    app.add_middleware(BouncerMiddleware, bouncer=bouncer)
    return app


@pytest.fixture
def engine() -> Iterator[RemediationEngine]:
    engine = make_engine()
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def client(bouncer: Bouncer, ip: str, **kw: Any) -> TestClient:
    return TestClient(build(bouncer), client=(ip, 4321), follow_redirects=False, **kw)


def test_a_clean_ip_reaches_the_app_untouched(engine: RemediationEngine) -> None:
    r = client(make_bouncer(engine), CLEAN_IP).get("/hello?x=1")
    assert r.status_code == 200 and r.text == "app /hello"
    assert "set-cookie" not in r.headers
    assert engine.get_origins_count() == {"clean": {"bypass": 1}}


@pytest.mark.parametrize("ip", [BANNED, RANGE_IP, V6_BANNED, f"::ffff:{BANNED}"])
def test_banned_ips_and_ranges_get_the_ban_wall_and_the_app_never_runs(engine: RemediationEngine, ip: str) -> None:
    r = client(make_bouncer(engine), ip).get("/secret")
    assert r.status_code == 403
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"].startswith("text/html")
    assert '<html lang="en">' in r.text and "<h1>Access denied</h1>" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no external resource
    assert RAN == []
    assert engine.get_origins_count() == {"CAPI": {"ban": 1}}


def test_ban_wall_in_french_and_json_for_json_clients(engine: RemediationEngine) -> None:
    c = client(make_bouncer(engine), BANNED)
    r = c.get("/", headers={"accept-language": "de;q=0.9, fr-CH;q=0.8, en;q=0.5"})
    assert '<html lang="fr">' in r.text and "Accès refusé" in r.text
    r = c.get("/api", headers={"accept": "application/json"})
    assert r.status_code == 403 and r.headers["content-type"] == "application/json"
    assert r.json()["remediation"] == "ban"
    r = c.get("/captcha", headers={"accept": "application/json"})
    assert r.status_code == 403


def test_custom_walls_escape_what_they_insert(engine: RemediationEngine) -> None:
    walls = Walls(
        texts={"en": {"ban_heading": "<script>alert(1)</script>"}},
        colors={"accent": "#123456"},
        extra_css=".x{color:red}",
    )
    r = client(make_bouncer(engine, walls=walls), BANNED).get("/")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text and "<script>alert" not in r.text
    assert ".x{color:red}" in r.text and "#123456" in r.text
    template = "<html lang=$lang><h1>$heading</h1><p>$message</p>$content</html>"
    r = client(make_bouncer(engine, walls=Walls(template=template)), BANNED).get("/")
    assert r.text.startswith("<html lang=en><h1>Access denied</h1>")
    r = client(make_bouncer(engine, walls=Walls(template=lambda kind, ctx: f"custom {kind} {ctx['lang']}")), BANNED)
    assert r.get("/").text == "custom ban en"


def test_captcha_full_flow_sets_a_cookie_bound_to_the_ip_and_returns_to_the_page(engine: RemediationEngine) -> None:
    bouncer = make_bouncer(engine)
    c = client(bouncer, CAPTCHA)
    r = c.get("/shop/cart?item=3")
    assert r.status_code == 401 and RAN == []
    assert r.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    fields = form_fields(r.text)
    assert fields["return"] == "/shop/cart?item=3"
    # A wrong answer: the challenge again, with an error, no cookie.
    wrong = c.post("/.cscapi/captcha", data=solved_form(r.text, answer=wrong_answer(r.text)))
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers and 'role="alert"' in wrong.text
    form = solved_form(r.text)
    ok = c.post("/.cscapi/captcha", data=form)
    assert ok.status_code == 303 and ok.headers["location"] == "/shop/cart?item=3"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=1800" in cookie and "Secure" not in cookie
    # The cookie lets the visitor through (and is reused) ...
    assert c.get("/shop/cart").status_code == 200 and c.get("/other").status_code == 200
    assert RAN == ["/shop/cart", "/other"]
    # ... but the same solved challenge cannot be replayed.
    assert c.post("/.cscapi/captcha", data=form).status_code == 401
    counts = engine.get_origins_count()
    assert counts["CAPI"]["bypass"] == 2  # a solved captcha counts as bypass
    assert bouncer.counters.captcha_solved == 1 and bouncer.counters.captcha_failed == 2


def test_tampered_foreign_and_expired_cookies_are_refused(engine: RemediationEngine) -> None:
    now = [1_000_000.0]
    bouncer = make_bouncer(engine, clock=lambda: now[0])
    c = client(bouncer, CAPTCHA)
    ok = c.post("/.cscapi/captcha", data=solved_form(c.get("/").text))
    assert ok.status_code == 303
    value = c.cookies["cscapi_captcha"]
    assert c.get("/").status_code == 200
    # Tampered: one character of the signature changed.
    tampered = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    c2 = client(bouncer, CAPTCHA, cookies={"cscapi_captcha": tampered})
    assert c2.get("/").status_code == 401
    # Another IP (also under captcha) presenting this cookie.
    c3 = client(bouncer, V6_CAPTCHA, cookies={"cscapi_captcha": value})
    assert c3.get("/").status_code == 401
    # Expired.
    now[0] += 1801
    assert c.get("/").status_code == 401
    assert RAN == ["/"]


def test_a_challenge_of_another_ip_or_expired_is_refused(engine: RemediationEngine) -> None:
    now = [1_000_000.0]
    bouncer = make_bouncer(engine, clock=lambda: now[0])
    page_v4 = client(bouncer, CAPTCHA).get("/").text
    assert client(bouncer, V6_CAPTCHA).post("/.cscapi/captcha", data=solved_form(page_v4)).status_code == 401
    page = client(bouncer, CAPTCHA).get("/").text
    now[0] += 301
    assert client(bouncer, CAPTCHA).post("/.cscapi/captcha", data=solved_form(page)).status_code == 401


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "/\\evil.example", "https://evil.example/", "/ok\r\nSet-Cookie: x=1", "evil"]
)
def test_no_open_redirect_after_solving(engine: RemediationEngine, target: str) -> None:
    c = client(make_bouncer(engine), CAPTCHA)
    r = c.post("/.cscapi/captcha", data=solved_form(c.get("/").text, return_to=target))
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_oversized_captcha_post_is_refused(engine: RemediationEngine) -> None:
    c = client(make_bouncer(engine), CAPTCHA)
    r = c.post("/.cscapi/captcha", content=b"a=" + b"x" * 20000)
    assert r.status_code == 413


def test_clean_ip_posting_to_the_captcha_path_is_sent_back(engine: RemediationEngine) -> None:
    r = client(make_bouncer(engine), CLEAN_IP).post("/.cscapi/captcha", data={"return": "/here"})
    assert r.status_code == 303 and r.headers["location"] == "/here"


def test_exempt_paths_and_ips(engine: RemediationEngine) -> None:
    bouncer = make_bouncer(engine, exempt_paths=["/health", "/static/"], exempt_ips=["192.0.2.0/31"])
    c = client(bouncer, BANNED)  # 192.0.2.1 is in 192.0.2.0/31
    assert c.get("/anything").status_code == 200
    other = client(bouncer, RANGE_IP)
    assert other.get("/health").status_code == 200
    assert other.get("/health/db").status_code == 200
    assert other.get("/static/app.css").status_code == 200
    assert other.get("/healthz").status_code == 403  # prefixes match on segment boundaries
    assert other.get("/static/../admin").status_code == 403  # never exempt through a dot segment
    assert other.get("/").status_code == 403


def test_trusted_proxy_headers_and_spoofing_attempts(engine: RemediationEngine) -> None:
    bouncer = make_bouncer(engine, trusted_proxies=["10.0.0.0/8", "fd00::/8"])
    proxied = client(bouncer, PROXY)
    assert proxied.get("/", headers={"x-forwarded-for": BANNED}).status_code == 403
    # The client prepends a clean address: the proxy appended the real one, which is what counts.
    assert proxied.get("/", headers={"x-forwarded-for": f"{CLEAN_IP}, {BANNED}"}).status_code == 403
    # Trusted hops are skipped right to left.
    assert proxied.get("/", headers={"x-forwarded-for": f"{BANNED}, 10.1.1.1, 10.2.2.2"}).status_code == 403
    assert proxied.get("/", headers={"x-forwarded-for": f"{BANNED}:5678"}).status_code == 403
    fwd = client(make_bouncer(engine, trusted_proxies=["10.0.0.0/8", "fd00::/8"], forwarded_header="forwarded"), PROXY)
    assert fwd.get("/", headers={"forwarded": f'for="[{V6_BANNED}]:443";proto=https'}).status_code == 403
    assert fwd.get("/", headers={"forwarded": f"for={CLEAN_IP}, for={RANGE_IP}"}).status_code == 403
    real = client(make_bouncer(engine, trusted_proxies=["10.0.0.0/8"], forwarded_header="x-real-ip"), PROXY)
    assert real.get("/", headers={"x-real-ip": BANNED}).status_code == 403
    assert proxied.get("/", headers={"x-forwarded-for": CLEAN_IP}).status_code == 200
    # An untrusted peer's headers are ignored, whatever they say.
    direct = client(bouncer, CLEAN_IP)
    assert direct.get("/", headers={"x-forwarded-for": BANNED}).status_code == 200
    banned_direct = client(bouncer, BANNED)
    assert banned_direct.get("/", headers={"x-forwarded-for": CLEAN_IP, "x-real-ip": CLEAN_IP}).status_code == 403
    assert banned_direct.get("/", headers={"forwarded": f"for={CLEAN_IP}"}).status_code == 403


def test_custom_remediation_types_follow_the_map_then_the_engine_fallback() -> None:
    engine = make_engine(ordered_remediations=("ban", "mfa", "captcha"), fallback_remediation="captcha")
    try:
        assert engine.get_ip_remediation("203.0.113.9").remediation == "mfa"
        assert client(make_bouncer(engine), "203.0.113.9").get("/").status_code == 401  # the fallback: captcha
        mapped = make_bouncer(engine, remediation_map={"mfa": "ban"})
        assert client(mapped, "203.0.113.9").get("/").status_code == 403
    finally:
        engine.close()


def test_websocket_clean_accepted_banned_and_captcha_denied_with_403(engine: RemediationEngine) -> None:
    # Starlette's test client offers the websocket denial-response extension: the wall is a 403 response.
    bouncer = make_bouncer(engine)
    with client(bouncer, CLEAN_IP).websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hello"
    for ip in (BANNED, CAPTCHA):
        with pytest.raises(WebSocketDenialResponse) as info, client(bouncer, ip).websocket_connect("/ws"):
            pass
        assert info.value.status_code == 403


@pytest.mark.anyio
async def test_websocket_without_the_extension_is_closed_with_1008() -> None:
    engine = make_engine()
    try:
        sent: list[dict[str, Any]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise AssertionError("the app must not run")

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/ws", "headers": [], "client": (BANNED, 1)}
        await BouncerMiddleware(app, make_bouncer(engine))(scope, receive, send)
        assert sent == [{"type": "websocket.close", "code": 1008}]
    finally:
        engine.close()


@pytest.mark.anyio
async def test_websocket_denial_response_extension_gets_a_403() -> None:
    engine = make_engine()
    try:
        sent: list[dict[str, Any]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise AssertionError("the app must not run")

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "websocket",
            "path": "/ws",
            "headers": [],
            "client": (BANNED, 1),
            "extensions": {"websocket.http.response": {}},
        }
        await BouncerMiddleware(app, make_bouncer(engine))(scope, receive, send)
        assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 403
        assert sent[1]["type"] == "websocket.http.response.body"
    finally:
        engine.close()


@pytest.mark.anyio
async def test_lifespan_and_unknown_scopes_pass_through() -> None:
    engine = make_engine()
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> dict[str, Any]:
        return {}

    async def drop(message: Any) -> None:
        return None

    try:
        await BouncerMiddleware(app, make_bouncer(engine))({"type": "lifespan"}, nothing, drop)
        assert seen == ["lifespan"]
    finally:
        engine.close()


def test_fail_open_and_fail_closed_with_a_store_that_cannot_be_read(caplog: pytest.LogCaptureFixture) -> None:
    engine = RemediationEngine(None, "redis://127.0.0.1:1/0", sync_interval_ms=0)
    try:
        assert engine.healthy is False
        open_bouncer = make_bouncer(engine)
        with caplog.at_level(logging.WARNING, logger="cscapi.web"):
            for _ in range(3):
                assert client(open_bouncer, BANNED).get("/").status_code == 200
        assert open_bouncer.counters.store_unavailable == 3
        assert sum("decision store unavailable" in r.getMessage() for r in caplog.records) == 1  # rate-limited
        closed = client(make_bouncer(engine, fail_open=False), CLEAN_IP)
        r = closed.get("/")
        assert r.status_code == 503 and r.headers["retry-after"] == "30"
        assert RAN == ["/", "/", "/"]
    finally:
        engine.close()


def test_https_sets_a_secure_cookie_and_a_forwarded_proto_is_believed_from_trusted_proxies(
    engine: RemediationEngine,
) -> None:
    c = TestClient(build(make_bouncer(engine)), client=(CAPTCHA, 1), base_url="https://site", follow_redirects=False)
    r = c.post("/.cscapi/captcha", data=solved_form(c.get("/").text))
    assert "Secure" in r.headers["set-cookie"]
    bouncer = make_bouncer(engine, trusted_proxies=[PROXY])
    p = client(bouncer, PROXY)
    page = p.get("/", headers={"x-forwarded-for": CAPTCHA}).text
    r = p.post(
        "/.cscapi/captcha",
        data=solved_form(page),
        headers={"x-forwarded-for": CAPTCHA, "x-forwarded-proto": "https"},
    )
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_non_ascii_paths_and_queries_return_percent_encoded(engine: RemediationEngine) -> None:
    c = client(make_bouncer(engine), CAPTCHA)
    page = c.get("/café/ü?q=é&x=a b")
    assert form_fields(page.text)["return"] == "/caf%C3%A9/%C3%BC?q=%C3%A9&x=a%20b"
    r = c.post("/.cscapi/captcha", data=solved_form(page.text))
    assert r.status_code == 303 and r.headers["location"] == "/caf%C3%A9/%C3%BC?q=%C3%A9&x=a%20b"
    assert c.get("/café/ü").text == "app /café/ü"


def test_json_clients_under_captcha_get_a_json_401(engine: RemediationEngine) -> None:
    r = client(make_bouncer(engine), CAPTCHA).get("/api", headers={"accept": "application/json"})
    assert r.status_code == 401 and r.json()["remediation"] == "captcha"
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.anyio
async def test_the_async_engine_works_in_the_asgi_middleware() -> None:
    from cscapi.remediation import AsyncRemediationEngine
    from test_remediation_support import AsyncFakeSource, FakeSource, decision, stream

    source = FakeSource()
    source.streams.append(stream([decision(BANNED)]))
    engine = AsyncRemediationEngine(AsyncFakeSource(source), sync_interval_ms=0)
    await engine.refresh_decisions()
    statuses: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    try:
        middleware = BouncerMiddleware(app, make_bouncer(engine))
        for ip in (BANNED, CLEAN_IP):
            scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": (ip, 1)}
            await middleware(scope, receive, send)
        assert statuses == [403, 200]
        assert engine.get_origins_count() == {"CAPI": {"ban": 1}, "clean": {"bypass": 1}}
    finally:
        await engine.aclose()
