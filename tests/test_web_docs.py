"""docs/web.md's snippets run as written: the ASGI app factory, the WSGI wrapper and the Walls example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cscapi.web import Walls
from test_web_support import BANNED, CLEAN_IP, KEY, make_engine

DOC = Path(__file__).resolve().parent.parent / "docs" / "web.md"


def block(containing: str) -> dict[str, Any]:
    code = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S) if containing in b)
    namespace: dict[str, Any] = {}
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
