"""A hostile decisions stream of thousands of bad items is skipped and counted, but logged in a bounded number of
lines: the first ``_MAX_SKIP_WARNINGS`` reasons one by one, then one summary line with the count of the rest."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cscapi._core import _MAX_SKIP_WARNINGS
from cscapi.sql_storage import SQLStorage
from hostile_server import HostileServer
from test_hostile_transport import MACHINE, call, config, serve

BAD = 10_000


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLStorage]:
    store = SQLStorage(f"sqlite:///{tmp_path / 'signals.db'}")
    yield store
    store.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_of_bad_items_logs_a_bounded_number_of_lines(
    mode: str, storage: SQLStorage, caplog: pytest.LogCaptureFixture
) -> None:
    decisions = [{"value": f"not-an-ip-{i}", "duration": "24h"} for i in range(BAD)]
    decisions.append({"value": "192.0.2.7", "duration": "24h"})
    new = [{"scenario": "crowdsecurity/ssh-bf", "scope": "ip", "decisions": decisions}]
    body = json.dumps({"new": new, "deleted": [], "links": {"blocklists": [], "allowlists": []}}).encode()
    with HostileServer() as srv:
        srv.route("/v3/decisions/stream", serve(200, body))
        with caplog.at_level(logging.WARNING, logger="cscapi"):
            stream = call(mode, storage, config(srv.url), "get_decisions", MACHINE)
    assert [d.value for d in stream.new] == ["192.0.2.7"] and stream.skipped == BAD  # every bad item counted
    lines = [r.getMessage() for r in caplog.records if "decisions stream item" in r.getMessage()]
    assert len(lines) == _MAX_SKIP_WARNINGS + 1, len(lines)
    assert all(line.startswith("Skipped a decisions stream item: ") for line in lines[:-1])
    assert "not-an-ip-0" in lines[0]  # the first reasons keep their detail
    assert lines[-1] == (
        f"Skipped {BAD - _MAX_SKIP_WARNINGS} more decisions stream items "
        f"(only the first {_MAX_SKIP_WARNINGS} are logged one by one)."
    )
