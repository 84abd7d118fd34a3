"""The CLI's log handler (``cscapi run``'s service log included) escapes CR/LF in a record's message: a server's
text carried by a log line cannot forge another line. A traceback, our own text, keeps its lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cscapi.cli._context import _HANDLER, setup_logging

FORGED = "bad request\n2026-12-06T21:00:00Z INFO pushed 999 signals\r\nerror: fake"


@pytest.fixture(params=[False, True], ids=["command", "service"])
def handler(request: pytest.FixtureRequest) -> Iterator[None]:
    setup_logging(logging.INFO)
    _HANDLER.service_format(bool(request.param))
    yield
    _HANDLER.service_format(False)


def test_a_server_text_with_newlines_stays_on_one_line(handler: None, capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("cscapi.flows").warning("Quarantined signal %s: 400 %s", "u-1", FORGED)
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "400 bad request\\x0a2026-12-06T21:00:00Z INFO pushed 999 signals\\x0d\\x0aerror: fake" in err


def test_a_traceback_keeps_its_lines(handler: None, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("cscapi.agent").exception("job failed: %s", "a\nb")
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert first.endswith("job failed: a\\x0ab")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"
