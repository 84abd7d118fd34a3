"""cscapi.web.django with Django's own test clients (sync Client and AsyncClient: the middleware in both modes): the
shared scenarios, settings from one CSCAPI dict, system checks, the management command, user_login_failed."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

from test_web_support import BANNED, CAPTCHA, CLEAN_IP, KEY

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY=KEY,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "cscapi.web.django"],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "cscapi.web.django.BouncerMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",  # after the bouncer: the challenge POST needs no CSRF token
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CSCAPI={"DECISION_STORE": "redis://127.0.0.1:1/0"},  # each test overrides it
        USE_TZ=True,
    )
    django.setup()

from asgiref.sync import async_to_sync
from django.core import checks
from django.core.management import ManagementUtility, call_command
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import re_path
from django.views.decorators.csrf import csrf_exempt

from cscapi.web import Bouncer
from cscapi.web.django import get_bouncer, report_failed_login
from web_framework_scenarios import SCENARIOS, RecordingBouncer, Resp, header_map

RAN: list[str] = []


@csrf_exempt
def page(request: HttpRequest) -> HttpResponse:
    RAN.append(request.path)
    if request.path == "/login" and request.method == "POST":
        report_failed_login(request)  # a wrong password (web_framework_scenarios.detectors_across_workers)
    if request.path.startswith("/missing/"):
        return HttpResponse("not found", status=404, content_type="text/plain")
    return HttpResponse(f"app {request.path}", content_type="text/plain")


urlpatterns = [re_path(r"^.*$", page)]


class AsyncClientFrom(AsyncClient):  # type: ignore[misc]
    """Django's AsyncClient with another peer than 127.0.0.1 (the ASGI scope's ``client``)."""

    def __init__(self, ip: str) -> None:
        super().__init__()
        self.ip = ip

    def _base_scope(self, **request: Any) -> dict[str, Any]:
        scope: dict[str, Any] = super()._base_scope(**request)
        scope["client"] = [self.ip, 4321]
        return scope


class DjangoSite:
    """The test project above with ``CSCAPI = {"BOUNCER": bouncer}``; one test client (cookie jar) per client IP."""

    asynchronous = False

    def __init__(self, bouncer: Bouncer) -> None:
        RAN.clear()
        self.ran = RAN
        self.bouncer = bouncer
        self._clients: dict[str, Any] = {}

    def _client(self, ip: str, fresh: bool = False) -> Any:
        if fresh or ip not in self._clients:
            # The ASGI client's peer is the scope's "client"; the WSGI one's REMOTE_ADDR.
            client = AsyncClientFrom(ip) if self.asynchronous else Client(REMOTE_ADDR=ip)
            if fresh:
                return client
            self._clients[ip] = client
        return self._clients[ip]

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Resp:
        with override_settings(CSCAPI={"BOUNCER": self.bouncer}):
            r = async_to_sync(method)(*args, **kwargs) if self.asynchronous else method(*args, **kwargs)
        morsel = r.cookies.get("cscapi_captcha")
        return Resp(r.status_code, header_map(r.headers.items()), r.content.decode(), morsel.value if morsel else None)

    def get(self, ip: str, path: str, *, headers: dict[str, str] | None = None, cookie: str | None = None) -> Resp:
        client = self._client(ip, fresh=cookie is not None)
        if cookie is not None:
            client.cookies["cscapi_captcha"] = cookie
        return self._call(client.get, path, headers=headers or {})

    def post(self, ip: str, path: str, form: dict[str, str], *, cookie: str | None = None) -> Resp:
        # What a browser sends for the challenge form (Django's test client would default to multipart).
        body = urllib.parse.urlencode(form)
        return self._call(self._client(ip).post, path, body, content_type="application/x-www-form-urlencoded")


class AsyncDjangoSite(DjangoSite):
    asynchronous = True


@pytest.mark.parametrize("site", [DjangoSite, AsyncDjangoSite], ids=["sync", "async"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario(scenario: str, site: type[DjangoSite]) -> None:
    SCENARIOS[scenario](site)


def test_the_middleware_runs_in_the_mode_of_the_chain() -> None:
    from asgiref.sync import iscoroutinefunction

    from cscapi.web.django import BouncerMiddleware

    async def async_view(request: Any) -> Any:
        return None

    from test_web_support import make_bouncer, make_engine

    engine = make_engine()
    try:
        with override_settings(CSCAPI={"BOUNCER": make_bouncer(engine)}):
            assert iscoroutinefunction(BouncerMiddleware(async_view))
            assert not iscoroutinefunction(BouncerMiddleware(lambda request: None))
    finally:
        engine.close()


def fill_store(path: Path) -> str:
    """A SQLite decision store filled as the agent would: ``BANNED`` banned, ``CAPTCHA`` under captcha."""
    from cscapi.remediation import RemediationEngine
    from test_remediation_support import FakeSource, decision, stream

    store = f"sqlite:///{path / 'decisions.db'}"
    source = FakeSource()
    source.streams.append(stream([decision(BANNED), decision(CAPTCHA, type_="captcha")]))
    agent = RemediationEngine(source, store=store, sync_interval_ms=0)
    agent.refresh_decisions()
    agent.close()
    return store


def test_configured_from_the_cscapi_dict(tmp_path: Path) -> None:
    store = fill_store(tmp_path)
    config = {
        "DECISION_STORE": store,
        "TRUSTED_PROXIES": ["10.0.0.0/8"],
        "EXEMPT_PATHS": ["/health"],
        "CAPTCHA": "pow",
        "CAPTCHA_OPTIONS": {"difficulty": 9},
        "FAIL_OPEN": False,
    }
    RAN.clear()
    with override_settings(CSCAPI=config):
        bouncer = get_bouncer()
        assert bouncer.captcha.difficulty == 9  # type: ignore[attr-defined]
        assert bouncer.fail_open is False and get_bouncer() is bouncer  # built once
        assert Client(REMOTE_ADDR=BANNED).get("/").status_code == 403
        assert Client(REMOTE_ADDR=BANNED).get("/health").status_code == 200
        assert Client(REMOTE_ADDR="10.0.0.7").get("/", headers={"x-forwarded-for": BANNED}).status_code == 403
        assert Client(REMOTE_ADDR=CAPTCHA).get("/").status_code == 401
        assert Client(REMOTE_ADDR=CLEAN_IP).get("/x").status_code == 200
    assert RAN == ["/health", "/x"]
    with override_settings(CSCAPI={**config, "SECRET_KEY": "another-key-0123456789"}):
        assert get_bouncer() is not bouncer  # settings changed: built again


def cscapi_errors() -> list[checks.CheckMessage]:
    return [m for m in checks.run_checks() if str(m.id).startswith("cscapi.")]


@pytest.mark.parametrize(
    ("config", "check_id", "text"),
    [
        (None, "cscapi.E001", "settings.CSCAPI is missing"),
        ({}, "cscapi.E002", "decision_store is missing"),
        ({"DECISION_STORE": "postgres://x/y"}, "cscapi.E002", "unknown scheme"),
        ({"DECISION_STORE": "sqlite:////no/such/dir/d.db"}, "cscapi.E002", "does not exist"),
        ({"DECISION_STORE": "redis://127.0.0.1:1/0", "SECRET_KEY": "short"}, "cscapi.E003", "16 characters"),
        ({"DECISION_STORE": "redis://127.0.0.1:1/0", "TRUSTED_PROXIES": ["10.0.0.0/40"]}, "cscapi.E004", "CIDR"),
        ({"DECISION_STORE": "redis://127.0.0.1:1/0", "EXEMPT_IPS": ["office"]}, "cscapi.E004", "'office'"),
        ({"DECISION_STORE": "redis://127.0.0.1:1/0", "FORWARDED_HEADER": "true-client-ip"}, "cscapi.E004", "one of"),
        ({"DECISION_STORE": "redis://127.0.0.1:1/0", "CAPTCHA": "sudoku"}, "cscapi.E005", "'sudoku' is unknown"),
        ({"DECISION_STORE": "redis://127.0.0.1:1/0", "FAIL_OPN": False}, "cscapi.E006", "FAIL_OPN"),
        ({"BOUNCER": "os.sep"}, "cscapi.E008", "not a cscapi.web.Bouncer"),
        ({"BOUNCER": f"{__name__}.not_a_bouncer_factory"}, "cscapi.E008", "not a cscapi.web.Bouncer"),
        ({"BOUNCER": "no.such.module"}, "cscapi.E001", "cannot be read"),
    ],
)
def test_system_checks_flag_a_bad_configuration(config: dict[str, Any] | None, check_id: str, text: str) -> None:
    with override_settings(CSCAPI=config):
        found = cscapi_errors()
    assert [m.id for m in found] == [check_id], [m.msg for m in found]
    assert text in found[0].msg and found[0].hint and found[0].is_serious()
    assert KEY not in found[0].msg


def test_system_checks_missing_secret_and_a_good_configuration(tmp_path: Path) -> None:
    with override_settings(CSCAPI={"DECISION_STORE": "redis://127.0.0.1:1/0"}, SECRET_KEY=""):
        assert [m.id for m in cscapi_errors()] == ["cscapi.E003"]
    good = {
        "DECISION_STORE": fill_store(tmp_path),
        "TRUSTED_PROXIES": ["10.0.0.0/8", "fd00::/8", "unix"],
        "FORWARDED_HEADER": "forwarded",
    }
    with override_settings(CSCAPI=good):
        assert cscapi_errors() == []
        call_command("check")  # raises SystemCheckError on any error


def test_manage_py_cscapi_runs_the_cli_on_the_configured_store(tmp_path: Path, capsys: Any) -> None:
    store = fill_store(tmp_path)
    with override_settings(CSCAPI={"DECISION_STORE": store}):
        call_command("cscapi", "--json", "decisions", "check", BANNED, CLEAN_IP)
        answers = json.loads(capsys.readouterr().out)
        assert [(a["ip"], a["remediation"]) for a in answers] == [(BANNED, "ban"), (CLEAN_IP, "bypass")]
        # As `manage.py cscapi ...` (argv passed through untouched, Django's --settings dropped).
        utility = ManagementUtility(["manage.py", "cscapi", "--settings=x.y", "--json", "decisions", "check", CAPTCHA])
        utility.execute()
        assert json.loads(capsys.readouterr().out)[0]["remediation"] == "captcha"
        # A failing CLI run: its exit status comes back.
        with pytest.raises(SystemExit) as info:
            ManagementUtility(["manage.py", "cscapi", "decisions", "no-such-command"]).execute()
        assert info.value.code == 2
        assert "no-such-command" in capsys.readouterr().err


def test_user_login_failed_is_reported_to_the_detector() -> None:
    """Django's user_login_failed signal reaches bouncer.report_failed_login with the request's client IP view; a
    bouncer without a detector makes it a no-op."""
    from django.contrib.auth.signals import user_login_failed
    from django.test import RequestFactory

    from cscapi.web.django import report_failed_login
    from test_web_support import make_engine

    engine = make_engine()
    try:
        bouncer = RecordingBouncer(engine, secret_key=KEY, trusted_proxies=["10.0.0.0/8"])
        with override_settings(CSCAPI={"BOUNCER": bouncer}):
            request = RequestFactory(REMOTE_ADDR="10.0.0.9").post("/login", headers={"x-forwarded-for": CLEAN_IP})
            user_login_failed.send(sender=__name__, credentials={"username": "nobody"}, request=request)
            user_login_failed.send(sender=__name__, credentials={"username": "nobody"})  # no request: ignored
            assert len(bouncer.failed_logins) == 1
            assert bouncer.client_ip(bouncer.failed_logins[0]) == CLEAN_IP
        plain = Bouncer(engine, secret_key=KEY)
        with override_settings(CSCAPI={"BOUNCER": plain}):
            assert report_failed_login(request) is False  # no detectors
    finally:
        engine.close()


class RefusingBackend:
    """An authentication backend that knows nobody (no database needed): every authenticate() fails."""

    def authenticate(self, request: Any, **credentials: Any) -> None:
        return None

    def get_user(self, user_id: Any) -> None:
        return None


def test_user_login_failed_feeds_real_detectors_and_404_bursts_too() -> None:
    """With cscapi.web.detect's detectors: Django's user_login_failed (from authenticate()) overflows the failed-login
    bucket and the client is banned; bursts of 404s through the middleware overflow the not-found bucket."""
    from django.contrib.auth import authenticate
    from django.test import RequestFactory

    from cscapi.web.detect import Detectors, failed_login, http_probing
    from test_web_support import make_engine

    engine = make_engine()
    detectors = Detectors(
        engine,
        [failed_login("acme/login-bf"), http_probing("acme/probing", capacity=3, decision_type="ban")],
        failed_login="acme/login-bf",
        not_found="acme/probing",
        buckets="memory",
        clock=lambda: 1_000_000.0,
    )
    try:
        bouncer = Bouncer(engine, secret_key=KEY, detectors=detectors)
        backends = [f"{__name__}.RefusingBackend"]
        with override_settings(CSCAPI={"BOUNCER": bouncer}, AUTHENTICATION_BACKENDS=backends):
            for _ in range(6):
                request = RequestFactory(REMOTE_ADDR=CLEAN_IP).post("/login")
                assert authenticate(request, username="nobody", password="wrong") is None
            assert engine.get_ip_remediation(CLEAN_IP).origin == "local"
            assert Client(REMOTE_ADDR=CLEAN_IP).get("/").status_code == 403
            # 404s (the test view answers 404 under /missing/): the 4th overflows capacity 3.
            prober = "192.0.2.77"
            statuses = [Client(REMOTE_ADDR=prober).get(f"/missing/{i}").status_code for i in range(5)]
            assert statuses == [404] * 4 + [403]
            assert engine.get_ip_remediation(prober).origin == "local"
    finally:
        detectors.close()
        engine.close()


def test_a_bad_configuration_stops_the_server_at_startup() -> None:
    """The middleware builds the bouncer when Django loads it (WSGIHandler()/ASGIHandler()), not on the 1st request."""
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    from cscapi.errors import ConfigurationError

    with override_settings(CSCAPI={"DECISION_STORE": "mysql://db/decisions"}):
        for handler in (WSGIHandler, ASGIHandler):
            with pytest.raises(ConfigurationError, match="unknown scheme"):
                handler()


FACTORY_ENGINES: list[Any] = []


def bouncer_factory() -> Bouncer:
    """CSCAPI['BOUNCER'] as a dotted path to a function building the bouncer."""
    from test_web_support import make_bouncer, make_engine

    engine = make_engine()
    FACTORY_ENGINES.append(engine)
    return make_bouncer(engine)


def not_a_bouncer_factory() -> str:
    """A BOUNCER factory whose annotation says it builds no Bouncer (cscapi.E008 without calling it)."""
    raise AssertionError("the system checks must not call a BOUNCER factory")


def test_system_checks_build_no_engine_from_a_factory() -> None:
    """Running the checks (twice) calls no BOUNCER factory: no engine is built, no store left open."""
    before = len(FACTORY_ENGINES)
    try:
        with override_settings(CSCAPI={"BOUNCER": f"{__name__}.bouncer_factory"}):
            assert cscapi_errors() == []
            assert cscapi_errors() == []
            assert len(FACTORY_ENGINES) == before
    finally:
        for engine in FACTORY_ENGINES[before:]:
            engine.close()


def test_bouncer_as_a_dotted_path_to_a_factory() -> None:
    try:
        with override_settings(CSCAPI={"BOUNCER": f"{__name__}.bouncer_factory"}):
            assert cscapi_errors() == []
            assert Client(REMOTE_ADDR=BANNED).get("/").status_code == 403
            assert Client(REMOTE_ADDR=CLEAN_IP).get("/").status_code == 200
            assert get_bouncer().engine is FACTORY_ENGINES[-1]
    finally:
        for engine in FACTORY_ENGINES:
            engine.close()


def test_without_django_the_import_says_what_to_install() -> None:
    import subprocess
    import sys

    code = "import sys; sys.modules['django'] = None\nimport cscapi.web.django"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "pip install 'cscapi[django]'" in done.stderr
