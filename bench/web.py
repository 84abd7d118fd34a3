"""Overhead of the cscapi.web middlewares on a clean request: µs over the bare application, ASGI, WSGI, Flask, Django.

Both the bare app and the wrapped one are called directly (no server, no event loop: the coroutines never suspend, so
they are driven with ``send(None)``), in the same run, so the difference is the middleware's cost: building the request
view, the client IP, the engine's in-memory lookup and the usage count. The target is at most 10 µs (issue 11).
Flask and Django (when installed) are measured the same way: the app with and without the integration. Bare and
protected runs alternate, and the overhead is the median of the per-round differences (robust to a shared machine).

Reproduce:  .venv/bin/python bench/web.py [N]
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from cscapi.remediation import RemediationEngine
from cscapi.web import Bouncer
from cscapi.web.asgi import BouncerMiddleware as ASGIMiddleware
from cscapi.web.wsgi import BouncerMiddleware as WSGIMiddleware

HEADERS = [
    (b"host", b"example.com"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-language", b"en-GB,en;q=0.9,fr;q=0.8"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"cookie", b"session=abcdef0123456789; theme=dark"),
]


def engine_with_decisions(count: int) -> RemediationEngine:
    """An engine whose memory store holds ``count`` banned IPs (none of them the benchmark's client)."""
    from cscapi.models import DecisionStream, StreamDecision

    class Source:
        def get_decisions(self, *args: Any, **kwargs: Any) -> DecisionStream:
            new = [
                StreamDecision(value=f"100.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", scope="ip",
                               scenario="crowdsecurity/ssh-bf", duration=86400, type="ban")
                for i in range(count)
            ]  # fmt: skip
            return DecisionStream(new=new, deleted=[], blocklists=[], allowlists=[], raw={"new": [], "deleted": []})

    engine = RemediationEngine(Source(), machine_id="bench", sync_interval_ms=0)  # type: ignore[arg-type]
    engine.refresh_decisions()
    return engine


def paired_us(bare: Callable[[], None], wrapped: Callable[[], None], n: int, rounds: int = 15) -> tuple[float, float]:
    """Medians over ``rounds`` of the mean µs per call of ``bare`` and ``wrapped``, measured alternately (n calls
    each) so that a load change on a shared machine hits both alike; the overhead is the median of the per-round
    differences, reported as the difference of the two medians' pairs."""
    bare_samples, diffs = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            bare()
        middle = time.perf_counter()
        for _ in range(n):
            wrapped()
        end = time.perf_counter()
        bare_samples.append((middle - start) / n * 1e6)
        diffs.append(((end - middle) - (middle - start)) / n * 1e6)
    bare_us = statistics.median(bare_samples)
    return bare_us, bare_us + statistics.median(diffs)


def per_call_us(fn: Callable[[], None], n: int, rounds: int = 7) -> float:
    """Median over ``rounds`` of the mean µs per call of ``fn`` over ``n`` calls."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def _consume(result: Any) -> None:
    """Read and close a WSGI response, as a server would (Flask and Django finish the request on close)."""
    for _ in result:
        pass
    close = getattr(result, "close", None)
    if close is not None:
        close()


def framework_cases(bouncer: Bouncer, environ: dict[str, Any], start_response: Any) -> list[Any]:
    """(name, bare, protected) call pairs for Flask and Django, those installed."""
    cases: list[Any] = []
    env = {**environ, "SERVER_NAME": "example.com", "SERVER_PORT": "443", "SERVER_PROTOCOL": "HTTP/1.1"}
    try:
        from flask import Flask

        from cscapi.web.flask import CrowdSec
    except ImportError:
        print("flask: not installed, skipped")
    else:

        def flask_app() -> Any:
            app = Flask("bench")
            app.add_url_rule("/products/<int:pid>", "product", lambda pid: "ok")
            return app

        bare_flask, protected_flask = flask_app(), flask_app()
        CrowdSec(protected_flask, bouncer=bouncer)
        cases.append(
            (
                "flask",
                lambda: _consume(bare_flask(dict(env), start_response)),
                lambda: _consume(protected_flask(dict(env), start_response)),
            )
        )
    try:
        import django
        from django.conf import settings
    except ImportError:
        print("django: not installed, skipped")
        return cases
    from django.http import HttpResponse
    from django.urls import path

    settings.configure(
        SECRET_KEY="bench-secret-key-0123456789",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        CSCAPI={"BOUNCER": bouncer},
    )
    django.setup()
    global urlpatterns
    urlpatterns = [path("products/<int:pid>", lambda request, pid: HttpResponse("ok"))]
    from django.core.handlers.wsgi import WSGIHandler

    bare_django = WSGIHandler()
    settings.MIDDLEWARE = ["cscapi.web.django.BouncerMiddleware"]
    protected_django = WSGIHandler()
    cases.append(
        (
            "django",
            lambda: _consume(bare_django(dict(env), start_response)),
            lambda: _consume(protected_django(dict(env), start_response)),
        )
    )
    return cases


urlpatterns: list[Any] = []


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    engine = engine_with_decisions(10_000)
    bouncer = Bouncer(engine, secret_key="bench-secret-key-0123456789")

    async def bare_asgi(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    scope = {
        "type": "http", "method": "GET", "path": "/products/42", "query_string": b"ref=home", "headers": HEADERS,
        "client": ("203.0.113.50", 51234), "scheme": "https",
    }  # fmt: skip
    wrapped_asgi = ASGIMiddleware(bare_asgi, bouncer)

    def drive(app: Any) -> Callable[[], None]:
        def once() -> None:
            coro = app(scope, receive, send)
            try:
                coro.send(None)
            except StopIteration:
                return
            raise RuntimeError("the coroutine suspended")

        return once

    def bare_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/products/42", "QUERY_STRING": "ref=home", "REMOTE_ADDR": "203.0.113.50",
        "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(), "HTTP_HOST": "example.com",
        "HTTP_USER_AGENT": "Mozilla/5.0", "HTTP_ACCEPT": "text/html", "HTTP_COOKIE": "session=abc",
    }  # fmt: skip
    wrapped_wsgi = WSGIMiddleware(bare_wsgi, bouncer)

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        return None

    cases: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
        ("asgi", drive(bare_asgi), drive(wrapped_asgi)),
        ("wsgi", lambda: bare_wsgi(environ, start_response) and None, lambda: wrapped_wsgi(environ, start_response)),
    ]
    cases.extend(framework_cases(bouncer, environ, start_response))
    results = {}
    for name, bare, wrapped in cases:
        bare()
        wrapped()
        calls = n if name in ("asgi", "wsgi") else max(n // 20, 100)  # the frameworks take ~50 µs a request
        bare_us, wrapped_us = paired_us(bare, wrapped, calls)
        results[name] = (bare_us, wrapped_us)
        print(
            f"{name:7s} bare app {bare_us:8.2f} µs, protected {wrapped_us:8.2f} µs: overhead "
            f"+{wrapped_us - bare_us:.2f} µs per clean request (x{wrapped_us / bare_us:.2f}; target <= +10 µs)"
        )
    lookup_us = per_call_us(lambda: engine.get_ip_remediation("203.0.113.50") and None, n)
    count_us = per_call_us(lambda: engine.update_metrics_origins_count("clean", "bypass"), n)
    print(f"of which: engine lookup {lookup_us:.2f} µs, usage count {count_us:.2f} µs")
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
