"""A solved challenge is accepted once across the workers sharing a decision store (SQLite, Redis): the second worker
to see the same answer refuses it, whichever framework (sync or async path) each worker runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cscapi.remediation import RemediationEngine
from test_remediation_support import FakeSource, decision, stream
from test_web_fastapi import FastAPISite
from test_web_flask import FlaskSite
from test_web_support import CAPTCHA, make_bouncer, solved_form


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A shared decision store where ``CAPTCHA`` is under a captcha decision (as the agent would fill it)."""
    if request.param == "sqlite":
        uri, kw = f"sqlite:///{tmp_path / 'decisions.db'}", {}
    else:
        uri, kw = request.getfixturevalue("redis_url"), {"key_prefix": request.getfixturevalue("redis_prefix")}
    source = FakeSource()
    source.streams.append(stream([decision(CAPTCHA, type_="captcha")]))
    agent = RemediationEngine(source, uri, sync_interval_ms=0, **kw)
    agent.refresh_decisions()
    agent.close()
    return uri, kw


def test_a_solved_challenge_is_accepted_once_across_workers(shared_store: tuple[str, dict[str, Any]]) -> None:
    uri, kw = shared_store
    a = RemediationEngine(None, uri, sync_interval_ms=0, **kw)
    b = RemediationEngine(None, uri, sync_interval_ms=0, **kw)
    try:
        asgi_worker = FastAPISite(make_bouncer(a))  # the async path (claim in a worker thread)
        wsgi_worker = FlaskSite(make_bouncer(b))  # the sync path
        for first, second in ((wsgi_worker, asgi_worker), (asgi_worker, wsgi_worker)):
            page = first.get(CAPTCHA, "/", cookie="")
            assert page.status == 401
            form = solved_form(page.text)
            accepted = first.post(CAPTCHA, "/.cscapi/captcha", form)
            assert accepted.status == 303 and accepted.set_cookie  # any worker verifies what another issued
            replayed = second.post(CAPTCHA, "/.cscapi/captcha", form)
            assert replayed.status == 401 and replayed.set_cookie is None  # the same answer in another worker
            assert first.post(CAPTCHA, "/.cscapi/captcha", form).status == 401  # and in the same one
        fresh = solved_form(wsgi_worker.get(CAPTCHA, "/", cookie="").text)
        assert asgi_worker.post(CAPTCHA, "/.cscapi/captcha", fresh).status == 303  # a new challenge still passes
    finally:
        a.close()
        b.close()
