"""Every request is bounded in time and size, links stay safe, TLS is honest: the real client (sync and async)
against a hostile server on loopback (``hostile_server.py``: raw sockets, optionally TLS with a certificate made here).

Dripping answers hit the total ``deadline`` (retried like a timeout, then ``DeadlineExceededError``); gzip bombs stop
at their decompressed cap with little memory (``ResponseTooLargeError``, not retried, nothing applied); links refuse
plain http from an https CAPI, https→http redirects and long redirect chains, and their number per stream is capped;
a certificate that fails verification is not retried; flows closed mid-way release the login lock and their claims.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi._core import Core, HttpCall, Now, Sleep, StorageCall
from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.errors import (
    ConfigurationError,
    DeadlineExceededError,
    ResponseTooLargeError,
    ServerError,
    TLSVerificationError,
    UnsafeLinkError,
)
from cscapi.protocol import PROD_URL
from cscapi.protocol.http import Response
from cscapi.remediation import RemediationEngine
from cscapi.sql_storage import SQLStorage
from cscapi.timeutil import utcnow
from cscapi.utils import generate_machine_id_from_key
from hostile_server import TOKEN, Conn, HostileServer, Received, gzip_bomb, self_signed_cert
from test_storage_support import make_signals

MACHINE = generate_machine_id_from_key("hostile-transport-test")
SCENARIOS = ["crowdsecurity/ssh-bf"]
MiB = 1024 * 1024
BOMB_SIZE = 256 * MiB  # decompressed; about 250 KB on the wire


def stream_body(links: list[dict[str, Any]] | None = None, ip: str = "192.0.2.7") -> bytes:
    new = [{"scenario": "crowdsecurity/ssh-bf", "scope": "ip", "decisions": [{"value": ip, "duration": "24h"}]}]
    return json.dumps({"new": new, "deleted": [], "links": {"blocklists": links or [], "allowlists": []}}).encode()


def blocklist(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "url": url, "remediation": "ban", "scope": "ip", "duration": "24h"}


def config(url: str, **overrides: Any) -> CAPIClientConfig:
    options: dict[str, Any] = {"retry_delay": 0.01, "max_retries": 1, "send_metrics_after_login": False}
    options.update(overrides)
    return CAPIClientConfig(scenarios=SCENARIOS, base_url=url, **options)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLStorage]:
    store = SQLStorage(f"sqlite:///{tmp_path / 'signals.db'}")
    yield store
    store.close()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(BOMB_SIZE)


def call(mode: str, storage: SQLStorage, cfg: CAPIClientConfig, method: str, *args: Any, **kwargs: Any) -> Any:
    """``client.method(*args, **kwargs)`` on a fresh sync or async client."""
    if mode == "sync":
        with CAPIClient(storage, cfg) as client:
            return getattr(client, method)(*args, **kwargs)

    async def run() -> Any:
        async with AsyncCAPIClient(storage, cfg) as client:
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(run())


def serve(status: int, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return lambda conn, _req: conn.answer(status, body, headers)


# ---- deadlines ---------------------------------------------------------------------------------------------


def test_a_dripping_stream_hits_the_total_deadline_and_is_retried(mode: str, storage: SQLStorage) -> None:
    with HostileServer() as srv:
        srv.route("/v3/decisions/stream", lambda c, r: c.drip(200, stream_body() + b" " * 5000, 0.05))
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="deadline") as caught:
            call(mode, storage, config(srv.url, deadline=1.0, timeout=30), "get_decisions", MACHINE)
        elapsed = time.monotonic() - started
        assert srv.count("/v3/decisions/stream") == 2  # retried once (max_retries=1), like a timeout
    assert elapsed < 60  # two 1 s deadlines plus logins; the old per-read timeout alone never ended (250 s a try)
    assert "deadline" in caught.value.hint


def test_dripping_headers_hit_the_total_deadline(mode: str, storage: SQLStorage) -> None:
    def drip_headers(conn: Conn, _req: Received) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\n")
        for _ in range(2000):  # 100 s of headers, a byte at a time: each read gets one well within `timeout`
            if conn.server.stopping.is_set():
                return
            conn.send(b"X")
            time.sleep(0.05)

    with HostileServer() as srv:
        srv.route("/v3/decisions/stream", drip_headers)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            call(mode, storage, config(srv.url, deadline=1.0, max_retries=0), "get_decisions", MACHINE)
        assert srv.count("/v3/decisions/stream") == 1
    assert time.monotonic() - started < 60


def test_a_dripping_link_hits_the_total_deadline(mode: str, storage: SQLStorage) -> None:
    with HostileServer() as srv:
        srv.route("/list", lambda c, r: c.drip(200, b"192.0.2.1\n" * 1000, 0.05))
        with pytest.raises(DeadlineExceededError):
            call(mode, storage, config(srv.url, deadline=0.5, max_retries=0), "download_link", srv.url + "list")
        assert srv.count("/list") == 1


# ---- sizes -------------------------------------------------------------------------------------------------


def _peak_while(fn: Any) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        fn()
    except Exception as exc:
        error: BaseException | None = exc
    else:
        error = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak


def test_a_gzip_bomb_stream_is_refused_within_its_cap(mode: str, storage: SQLStorage, bomb: bytes) -> None:
    with HostileServer() as srv:
        srv.route("/v3/decisions/stream", serve(200, bomb, {"Content-Encoding": "gzip"}))
        cfg = config(srv.url, max_stream_bytes=8 * MiB)
        error, peak = _peak_while(lambda: call(mode, storage, cfg, "get_decisions", MACHINE))
        assert srv.count("/v3/decisions/stream") == 1  # not retried: the same bomb would come back
    assert isinstance(error, ResponseTooLargeError), error
    assert error.limit == "max_stream_bytes" and error.max_bytes == 8 * MiB
    assert "max_stream_bytes" in str(error) and "raise CAPIClientConfig.max_stream_bytes" in str(error)
    assert peak < 48 * MiB, f"peak {peak / MiB:.1f} MiB for a {BOMB_SIZE // MiB} MiB bomb"


def test_a_gzip_bomb_error_body_is_cut_short_and_the_status_still_counts(
    mode: str, storage: SQLStorage, bomb: bytes
) -> None:
    with HostileServer() as srv:
        srv.route("/v3/decisions/stream", serve(503, bomb, {"Content-Encoding": "gzip"}))
        error, peak = _peak_while(lambda: call(mode, storage, config(srv.url), "get_decisions", MACHINE))
        assert srv.count("/v3/decisions/stream") == 2  # a 503 is retried, whatever its body
    assert isinstance(error, ServerError) and error.status_code == 503, error
    assert peak < 48 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_a_gzip_bomb_link_is_refused(mode: str, storage: SQLStorage, bomb: bytes) -> None:
    with HostileServer() as srv:
        srv.route("/list", serve(200, bomb, {"Content-Encoding": "gzip"}))
        cfg = config(srv.url, max_link_bytes=2 * MiB)
        error, peak = _peak_while(lambda: call(mode, storage, cfg, "download_link", srv.url + "list"))
    assert isinstance(error, ResponseTooLargeError) and error.limit == "max_link_bytes", error
    assert peak < 48 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_a_huge_login_token_is_refused(mode: str, storage: SQLStorage) -> None:
    with HostileServer() as srv:
        huge = {"code": 200, "token": "x" * (2 * MiB), "expire": "2099-01-01T00:00:00Z"}
        srv.route("/v3/watchers/login", lambda c, r: c.json(200, huge))
        with pytest.raises(ResponseTooLargeError) as caught:
            call(mode, storage, config(srv.url), "login", MACHINE)
        assert srv.count("/v3/watchers/login") == 1
    assert caught.value.limit == "max_token_bytes"
    machine = storage.get_machine_by_id(MACHINE)
    assert machine is not None and machine.token is None  # nothing of it stored


def test_a_bomb_never_half_applies_in_the_engine(storage: SQLStorage, bomb: bytes) -> None:
    with HostileServer() as srv:
        srv.route("/v3/decisions/stream", serve(200, stream_body([blocklist("bl", srv.url + "list")])))
        srv.route("/list", serve(200, b"192.0.2.50\n"))
        with CAPIClient(storage, config(srv.url, max_stream_bytes=4 * MiB, max_link_bytes=4 * MiB)) as client:
            engine = RemediationEngine(client, machine_id=MACHINE)
            first = engine.refresh_decisions()
            assert first.new == 1 and first.lists["lists:bl"].ok
            assert engine.get_ip_remediation("192.0.2.50").remediation == "ban"
            # a bombed list: that list fails, its previous content stays
            srv.route("/list", serve(200, bomb, {"Content-Encoding": "gzip"}))
            second = engine.refresh_decisions(force=True)
            outcome = second.lists["lists:bl"]
            assert not outcome.ok and "max_link_bytes" in (outcome.reason or "")
            assert engine.get_ip_remediation("192.0.2.50").remediation == "ban"
            # a bombed stream: the refresh fails, every previous decision stays in force
            srv.route("/v3/decisions/stream", serve(200, bomb, {"Content-Encoding": "gzip"}))
            with pytest.raises(ResponseTooLargeError):
                engine.refresh_decisions(force=True)
            assert engine.get_ip_remediation("192.0.2.7").remediation == "ban"
            assert engine.get_ip_remediation("192.0.2.50").remediation == "ban"


# ---- links ---------------------------------------------------------------------------------------------------


def test_plain_http_links_from_an_https_capi_are_refused_unless_loopback_or_allowed(storage: SQLStorage) -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, text="192.0.2.1\n")

    mock = httpx.MockTransport(handle)
    with CAPIClient(storage, config("https://capi.test/", transport=mock)) as client:
        with pytest.raises(UnsafeLinkError, match="plain http"):
            client.download_link("http://lists.test/list?sig=secret")
        assert seen == []  # refused before any request
        assert client.download_link("https://lists.test/list").status_code == 200
        assert client.download_link("http://127.0.0.1:9/list").status_code == 200  # loopback: a local test server
    with CAPIClient(storage, config("https://capi.test/", transport=mock, allow_http_links=True)) as client:
        assert client.download_link("http://lists.test/list").status_code == 200
    with CAPIClient(storage, config("http://capi.test/", transport=mock)) as client:
        assert client.download_link("http://lists.test/list").status_code == 200  # the API itself is plain http


def test_an_https_to_http_redirect_is_never_followed(mode: str, storage: SQLStorage, tmp_path: Path) -> None:
    cert = self_signed_cert(tmp_path)
    with HostileServer() as plain, HostileServer(tls=(cert.cert, cert.key)) as tls:
        plain.route("/list", serve(200, b"192.0.2.1\n"))
        tls.route("/list", serve(302, b"", {"Location": plain.url + "list"}))
        cfg = config(plain.url, verify=str(cert.cert))
        with pytest.raises(UnsafeLinkError, match="https"):
            call(mode, storage, cfg, "download_link", tls.url + "list")
        assert tls.count("/list") == 1  # not retried
        assert plain.count("/list") == 0  # the downgrade was never requested


def test_redirects_are_few(mode: str, storage: SQLStorage) -> None:
    with HostileServer() as srv:
        for hop in range(1, 5):
            target = f"/r{hop + 1}" if hop < 4 else "/list"
            srv.route(f"/r{hop}", serve(302, b"", {"Location": target}))
        srv.route("/list", serve(200, b"192.0.2.1\n"))
        cfg = config(srv.url)
        got = call(mode, storage, cfg, "download_link", srv.url + "r2")  # 3 redirects: allowed
        assert got.status_code == 200 and got.text == "192.0.2.1\n"
        with pytest.raises(UnsafeLinkError, match="more than 3"):
            call(mode, storage, cfg, "download_link", srv.url + "r1")  # 4 redirects
        assert srv.count("/r1") == 1


def test_the_links_of_one_stream_are_capped_and_counted(storage: SQLStorage) -> None:
    with HostileServer() as srv:
        links = [blocklist(f"bl{i}", f"{srv.url}list{i}") for i in range(2000)]
        srv.route("/v3/decisions/stream", serve(200, stream_body(links)))
        for i in range(2000):
            srv.route(f"/list{i}", serve(200, b"192.0.2.9\n"))
        with CAPIClient(storage, config(srv.url, max_links=5)) as client:
            stream = client.get_decisions(MACHINE)
            assert len(stream.blocklists) == 5 and stream.skipped == 1995
            report = RemediationEngine(client, machine_id=MACHINE).refresh_decisions()
        gets = sum(srv.count(f"/list{i}") for i in range(2000))
    assert gets == 5
    assert len(report.lists) == 5 and report.skipped >= 1995


def test_the_token_is_never_sent_to_a_link_host(storage: SQLStorage) -> None:
    with HostileServer() as srv:
        srv.route("/list", serve(200, b"192.0.2.1\n"))
        with CAPIClient(storage, config(srv.url)) as client:
            client.login(MACHINE)
            client.download_link(srv.url + "list")
        (request,) = [r for r in srv.received if r.path == "/list"]
    assert "authorization" not in request.headers
    assert TOKEN not in json.dumps(request.headers)


# ---- TLS -----------------------------------------------------------------------------------------------------


def test_a_certificate_failure_is_not_retried(mode: str, storage: SQLStorage, tmp_path: Path) -> None:
    cert = self_signed_cert(tmp_path)
    with HostileServer(tls=(cert.cert, cert.key)) as srv:
        with pytest.raises(TLSVerificationError, match="certificate"):
            call(mode, storage, config(srv.url, max_retries=3), "register_machine", MACHINE)
        assert srv.connections == 1  # one handshake, no retry
        machine = call(mode, storage, config(srv.url, verify=str(cert.cert)), "login", MACHINE)
        assert machine.token == TOKEN  # the same server, verified with its certificate


def test_insecure_settings_are_logged_once(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import cscapi._config

    monkeypatch.setattr(cscapi._config, "_WARNED", set())  # "once per process": forget what earlier tests logged
    caplog.set_level(logging.WARNING, logger="cscapi")
    url = "https://127.0.0.1:8443/"
    for _ in range(3):
        CAPIClientConfig(scenarios=SCENARIOS, base_url=url, verify=False)
    assert sum("TLS verification is OFF" in r.getMessage() for r in caplog.records) == 1
    CAPIClientConfig(scenarios=SCENARIOS, base_url="http://capi.hostile.example/")
    assert any("plain http to a non-loopback host" in r.getMessage() for r in caplog.records)
    caplog.clear()
    CAPIClientConfig(scenarios=SCENARIOS, base_url="http://127.0.0.1:8081/")  # the emulator: no warning
    assert not caplog.records
    monkeypatch.setenv("CSCAPI_BASE_URL", "http://127.0.0.1:9999/")
    assert CAPIClientConfig(scenarios=SCENARIOS, prod=True).api_root == PROD_URL
    assert any("CSCAPI_BASE_URL environment variable is ignored" in r.getMessage() for r in caplog.records)


def test_the_cli_refuses_verify_tls_off_with_a_ca_bundle(tmp_path: Path) -> None:
    from cscapi.cli._runtime import client_config
    from cscapi.settings import load_settings

    cert = self_signed_cert(tmp_path)
    env = {"HOME": str(tmp_path), "CSCAPI_VERIFY_TLS": "false", "CSCAPI_CA_BUNDLE": str(cert.cert)}
    settings = load_settings(env=env)
    with pytest.raises(ConfigurationError, match="ca_bundle"):
        client_config(settings)
    settings = load_settings(env={"HOME": str(tmp_path), "CSCAPI_CA_BUNDLE": str(cert.cert)})
    assert client_config(settings).verify == str(cert.cert)


# ---- flows closed mid-way ----------------------------------------------------------------------------------


def _drive_until(flow: Any, operation: str, answers: dict[str, Response]) -> HttpCall:
    """Run a flow's effects for real (storage, clock) until it sends ``operation``; other requests get ``answers``."""
    value: Any = None
    while True:
        effect = flow.send(value)
        value = None
        if isinstance(effect, HttpCall):
            if effect.request.operation == operation:
                return effect
            value = answers[effect.request.operation]
        elif isinstance(effect, StorageCall):
            value = effect.fn(*effect.args, **effect.kwargs)
        elif isinstance(effect, Now):
            value = utcnow()
        elif not isinstance(effect, Sleep):
            value = effect.fn(*effect.args, **effect.kwargs)


REGISTERED = Response(201, content=b'{"message":"OK"}')
LOGGED_IN = Response(200, content=json.dumps({"code": 200, "token": TOKEN, "expire": "2099-01-01T00:00:00Z"}).encode())


def test_a_login_closed_mid_request_releases_the_login_lock(storage: SQLStorage) -> None:
    core = Core(storage, config("http://127.0.0.1:9/"))
    flow = core.login(MACHINE)
    _drive_until(flow, "login", {"register": REGISTERED})
    assert not storage.acquire_login_lock(MACHINE, "someone-else", 60)  # held by the flow
    flow.close()  # GeneratorExit, as for a discarded task or a SIGTERM: no "generator ignored GeneratorExit"
    assert storage.acquire_login_lock(MACHINE, "someone-else", 60)


def test_a_send_closed_mid_post_gives_its_claims_back(storage: SQLStorage) -> None:
    core = Core(storage, config("http://127.0.0.1:9/"))
    signals = make_signals(3, MACHINE)
    storage.add_signals(signals)
    flow = core.send_signals()
    _drive_until(flow, "signals", {"register": REGISTERED, "login": LOGGED_IN})
    assert storage.count_signals(MACHINE).queued == 0  # claimed
    flow.close()
    assert storage.count_signals(MACHINE).queued == 3


def test_an_async_login_cancelled_mid_request_releases_the_login_lock(storage: SQLStorage) -> None:
    with HostileServer() as srv:
        srv.route("/v3/watchers/login", lambda c, r: c.drip(200, b"x" * 200, 0.5))  # never done in time

        async def run() -> None:
            async with AsyncCAPIClient(storage, config(srv.url)) as client:
                task = asyncio.create_task(client.login(MACHINE))
                limit = time.monotonic() + 60
                while srv.count("/v3/watchers/login") == 0 and time.monotonic() < limit:
                    await asyncio.sleep(0.01)
                assert not storage.acquire_login_lock(MACHINE, "someone-else", 60)  # the login holds it
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(run())
    assert storage.acquire_login_lock(MACHINE, "someone-else", 60)
