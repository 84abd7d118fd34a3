"""Stream and list sanity (issue 9, #8 and #11): absurd ranges and durations from a hostile CAPI are skipped, counted.

A real HTTP server on loopback plays CAPI (register, login, the decisions stream, the list links) and the real client,
remediation engine and command line talk to it: ``0.0.0.0/0``, ``::/0``, ``::ffff:0.0.0.0/96`` bans, a ``/0`` allow,
``999999999h`` and 400-nines durations, a line nested thousands deep in an allowlist. Nothing of it is applied, each
item is counted in the refresh report, and ``decisions stats`` never crashes or prints ``Infinity``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cscapi.cli import cli
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.remediation import RemediationEngine
from cscapi.remediation.state import BlocklistState, State
from cscapi.remediation.stores.sqlite import SQLiteStore
from cscapi.sql_storage import SQLStorage

SCENARIOS = ["crowdsecurity/ssh-bf"]
NINES = "9" * 400 + "h"
BLOCKLIST = "203.0.113.5\n0.0.0.0/0\n::/0\n224.0.0.0/3\n::/8\n"  # ::/8 covers ::ffff:0:0/96: all of IPv4
ALLOWLIST = (
    '{"value": "0.0.0.0/0"}\n'
    + "[" * 5000
    + '\n{"value": "203.0.113.9"}\n'
    + '{"value": "::ffff:0.0.0.0/96"}\n'
    + '{"value": "198.51.100.77"}\n'
)


def _stream(root: str) -> dict[str, Any]:
    return {
        "new": [
            {
                "scenario": "crowdsecurity/ssh-bf",
                "scope": "Ip",
                "decisions": [
                    {"value": "192.0.2.1", "duration": "4h"},
                    {"value": "192.0.2.2", "duration": "999999999h"},  # over Go's limit: an OverflowError once
                    {"value": "192.0.2.3", "duration": NINES},  # float('inf') once
                    {"value": "192.0.2.4", "duration": "17520h"},  # two years: over the one-year maximum
                ],
            },
            {
                "scenario": "crowdsecurity/http-scan",
                "scope": "Range",
                "decisions": [
                    {"value": "0.0.0.0/0", "duration": "4h"},
                    {"value": "::/0", "duration": "4h"},
                    {"value": "::ffff:0.0.0.0/96", "duration": "4h"},  # the IPv4 /0, written as IPv6
                    {"value": "198.51.100.0/24", "duration": "4h"},
                ],
            },
        ],
        "deleted": [],
        "links": {
            "blocklists": [
                {"name": "bl", "url": f"{root}lists/bl", "remediation": "ban", "scope": "ip", "duration": "24h"},
                {"name": "forever", "url": f"{root}lists/bl", "remediation": "ban", "scope": "ip", "duration": NINES},
            ],
            "allowlists": [{"id": "a1", "name": "al", "url": f"{root}lists/al", "description": ""}],
        },
    }


class _CAPI(BaseHTTPRequestHandler):
    """Just enough of CAPI for a refresh: every POST succeeds, login hands out a token, GETs serve the fixtures."""

    root = ""

    def log_message(self, format: str, *args: Any) -> None:  # no stderr noise
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/v3/watchers/login"):
            payload = {"code": 200, "token": "loopback.test.token", "expire": "2099-01-01T00:00:00Z"}
            self._send(200, json.dumps(payload).encode())
        else:
            self._send(201, b'{"message": "OK"}')

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/v3/decisions/stream":
            self._send(200, json.dumps(_stream(self.root)).encode())
        elif path == "/lists/bl":
            self._send(200, BLOCKLIST.encode(), "text/plain")
        elif path == "/lists/al":
            self._send(200, ALLOWLIST.encode(), "application/x-ndjson")
        else:
            self._send(404, b'{"message": "not found"}')


@pytest.fixture
def capi_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CAPI)
    root = f"http://127.0.0.1:{server.server_address[1]}/"
    handler = type("Handler", (_CAPI,), {"root": root})
    server.RequestHandlerClass = handler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_absurd_ranges_and_durations_are_skipped_and_counted_not_applied(capi_url: str) -> None:
    storage = SQLStorage("sqlite://")
    client = CAPIClient(storage, CAPIClientConfig(scenarios=SCENARIOS, base_url=capi_url))
    try:
        with RemediationEngine(client, "memory://") as engine:
            report = engine.refresh_decisions(force=True)
            verdict = {ip: engine.get_ip_remediation(ip)["remediation"] for ip in (
                "8.8.8.8", "2001:4860:4860::8888", "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4",
                "198.51.100.7", "198.51.100.77", "203.0.113.5", "203.0.113.9",
            )}  # fmt: skip
    finally:
        client.close()
        storage.close()
    # Nobody is banned by a /0 (IPv4, IPv6 or IPv4-mapped), nor by a duration that overflowed.
    assert verdict["8.8.8.8"] == "bypass" and verdict["2001:4860:4860::8888"] == "bypass"
    assert verdict["192.0.2.2"] == verdict["192.0.2.3"] == verdict["192.0.2.4"] == "bypass"
    # The sane decisions are applied; the allowlist's /0 did not let everybody through.
    assert verdict["192.0.2.1"] == "ban" and verdict["198.51.100.7"] == "ban" and verdict["203.0.113.5"] == "ban"
    assert verdict["198.51.100.77"] == "bypass"  # allowed by the allowlist: its good lines were kept
    assert report.new == 2
    # Stream: 3 durations + 3 ranges + the 'forever' blocklist link; blocklist body: 3 lines; allowlist body: 3 lines.
    assert report.skipped_reasons["unreadable stream item"] == 7
    assert report.lists["lists:bl"].status == "downloaded"
    assert (report.lists["lists:bl"].entries, report.lists["lists:bl"].skipped) == (2, 3)  # 224.0.0.0/3 is kept
    allow = report.lists["allowlist:al"]
    assert allow.status == "downloaded", allow.reason  # one line nested 5000 deep no longer fails the whole list
    assert (allow.entries, allow.skipped) == (2, 3)
    assert "lists:forever" not in report.lists
    assert report.skipped == 7 + 3 + 3


def test_min_prefix_and_max_duration_are_configurable(capi_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cscapi.iputil.MIN_PREFIX_V4", 0)
    monkeypatch.setattr("cscapi.timeutil.MAX_DECISION_DURATION", 3 * 365 * 86400.0)
    storage = SQLStorage("sqlite://")
    client = CAPIClient(storage, CAPIClientConfig(scenarios=SCENARIOS, base_url=capi_url))
    try:
        with RemediationEngine(client, "memory://") as engine:
            report = engine.refresh_decisions(force=True)
            # the IPv4 /0 of the allowlist is accepted now, so it lets everybody through
            assert engine.get_ip_remediation("8.8.8.8") == {"remediation": "bypass", "origin": "allowlist:al"}
    finally:
        client.close()
        storage.close()
    # still refused: 999999999h and 400 nines (over Go's limit), ::/0, the 'forever' link
    assert report.skipped_reasons["unreadable stream item"] == 4
    assert report.new == 5  # 192.0.2.1, 192.0.2.4 (two years fit), 0.0.0.0/0 twice (also as ::ffff:0.0.0.0/96), /24
    assert (report.lists["allowlist:al"].entries, report.lists["allowlist:al"].skipped) == (3, 1)


def _no_infinity(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON output")

    return json.loads(text, parse_constant=refuse)


def test_decisions_refresh_and_stats_never_print_infinity(capi_url: str, tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "CSCAPI_TARGET": capi_url,
        "CSCAPI_SCENARIOS": ",".join(SCENARIOS),
        "CSCAPI_STORAGE": f"sqlite:///{tmp_path / 'cscapi.db'}",
        "CSCAPI_DECISION_STORE": f"sqlite:///{tmp_path / 'decisions.db'}",
    }
    runner = CliRunner()
    registered = runner.invoke(cli, ["machines", "register", "--json"], env=env)
    assert registered.exit_code == 0, registered.output
    refreshed = runner.invoke(cli, ["decisions", "refresh", "--json"], env=env)
    assert refreshed.exit_code == 0, refreshed.output
    report = _no_infinity(refreshed.stdout)
    assert report["skipped"] == 13
    for args in (["decisions", "stats", "--json"], ["decisions", "stats"]):
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 0, (result.output, result.exception)
        assert "Infinity" not in result.output and "inf" not in result.output.lower().split()
    stats = _no_infinity(runner.invoke(cli, ["decisions", "stats", "--json"], env=env).stdout)
    assert {item["origin"] for item in stats["lists"]} == {"lists:bl", "allowlist:al"}
    assert all(0 < item["expires_in_seconds"] <= 86400 for item in stats["lists"] if item["kind"] == "blocklist")


def test_stats_of_a_state_with_an_infinite_expiry_does_not_crash(tmp_path: Path) -> None:
    """A state written before durations were bounded may hold an infinite expiry: stats shows it, never Infinity."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'decisions.db'}")
    forever = BlocklistState(
        "old", "http://l/x", "ban", "ip", float("inf"), ("192.0.2.1",), pulled_at=1.0, expires_at=float("inf")
    )
    try:
        assert store.acquire_lock("t", 60)
        store.commit(State(blocklists={"old": forever}, last_pull=1.0), "v1", "t", True)
    finally:
        store.close()
    env = {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "CSCAPI_DECISION_STORE": f"sqlite:///{tmp_path / 'decisions.db'}",
    }
    runner = CliRunner()
    text = runner.invoke(cli, ["decisions", "stats"], env=env)
    assert text.exit_code == 0, (text.output, text.exception)
    assert "old" in text.output
    result = runner.invoke(cli, ["decisions", "stats", "--json"], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    stats = _no_infinity(result.stdout)
    assert stats["lists"][0]["expires_in_seconds"] is None and stats["by_origin"] == {"lists:old": 1}
