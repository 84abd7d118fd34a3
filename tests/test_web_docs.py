"""docs/web.md's snippets run as written: the ASGI app factory, the WSGI wrapper and the Walls example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from conftest import require_module
from cscapi.web import Walls
from test_web_support import BANNED, CLEAN_IP, KEY, make_engine

DOC = Path(__file__).resolve().parent.parent / "docs" / "web.md"


def block(containing: str) -> dict[str, Any]:
    code = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S) if containing in b)
    namespace: dict[str, Any] = {"__name__": "web_docs_snippet"}  # Flask(__name__) needs a module name
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


def test_the_asgi_snippet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCAPI_WEB_SECRET", KEY)
    engine = make_engine()
    try:
        app = block("def create_app(")["create_app"](engine)
        assert TestClient(app, client=(CLEAN_IP, 1)).get("/").text == "hello"
        assert TestClient(app, client=(BANNED, 1)).get("/").status_code == 403
        assert TestClient(app, client=(BANNED, 1)).get("/health").status_code == 200
        proxied = TestClient(app, client=("10.1.2.3", 1))
        assert proxied.get("/", headers={"x-forwarded-for": BANNED}).status_code == 403
    finally:
        engine.close()


def test_the_wsgi_snippet() -> None:
    engine = make_engine()
    try:
        protect = block("def protect(")["protect"]

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [])
            return [b"ok"]

        wrapped = protect(app, engine, KEY)
        statuses: list[str] = []
        wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": BANNED}, lambda s, h: statuses.append(s))
        assert statuses == ["403 Forbidden"]
    finally:
        engine.close()


def test_the_walls_snippet() -> None:
    walls = block("walls = Walls(")["walls"]
    assert isinstance(walls, Walls)
    assert walls.language("de-DE") == "de"
    page = walls.render("ban", "de")
    assert "Zugriff verweigert" in page and '<html lang="de">' in page and "#6f2dbd" in page


def filled_store(path: Path) -> str:
    """A SQLite decision store as the agent leaves it: ``BANNED`` banned."""
    from cscapi.remediation import RemediationEngine
    from test_remediation_support import FakeSource, decision, stream

    store = f"sqlite:///{path / 'decisions.db'}"
    source = FakeSource()
    source.streams.append(stream([decision(BANNED)]))
    agent = RemediationEngine(source, store=store, sync_interval_ms=0)
    agent.refresh_decisions()
    agent.close()
    return store


def test_the_fastapi_snippet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CSCAPI_WEB_SECRET", KEY)
    app = block("def create_fastapi_app(")["create_fastapi_app"](filled_store(tmp_path))
    assert TestClient(app, client=(CLEAN_IP, 1)).get("/").json() == {"hello": "world"}
    assert TestClient(app, client=(BANNED, 1)).get("/").status_code == 403


def test_the_flask_snippet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLASK_SECRET_KEY", KEY)
    monkeypatch.setenv("CSCAPI_DECISION_STORE", filled_store(tmp_path))
    namespace = block("def create_flask_app(")
    app = namespace["create_flask_app"]()
    client = app.test_client()
    assert client.get("/", environ_base={"REMOTE_ADDR": CLEAN_IP}).get_data(as_text=True) == "hello"
    assert client.get("/", environ_base={"REMOTE_ADDR": BANNED}).status_code == 403
    assert (
        client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.2"}, headers={"X-Forwarded-For": BANNED}).status_code
        == 403
    )
    assert client.post("/login", environ_base={"REMOTE_ADDR": CLEAN_IP}).status_code == 401
    assert namespace["crowdsec"].bouncer_of(app).fail_open is True


def test_the_django_settings_snippet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cscapi.web._settings import problems

    monkeypatch.setenv("CSCAPI_DECISION_STORE", filled_store(tmp_path))
    namespace = block('"cscapi.web.django.BouncerMiddleware"')
    assert "cscapi.web.django" in namespace["INSTALLED_APPS"]
    middleware = namespace["MIDDLEWARE"]
    assert middleware.index("cscapi.web.django.BouncerMiddleware") < middleware.index(
        "django.middleware.csrf.CsrfViewMiddleware"
    )
    settings = {k.lower(): v for k, v in namespace["CSCAPI"].items()}
    assert problems(settings, default_secret=KEY) == []


def test_every_django_check_id_is_documented() -> None:
    require_module("django")
    from cscapi.web.django.checks import IDS

    text = DOC.read_text()
    for check_id in set(IDS.values()):
        assert f"`{check_id}`" in text, check_id


def test_every_settings_name_is_documented() -> None:
    from cscapi.web._settings import OPTIONS

    text = DOC.read_text()
    for name in OPTIONS:
        assert f"`{name.upper()}`" in text, name
