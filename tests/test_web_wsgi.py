"""cscapi.web.wsgi.BouncerMiddleware around a bare WSGI app (PEP 3333), called directly and through wsgiref."""

from __future__ import annotations

import io
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import setup_testing_defaults

import pytest

from cscapi.remediation import RemediationEngine
from cscapi.web import Bouncer
from cscapi.web.wsgi import BouncerMiddleware
from test_web_support import BANNED, CAPTCHA, CLEAN_IP, PROXY, V6_BANNED, make_bouncer, make_engine, solved_form

RAN: list[str] = []


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    RAN.append(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app " + environ["PATH_INFO"].encode()]


@pytest.fixture
def engine() -> Iterator[RemediationEngine]:
    RAN.clear()
    engine = make_engine()
    yield engine
    engine.close()


def call(
    bouncer: Bouncer, ip: str, path: str = "/", *, method: str = "GET", body: bytes = b"", **headers: str
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    path, _, query = path.partition("?")
    environ.update(
        REQUEST_METHOD=method,
        PATH_INFO=path,
        QUERY_STRING=query,
        REMOTE_ADDR=ip,
        CONTENT_LENGTH=str(len(body)),
        CONTENT_TYPE="application/x-www-form-urlencoded",
    )
    environ["wsgi.input"] = io.BytesIO(body)
    environ.update(headers)  # HTTP_* keys
    got: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"] = status
        got["headers"] = {k.lower(): v for k, v in response_headers}

    out = b"".join(BouncerMiddleware(app, bouncer)(environ, start_response))
    return got["status"], got["headers"], out


def test_clean_banned_and_ipv6(engine: RemediationEngine) -> None:
    bouncer = make_bouncer(engine)
    assert call(bouncer, CLEAN_IP, "/a")[0] == "200 OK"
    status, headers, body = call(bouncer, BANNED, "/b")
    assert status == "403 Forbidden" and headers["cache-control"] == "no-store" and b"Access denied" in body
    assert headers["content-length"] == str(len(body))
    assert call(bouncer, V6_BANNED, "/c")[0] == "403 Forbidden"
    status, headers, body = call(bouncer, BANNED, HTTP_ACCEPT="application/json")
    assert headers["content-type"] == "application/json" and b'"ban"' in body
    assert RAN == ["/a"]


def test_captcha_round_trip_and_cookie(engine: RemediationEngine) -> None:
    bouncer = make_bouncer(engine)
    status, _, page = call(bouncer, CAPTCHA, "/cart?x=1")
    assert status == "401 Unauthorized"
    body = urllib.parse.urlencode(solved_form(page.decode())).encode()
    status, headers, _ = call(bouncer, CAPTCHA, "/.cscapi/captcha", method="POST", body=body)
    assert status == "303 See Other" and headers["location"] == "/cart?x=1"
    cookie = headers["set-cookie"].split(";")[0]
    assert call(bouncer, CAPTCHA, "/cart", HTTP_COOKIE=cookie)[0] == "200 OK"
    assert call(bouncer, BANNED, "/cart", HTTP_COOKIE=cookie)[0] == "403 Forbidden"
    assert RAN == ["/cart"]


def test_oversized_body_is_not_read(engine: RemediationEngine) -> None:
    class Exploding(io.BytesIO):
        def read(self, *args: Any) -> bytes:
            raise AssertionError("must not read")

    bouncer = make_bouncer(engine)
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD="POST", PATH_INFO="/.cscapi/captcha", REMOTE_ADDR=CAPTCHA, CONTENT_LENGTH="99999999")
    environ["wsgi.input"] = Exploding()
    statuses: list[str] = []
    BouncerMiddleware(app, bouncer)(environ, lambda s, h, e=None: statuses.append(s))
    assert statuses == ["413 Content Too Large"]


def test_trusted_proxy_in_wsgi(engine: RemediationEngine) -> None:
    bouncer = make_bouncer(engine, trusted_proxies=["10.0.0.0/8"])
    assert call(bouncer, PROXY, HTTP_X_FORWARDED_FOR=f"{CLEAN_IP}, {BANNED}")[0] == "403 Forbidden"
    assert call(bouncer, CLEAN_IP, HTTP_X_FORWARDED_FOR=BANNED)[0] == "200 OK"


def test_through_a_real_wsgiref_server_on_loopback(engine: RemediationEngine) -> None:
    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    bouncer = make_bouncer(engine, exempt_ips=[])
    server = make_server("127.0.0.1", 0, BouncerMiddleware(app, bouncer), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hello"
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and r.read() == b"app /hello"
    finally:
        server.shutdown()
        server.server_close()


def test_non_ascii_path_info_is_read_as_utf8(engine: RemediationEngine) -> None:
    bouncer = make_bouncer(engine, exempt_paths=["/café"])
    latin1 = "/café/x".encode().decode("latin-1")  # what a PEP 3333 server puts in PATH_INFO
    assert call(bouncer, BANNED, latin1)[0] == "200 OK"
    status, _, page = call(bouncer, CAPTCHA, "/ünï".encode().decode("latin-1"))
    assert status == "401 Unauthorized" and b'value="/%C3%BCn%C3%AF"' in page
