"""cscapi.web.flask.CrowdSec with Flask's own test client: the shared scenarios, app.config settings, init_app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from conftest import require_module
from cscapi.errors import ConfigurationError
from cscapi.web import Bouncer, ImageCaptcha, ProofOfWork
from cscapi.web.flask import CrowdSec
from test_web_support import BANNED, CLEAN_IP, KEY, PROXY
from web_framework_scenarios import SCENARIOS, RecordingBouncer, Resp, header_map


class FlaskSite:
    """A Flask app protected by ``CrowdSec(app, bouncer=...)``, one Flask test client (cookie jar) per client IP."""

    def __init__(self, bouncer: Bouncer | None = None, app: Flask | None = None) -> None:
        self.ran: list[str] = []
        self.app = app or make_app(self.ran)
        if bouncer is not None:
            CrowdSec(self.app, bouncer=bouncer)
        self._clients: dict[str, Any] = {}

    def _client(self, ip: str) -> Any:
        if ip not in self._clients:
            self._clients[ip] = self.app.test_client()
        return self._clients[ip]

    def _resp(self, r: Any) -> Resp:
        cookie = None
        for value in r.headers.getlist("Set-Cookie"):
            if value.startswith("cscapi_captcha="):
                cookie = value.split(";", 1)[0].split("=", 1)[1]
        return Resp(r.status_code, header_map(r.headers.items()), r.get_data(as_text=True), cookie)

    def get(self, ip: str, path: str, *, headers: dict[str, str] | None = None, cookie: str | None = None) -> Resp:
        headers = dict(headers or {})
        if cookie is not None:  # a fresh client holding only this cookie
            client = self.app.test_client()
            client.set_cookie("cscapi_captcha", cookie)
            return self._resp(client.get(path, headers=headers, environ_base={"REMOTE_ADDR": ip}))
        return self._resp(self._client(ip).get(path, headers=headers, environ_base={"REMOTE_ADDR": ip}))

    def post(self, ip: str, path: str, form: dict[str, str], *, cookie: str | None = None) -> Resp:
        return self._resp(self._client(ip).post(path, data=form, environ_base={"REMOTE_ADDR": ip}))


def make_app(ran: list[str]) -> Flask:
    app = Flask(__name__)

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def page(path: str) -> str:
        from flask import request

        ran.append(request.path)
        if request.path == "/login" and request.method == "POST":
            CrowdSec().report_failed_login()  # a wrong password (web_framework_scenarios.detectors_across_workers)
        return f"app {request.path}"

    return app


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario(scenario: str) -> None:
    SCENARIOS[scenario](lambda bouncer: FlaskSite(bouncer))


def test_configured_from_app_config(tmp_path: Path) -> None:
    """No bouncer given: CSCAPI_* keys build one (SECRET_KEY by default), on a SQLite store an agent would fill."""
    from cscapi.remediation import RemediationEngine
    from test_remediation_support import FakeSource, decision, stream

    store = f"sqlite:///{tmp_path / 'decisions.db'}"
    source = FakeSource()
    source.streams.append(stream([decision(BANNED)]))
    agent = RemediationEngine(source, store=store, sync_interval_ms=0)
    agent.refresh_decisions()
    agent.close()
    ran: list[str] = []
    app = make_app(ran)
    app.config.update(
        SECRET_KEY=KEY,
        CSCAPI_DECISION_STORE=store,
        CSCAPI_TRUSTED_PROXIES=["10.0.0.0/8"],
        CSCAPI_FORWARDED_HEADER="X-Real-IP",
        CSCAPI_EXEMPT_PATHS=["/health"],
        CSCAPI_CAPTCHA="pow",
        CSCAPI_CAPTCHA_OPTIONS={"difficulty": 10},
        CSCAPI_FAIL_OPEN=False,
    )
    ext = CrowdSec()
    ext.init_app(app)
    bouncer = CrowdSec.bouncer_of(app)
    assert isinstance(bouncer.captcha, ProofOfWork) and bouncer.captcha.difficulty == 10
    assert bouncer.fail_open is False and "***" in repr(bouncer) and KEY not in repr(bouncer)
    with app.app_context():
        assert ext.bouncer is bouncer
    c = app.test_client()
    assert c.get("/", environ_base={"REMOTE_ADDR": BANNED}).status_code == 403
    assert c.get("/health", environ_base={"REMOTE_ADDR": BANNED}).status_code == 200
    proxied = {"REMOTE_ADDR": PROXY}
    assert bouncer.forwarded_header == "x-real-ip"
    assert c.get("/", headers={"X-Real-IP": BANNED}, environ_base=proxied).status_code == 403
    spoof = {"X-Real-IP": BANNED, "X-Forwarded-For": CLEAN_IP}  # a header the proxy does not set is ignored
    assert c.get("/", headers=spoof, environ_base=proxied).status_code == 403
    assert c.get("/", environ_base={"REMOTE_ADDR": CLEAN_IP}).status_code == 200
    assert ran == ["/health", "/"]
    with pytest.raises(ConfigurationError, match="already"):
        ext.init_app(app)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({}, "decision_store is missing"),
        ({"CSCAPI_DECISION_STORE": "mysql://x"}, "unknown scheme"),
        ({"CSCAPI_DECISION_STORE": "memory://"}, "private to this process"),
        ({"CSCAPI_DECISION_STORE": "sqlite:////no/such/dir/d.db"}, "does not exist"),
        ({"CSCAPI_DECISION_STORE": "redis://127.0.0.1:1/0", "SECRET_KEY": None}, "secret_key is missing"),
        ({"CSCAPI_DECISION_STORE": "redis://127.0.0.1:1/0", "CSCAPI_SECRET_KEY": "short"}, "16 characters"),
        ({"CSCAPI_DECISION_STORE": "redis://127.0.0.1:1/0", "CSCAPI_TRUSTED_PROXIES": ["10.0.0.0/33"]}, "CIDR"),
        ({"CSCAPI_DECISION_STORE": "redis://127.0.0.1:1/0", "CSCAPI_TRUSTED_PROXIES": "10.0.0.0/8"}, "a list"),
        ({"CSCAPI_DECISION_STORE": "redis://127.0.0.1:1/0", "CSCAPI_CAPTCHA": "recaptcha-v9"}, "is unknown"),
        ({"CSCAPI_DECISION_STORE": "redis://127.0.0.1:1/0", "CSCAPI_FORWARDED_HEADER": "x-forwarded"}, "one of"),
        ({"CSCAPI_DECISION_STORE": "redis://127.0.0.1:1/0", "CSCAPI_TRUSTD_PROXIES": []}, "CSCAPI_TRUSTD_PROXIES"),
    ],
)
def test_bad_config_is_refused_at_init_app(config: dict[str, Any], match: str) -> None:
    app = Flask(__name__)
    app.config.update({"SECRET_KEY": KEY, **config})
    with pytest.raises(ConfigurationError, match=match) as info:
        CrowdSec(app)
    assert KEY not in str(info.value)
    assert "cscapi" not in app.extensions


def test_report_failed_login_reaches_the_detector() -> None:
    """The helper hands the bouncer's detector the current request's view (client IP through trusted proxies); with
    no detector on the bouncer it is a no-op returning False."""
    engine = _engine()
    try:
        bouncer = RecordingBouncer(engine, secret_key=KEY, trusted_proxies=["10.0.0.0/8"])
        app = make_app([])
        ext = CrowdSec(app, bouncer=bouncer)
        ctx = {"environ_base": {"REMOTE_ADDR": PROXY}, "headers": {"X-Forwarded-For": CLEAN_IP}}
        with app.test_request_context("/login", method="POST", **ctx):
            assert ext.report_failed_login() is True
        assert [bouncer.client_ip(r) for r in bouncer.failed_logins] == [CLEAN_IP]
        plain = Bouncer(engine, secret_key=KEY)
        other = make_app([])
        with other.test_request_context("/login"):
            assert CrowdSec(other, bouncer=plain).report_failed_login() is False  # no detectors
    finally:
        engine.close()


def _engine() -> Any:
    from test_web_support import make_engine

    return make_engine()


def test_image_captcha_with_the_real_captcha_package() -> None:
    """The real ``captcha`` package renders a PNG; the answer (read from the signed challenge's digest by trying the
    test's candidates, never by OCR) is accepted."""
    require_module("captcha")
    from test_web_image import solve_image_page

    solve_image_page(FlaskSite, ImageCaptcha)


def test_failed_logins_through_the_helper_ban_the_client_with_real_detectors() -> None:
    """cscapi.web.detect's failed-login detector behind the Flask helper: the 6th failure (capacity 5) puts a local
    ban in the engine, and that IP's next request gets the ban wall; the proxy and other clients are untouched."""
    from flask import Flask

    from cscapi.web.detect import Detectors, failed_login

    engine = _engine()
    detectors = Detectors(
        engine,
        [failed_login("acme/login-bf")],
        failed_login="acme/login-bf",
        buckets="memory",
        clock=lambda: 1_000_000.0,
    )
    try:
        bouncer = Bouncer(engine, secret_key=KEY, trusted_proxies=["10.0.0.0/8"], detectors=detectors)
        app = Flask(__name__)
        crowdsec = CrowdSec(app, bouncer=bouncer)

        @app.post("/login")
        def login() -> tuple[str, int]:
            crowdsec.report_failed_login()
            return "wrong password", 401

        c = app.test_client()
        via_proxy = {"environ_base": {"REMOTE_ADDR": PROXY}, "headers": {"X-Forwarded-For": CLEAN_IP}}
        statuses = [c.post("/login", **via_proxy).status_code for _ in range(7)]
        assert statuses == [401] * 6 + [403]  # the 6th overflows; the 7th is stopped at the door
        assert engine.get_ip_remediation(CLEAN_IP).origin == "local"
        assert c.post("/login", environ_base={"REMOTE_ADDR": PROXY}).status_code == 401  # the proxy itself: clean
        assert detectors.counters.overflows == 1
    finally:
        detectors.close()
        engine.close()


def test_apps_on_one_store_share_one_engine_closed_at_exit(tmp_path: Path) -> None:
    """Two apps naming the same store share this process's engine; close_engines() (run at exit) closes it, and the
    usage counts of the requests it served reach the store for the agent to push."""
    from cscapi.remediation import RemediationEngine
    from cscapi.web._settings import close_engines
    from test_web_docs import filled_store

    store = filled_store(tmp_path)
    apps = []
    for _ in range(2):
        app = make_app([])
        app.config.update(SECRET_KEY=KEY, CSCAPI_DECISION_STORE=store)
        CrowdSec(app)
        apps.append(app)
    engine = CrowdSec.bouncer_of(apps[0]).engine
    assert CrowdSec.bouncer_of(apps[1]).engine is engine
    assert apps[0].test_client().get("/", environ_base={"REMOTE_ADDR": BANNED}).status_code == 403
    assert apps[1].test_client().get("/", environ_base={"REMOTE_ADDR": CLEAN_IP}).status_code == 200
    close_engines()
    reader = RemediationEngine(None, store=store)
    try:
        assert reader.get_origins_count() == {"CAPI": {"ban": 1}, "clean": {"bypass": 1}}
    finally:
        reader.close()
    app = make_app([])
    app.config.update(SECRET_KEY=KEY, CSCAPI_DECISION_STORE=store)
    CrowdSec(app)
    assert CrowdSec.bouncer_of(app).engine is not engine  # a closed engine is never handed out again
    close_engines()


def test_proxyfix_applied_after_init_app_runs_before_the_bouncer() -> None:
    """What docs/web.md says about werkzeug's ProxyFix: wrapped after init_app, it rewrites REMOTE_ADDR first and the
    bouncer checks the client it found; wrapped before, the bouncer sees the proxy (and, untrusted, ignores headers)."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    engine = _engine()
    try:
        after = make_app([])
        CrowdSec(after, bouncer=Bouncer(engine, secret_key=KEY))
        after.wsgi_app = ProxyFix(after.wsgi_app, x_for=1)
        proxied = {"environ_base": {"REMOTE_ADDR": PROXY}, "headers": {"X-Forwarded-For": BANNED}}
        assert after.test_client().get("/", **proxied).status_code == 403
        before = make_app([])
        before.wsgi_app = ProxyFix(before.wsgi_app, x_for=1)
        CrowdSec(before, bouncer=Bouncer(engine, secret_key=KEY))
        assert before.test_client().get("/", **proxied).status_code == 200  # the proxy's address was checked
    finally:
        engine.close()


def test_settings_from_the_environment_through_from_prefixed_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What docs/web.md says: FLASK_CSCAPI_* variables (JSON for lists) become the CSCAPI_* keys."""
    from test_web_docs import filled_store

    monkeypatch.setenv("FLASK_SECRET_KEY", KEY)
    monkeypatch.setenv("FLASK_CSCAPI_DECISION_STORE", filled_store(tmp_path))
    monkeypatch.setenv("FLASK_CSCAPI_TRUSTED_PROXIES", '["10.0.0.0/8"]')
    app = make_app([])
    app.config.from_prefixed_env()
    CrowdSec(app)
    proxied = {"environ_base": {"REMOTE_ADDR": PROXY}, "headers": {"X-Forwarded-For": BANNED}}
    assert app.test_client().get("/", **proxied).status_code == 403
