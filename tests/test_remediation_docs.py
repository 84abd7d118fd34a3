"""The examples of docs/remediation.md run as written: the emulator example and the WSGI / ASGI middlewares."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cscapi.remediation import RemediationEngine
from test_remediation_support import FakeSource, decision, stream

DOC = Path(__file__).resolve().parent.parent / "docs" / "remediation.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def block_defining(name: str) -> str:
    return next(b for b in blocks() if f"def {name}(" in b)


def test_the_runnable_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = next(b for b in blocks() if "EmbeddedEmulator(" in b)
    exec(compile(code, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "captcha', origin='lists:tor-exits'" in out
    assert "bypass', origin='allowlist:office'" in out


def test_the_lookup_memo_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = next(b for b in blocks() if "lookup_memo=0" in b)
    exec(compile(code, str(DOC), "exec"), {})
    assert capsys.readouterr().out.strip() == "Remediation(remediation='bypass', origin='clean')"


def engine_with_ban() -> RemediationEngine:
    src = FakeSource()
    src.streams.append(stream([decision("192.0.2.1"), decision("192.0.2.2", type_="captcha")]))
    engine = RemediationEngine(src)
    engine.refresh_decisions()
    return engine


def test_the_wsgi_middleware_blocks_before_the_app() -> None:
    namespace: dict[str, Any] = {}
    exec(block_defining("crowdsec_wsgi"), namespace)
    engine = engine_with_ban()
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ)
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = namespace["crowdsec_wsgi"](app, engine)
    statuses: list[str] = []
    assert wrapped({"REMOTE_ADDR": "192.0.2.1"}, lambda s, h: statuses.append(s)) == [b"Forbidden\n"]
    assert statuses == ["403 Forbidden"] and seen == []  # the view never ran
    assert wrapped({"REMOTE_ADDR": "192.0.2.2"}, lambda s, h: statuses.append(s)) == [b"ok"]
    assert seen[0]["crowdsec.captcha"] is True
    assert wrapped({"REMOTE_ADDR": "198.51.100.1"}, lambda s, h: statuses.append(s)) == [b"ok"]
    assert engine.get_origins_count() == {"CAPI": {"ban": 1, "captcha": 1}, "clean": {"bypass": 1}}


@pytest.mark.anyio
async def test_the_asgi_middleware_blocks_before_the_app() -> None:
    namespace: dict[str, Any] = {}
    exec(block_defining("crowdsec_asgi"), namespace)
    engine = engine_with_ban()
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["client"][0])

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    wrapped = namespace["crowdsec_asgi"](app, engine)
    await wrapped({"type": "http", "client": ("192.0.2.1", 5000)}, None, send)
    assert sent[0]["status"] == 403 and calls == []
    await wrapped({"type": "http", "client": ("198.51.100.1", 5000)}, None, send)
    assert calls == ["198.51.100.1"]


def test_the_store_down_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = next(b for b in blocks() if "strict=True" in b)
    exec(compile(code, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "password=***" in out and "s3cret" not in out
    assert "Remediation(remediation='bypass', origin='clean')" in out
    assert "not ready: Redis decision store" in out and "strict: Redis decision store" in out
