"""LAPI as a decision source, against Debian's real CrowdSec engine (tests/lapi_support.py) and hostile servers.

Decisions are added and deleted with ``cscli``; ``RemediationEngine(LapiClient(...))`` must see them (stream mode),
``LapiClient.get_ip_decisions`` must find them (live mode); bad keys, a LAPI that is down, slow or malformed answers
give typed errors or skipped items, and the decisions already held are kept.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import pytest

from cscapi.errors import (
    AuthenticationError,
    CAPIError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidIPError,
    ServerError,
    TLSVerificationError,
    TransportError,
)
from cscapi.lapi import AsyncLapiClient, LapiClient
from cscapi.remediation import AsyncRemediationEngine, RemediationEngine
from hostile_server import Conn, HostileServer, Received

ORDER = ("ban", "mfa", "captcha", "bypass")  # a custom type (mfa) ranked between ban and captcha


def _engine(client: Any) -> RemediationEngine:
    return RemediationEngine(client, "memory://", ordered_remediations=ORDER)


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there once the socket is closed


def _seed(lapi: Any) -> None:
    lapi.add_decision(ip="192.0.2.10", duration="1h")
    lapi.add_decision(range="198.51.100.0/24", type="captcha", duration="30m")
    lapi.add_decision(ip="2001:db8::7", duration="2h")
    lapi.add_decision(ip="203.0.113.5", type="mfa", duration="45m")


# ---- stream mode ---------------------------------------------------------------------------------------------


def test_stream_mode_sees_cscli_decisions_with_origin_type_and_duration(lapi: Any, lapi_bouncer_key: str) -> None:
    _seed(lapi)
    with LapiClient(lapi.base_url, api_key=lapi_bouncer_key) as client:
        stream = client.get_decisions(startup=True)
        by_value = {d.value: d for d in stream.new}
        assert set(by_value) == {"192.0.2.10", "198.51.100.0/24", "2001:db8::7", "203.0.113.5"}, stream.raw
        assert {d.origin for d in stream.new} == {"cscli"}
        assert by_value["198.51.100.0/24"].scope == "range" and by_value["198.51.100.0/24"].type == "captcha"
        assert 1700 < by_value["198.51.100.0/24"].duration <= 1800
        assert 7100 < by_value["2001:db8::7"].duration <= 7200
        assert stream.skipped == 0

        engine = _engine(client)
        try:
            report = engine.refresh_decisions()
            assert report.startup and report.new == 4 and report.skipped == 0
            ban = engine.get_ip_remediation("192.0.2.10")
            assert (ban.remediation, ban.origin) == ("ban", "cscli")
            assert engine.get_ip_remediation("198.51.100.77").remediation == "captcha"
            assert engine.get_ip_remediation("2001:0db8:0::7").remediation == "ban"
            assert engine.get_ip_remediation("203.0.113.5").remediation == "mfa"
            assert engine.get_ip_remediation("192.0.2.11").remediation == "bypass"
        finally:
            engine.close()


def test_stream_deltas_deletions_and_no_cadence_guard(lapi: Any, lapi_bouncer_key: str) -> None:
    """A refresh right after another is allowed (no CAPI cadence guard); deletions and additions arrive as deltas,
    and deleting one decision on a value leaves the others on it."""
    lapi.add_decision(ip="192.0.2.20", duration="1h")
    lapi.add_decision(range="198.51.100.0/24", type="captcha", duration="1h")
    with LapiClient(lapi.base_url, api_key=lapi_bouncer_key) as client:
        assert client.min_refresh_interval == 0
        engine = _engine(client)
        try:
            engine.refresh_decisions()
            assert engine.get_ip_remediation("192.0.2.20").remediation == "ban"
            lapi.delete_decisions(ip="192.0.2.20")
            lapi.add_decision(ip="192.0.2.21", type="captcha", duration="10m")
            report = engine.refresh_decisions()  # immediately: no RefreshTooSoonError
            assert not report.startup and report.deleted == 1 and report.new == 1, report
            assert engine.get_ip_remediation("192.0.2.20").remediation == "bypass"
            assert engine.get_ip_remediation("192.0.2.21").remediation == "captcha"
            assert engine.get_ip_remediation("198.51.100.9").remediation == "captcha"
            # two decisions on one value: deleting the captcha keeps the ban
            lapi.add_decision(ip="192.0.2.30", type="ban", duration="1h")
            lapi.add_decision(ip="192.0.2.30", type="captcha", duration="1h")
            engine.refresh_decisions()
            lapi.delete_decisions(ip="192.0.2.30", type="captcha")
            engine.refresh_decisions()
            assert engine.get_ip_remediation("192.0.2.30").remediation == "ban"
        finally:
            engine.close()


def test_stream_filters_origins_and_scopes(lapi: Any, lapi_bouncer_key: str) -> None:
    lapi.add_decision(ip="192.0.2.40", duration="1h")
    lapi.add_decision(range="198.51.100.0/24", duration="1h")
    with LapiClient(lapi.base_url, api_key=lapi_bouncer_key, scopes=["ip"]) as client:
        assert [d.value for d in client.get_decisions(startup=True).new] == ["192.0.2.40"]
    key = lapi.add_bouncer()
    with LapiClient(lapi.base_url, api_key=key, origins=["crowdsec"]) as client:
        assert client.get_decisions(startup=True).new == []  # cscli's decisions are not from crowdsec


def test_stream_scenario_and_origin_filters_on_the_real_engine(lapi: Any, lapi_bouncer_key: str) -> None:
    """``scenarios_containing``, ``scenarios_not_containing`` and ``origins=["cscli"]`` each return their subset
    (``cscli decisions add --reason`` is the decision's scenario)."""
    lapi.add_decision(ip="192.0.2.161", duration="1h", reason="l4test/alpha-probe")
    lapi.add_decision(ip="192.0.2.162", duration="1h", reason="l4test/beta-scan")

    def values(**filters: Any) -> list[str]:
        with LapiClient(lapi.base_url, api_key=lapi_bouncer_key, **filters) as client:
            return sorted(d.value for d in client.get_decisions(startup=True).new)

    assert values() == ["192.0.2.161", "192.0.2.162"]
    assert values(scenarios_containing=["alpha"]) == ["192.0.2.161"]
    assert values(scenarios_not_containing=["alpha"]) == ["192.0.2.162"]
    assert values(scenarios_containing=["alpha", "beta"]) == ["192.0.2.161", "192.0.2.162"]
    assert values(origins=["cscli"]) == ["192.0.2.161", "192.0.2.162"]
    assert values(origins=["cscli"], scenarios_not_containing=["beta"]) == ["192.0.2.161"]


# ---- live mode -------------------------------------------------------------------------------------------------


def test_live_lookup_finds_ip_and_containing_range(lapi: Any, lapi_bouncer_key: str) -> None:
    lapi.add_decision(ip="192.0.2.50", type="captcha", duration="20m")
    lapi.add_decision(range="198.51.100.0/24", duration="1h")
    lapi.add_decision(ip="2001:db8::50", duration="1h")
    with LapiClient(lapi.base_url, api_key=lapi_bouncer_key) as client:
        (one,) = client.get_ip_decisions("192.0.2.50")
        assert (one.type, one.origin, one.scope) == ("captcha", "cscli", "ip") and 1100 < one.duration <= 1200
        (rng,) = client.get_ip_decisions("198.51.100.200")
        assert (rng.scope, rng.value) == ("range", "198.51.100.0/24")
        assert [d.value for d in client.get_ip_decisions("2001:0db8::50")] == ["2001:db8::50"]
        assert client.get_ip_decisions("192.0.2.51") == []
        with pytest.raises(InvalidIPError):
            client.get_ip_decisions("192.0.2.300")
        lapi.delete_decisions(ip="192.0.2.50")
        assert client.get_ip_decisions("192.0.2.50") == []


# ---- faults ------------------------------------------------------------------------------------------------------


def test_bad_key_is_a_typed_authentication_error_without_the_key(lapi: Any) -> None:
    secret = "not-a-registered-key-0123456789"
    with LapiClient(lapi.base_url, api_key=secret) as client:
        assert secret not in repr(client)
        with pytest.raises(AuthenticationError) as info:
            client.get_decisions(startup=True)
        assert info.value.status_code == 403 and secret not in str(info.value)
        with pytest.raises(AuthenticationError):
            client.get_ip_decisions("192.0.2.1")


def test_lapi_down_is_a_typed_error_and_old_decisions_are_kept(lapi: Any, lapi_bouncer_key: str) -> None:
    lapi.add_decision(ip="192.0.2.60", duration="1h")
    with LapiClient(lapi.base_url, api_key=lapi_bouncer_key) as client:
        engine = _engine(client)
        try:
            engine.refresh_decisions()
            engine.client = LapiClient(_dead_url(), api_key=lapi_bouncer_key, max_retries=0)
            with pytest.raises(TransportError):
                engine.refresh_decisions()
            assert engine.get_ip_remediation("192.0.2.60").remediation == "ban"
        finally:
            engine.close()


def _stream_route(srv: HostileServer, handler: Any) -> None:
    srv.route("/v1/decisions/stream", handler)


def test_private_lapi_cannot_reach_the_network(crowdsec_lapi: Any) -> None:
    """The test engine's config has no CAPI credentials or console, listens on loopback only, exports no metrics,
    and the engine itself says CAPI is disabled (tests/lapi_support.py)."""
    text = crowdsec_lapi.config.read_text()
    assert "online_client" not in text and "online_api_credentials" not in text
    assert f"listen_uri: 127.0.0.1:{crowdsec_lapi.port}" in text
    assert "prometheus:\n  enabled: false" in text
    assert "/etc/crowdsec" not in text  # nothing of the package's config is used in place
    log = crowdsec_lapi.log_file.read_text()
    assert "Central API disabled" in log or "push and pull to Central API disabled" in log, log[-2000:]
    assert "api.crowdsec.net" not in log


def test_slow_answer_hits_the_deadline() -> None:
    body = json.dumps({"new": [], "deleted": []}).encode()
    with HostileServer() as srv:
        _stream_route(srv, lambda c, r: c.drip(200, body, 0.5))
        client = LapiClient(srv.url, api_key="k", deadline=1.5, timeout=1.0, max_retries=0)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.get_decisions(startup=True)
        assert time.monotonic() - started < 30
        client.close()


GOOD = {"duration": "1h", "origin": "crowdsec", "scenario": "crowdsecurity/ssh-bf", "scope": "Ip", "type": "ban"}


def test_malformed_items_are_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    answer = {
        "new": [
            {**GOOD, "value": "192.0.2.70"},
            {**GOOD, "value": "not-an-ip"},
            {**GOOD, "value": "10.0.0.0/2", "scope": "Range"},  # wider than the IPv4 minimum
            {**GOOD, "value": "192.0.2.71", "duration": "9999999h"},  # longer than the maximum
            {**GOOD, "value": "192.0.2.72", "type": None},
            "a string",
        ],
        "deleted": {"not": "a list"},
    }
    with HostileServer() as srv:
        _stream_route(srv, lambda c, r: c.json(200, answer))
        with LapiClient(srv.url, api_key="k") as client, caplog.at_level(logging.WARNING, logger="cscapi"):
            stream = client.get_decisions(startup=True)
            engine = _engine(client)
            try:
                report = engine.refresh_decisions()
                assert engine.get_ip_remediation("192.0.2.70").remediation == "ban"
                assert engine.get_ip_remediation("192.0.2.70").origin == "crowdsec"
            finally:
                engine.close()
    assert [d.value for d in stream.new] == ["192.0.2.70"] and stream.skipped == 6
    assert report.skipped == 6 and report.new == 1
    assert any("not-an-ip" in r.getMessage() or "new[1]" in r.getMessage() for r in caplog.records)


def test_unreadable_answer_is_typed_and_nothing_is_half_applied(lapi: Any, lapi_bouncer_key: str) -> None:
    """A body that is not JSON (or not an object) raises ServerError and the engine keeps what it had."""
    lapi.add_decision(ip="192.0.2.80", duration="1h")
    bodies = [b"<html>proxy error</html>", b"[1, 2]", b'{"new": [' + b"[" * 100_000]
    with LapiClient(lapi.base_url, api_key=lapi_bouncer_key) as client:
        engine = _engine(client)
        try:
            engine.refresh_decisions()
            version = engine.version
            for body in bodies:
                with HostileServer() as srv:
                    answer = {"Content-Type": "application/json"}
                    _stream_route(srv, lambda c, r, body=body, answer=answer: c.answer(200, body, answer))
                    engine.client = LapiClient(srv.url, api_key="k", max_retries=0)
                    with pytest.raises(ServerError):
                        engine.refresh_decisions()
                assert engine.version == version
                assert engine.get_ip_remediation("192.0.2.80").remediation == "ban"
        finally:
            engine.close()


def test_stream_larger_than_its_cap_is_refused() -> None:
    big = {"new": [{**GOOD, "value": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"} for i in range(20_000)]}
    with HostileServer() as srv:
        _stream_route(srv, lambda c, r: c.json(200, big))
        client = LapiClient(srv.url, api_key="k", max_stream_bytes=64 * 1024)
        with client, pytest.raises(TransportError) as info:
            client.get_decisions(startup=True)
    assert "max_stream_bytes" in str(info.value)


def test_key_is_sent_as_header_with_user_agent_and_filters() -> None:
    seen: list[Received] = []

    def handler(conn: Conn, request: Received) -> None:
        seen.append(request)
        conn.json(200, {"new": None, "deleted": None})

    with HostileServer() as srv:
        _stream_route(srv, handler)
        with LapiClient(
            srv.url,
            api_key="secret-key",
            origins=["crowdsec", "lists:firehol"],
            scenarios_containing=["ssh"],
            scenarios_not_containing=["http"],
            user_agent_prefix="myapp",
        ) as client:
            stream = client.get_decisions(startup=False)
    assert stream.new == [] and stream.deleted == []
    (request,) = seen
    assert request.headers["x-api-key"] == "secret-key"
    assert request.headers["user-agent"].startswith("myapp-cscapi-lapi-bouncer/v")
    assert "startup=false" in request.query and "scopes=ip%2Crange" in request.query
    assert "origins=crowdsec%2Clists%3Afirehol" in request.query
    assert "scenarios_containing=ssh" in request.query and "scenarios_not_containing=http" in request.query


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        LapiClient("http://127.0.0.1:8080/")  # neither key nor certificate
    with pytest.raises(ConfigurationError):
        LapiClient("http://127.0.0.1:8080/", api_key="a\nb")  # header injection
    with pytest.raises(ConfigurationError):
        LapiClient("http://127.0.0.1:8080/", cert="c.pem", key="k.pem")  # TLS auth over plain http
    with pytest.raises(ConfigurationError):
        LapiClient("ftp://127.0.0.1/", api_key="k")
    with pytest.raises(ConfigurationError):
        LapiClient("http://127.0.0.1:8080/", api_key="k", origins=["a,b"])
    assert LapiClient("http://127.0.0.1:8080/v1/", api_key="k").base_url == "http://127.0.0.1:8080/"
    with pytest.raises(CAPIError):
        LapiClient("http://127.0.0.1:8080/", api_key="k").download_link("http://x/")


def test_usage_metrics_on_1_4_6_are_skipped_with_one_info_line(
    lapi: Any, lapi_bouncer_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with LapiClient(lapi.base_url, api_key=lapi_bouncer_key) as client:
        engine = _engine(client)
        try:
            engine.refresh_decisions()
            with caplog.at_level(logging.INFO, logger="cscapi"):
                engine.push_usage_metrics()
                engine.push_usage_metrics()
        finally:
            engine.close()
    lines = [r for r in caplog.records if "usage metrics" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in lines]


def test_usage_metrics_are_posted_with_the_key_and_a_valid_body(lapi_spec: Any, validate_against: Any) -> None:
    """A LAPI that takes usage metrics (1.4.7+) gets ``POST /v1/usage-metrics`` with ``X-Api-Key`` and an
    ``AllMetrics`` body that fits the LAPI's swagger, counting the requests the engine saw."""
    seen: list[Received] = []

    def metrics(conn: Conn, request: Received) -> None:
        seen.append(request)
        conn.json(201, {})

    with HostileServer() as srv:
        _stream_route(srv, lambda c, r: c.json(200, {"new": [{**GOOD, "value": "192.0.2.171"}], "deleted": []}))
        srv.route("/v1/usage-metrics", metrics)
        with LapiClient(srv.url, api_key="metrics-key") as client:
            engine = _engine(client)
            try:
                engine.refresh_decisions()
                found = engine.get_ip_remediation("192.0.2.171")
                engine.update_metrics_origins_count(found.origin, found.remediation)
                engine.push_usage_metrics()
            finally:
                engine.close()
    (request,) = seen
    assert request.method == "POST" and request.headers["x-api-key"] == "metrics-key"
    body = json.loads(request.body)
    validate_against(lapi_spec, "AllMetrics", body)
    (component,) = body["remediation_components"]
    (window,) = component["metrics"]
    dropped = [m for m in window["items"] if m["name"] == "dropped"]
    assert dropped and dropped[0]["value"] == 1 and dropped[0]["labels"]["origin"] == found.origin


def test_usage_metrics_404_stops_later_requests() -> None:
    """A LAPI without the endpoint (404) is asked once: later pushes send nothing."""
    with HostileServer() as srv:
        _stream_route(srv, lambda c, r: c.json(200, {"new": [], "deleted": []}))
        srv.route("/v1/usage-metrics", lambda c, r: c.json(404, {"message": "not found"}))
        with LapiClient(srv.url, api_key="k") as client:
            engine = _engine(client)
            try:
                engine.refresh_decisions()
                for _ in range(3):
                    engine.push_usage_metrics()
            finally:
                engine.close()
        assert srv.count("/v1/usage-metrics") == 1


# ---- async ---------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_stream_and_live_mode(lapi: Any, lapi_bouncer_key: str) -> None:
    _seed(lapi)
    client = AsyncLapiClient(lapi.base_url, api_key=lapi_bouncer_key)
    engine = AsyncRemediationEngine(client, "memory://", ordered_remediations=ORDER)
    try:
        report = await engine.refresh_decisions()
        assert report.new == 4
        assert engine.get_ip_remediation("198.51.100.3").remediation == "captcha"
        assert engine.get_ip_remediation("203.0.113.5").remediation == "mfa"
        lapi.delete_decisions(range="198.51.100.0/24")
        await engine.refresh_decisions()
        assert engine.get_ip_remediation("198.51.100.3").remediation == "bypass"
        (found,) = await client.get_ip_decisions("192.0.2.10")
        assert found.type == "ban"
    finally:
        await engine.aclose()
        await client.aclose()


@pytest.mark.anyio
async def test_async_bad_key_and_down(lapi: Any) -> None:
    async with AsyncLapiClient(lapi.base_url, api_key="bad-key-xyz") as client:
        with pytest.raises(AuthenticationError):
            await client.get_decisions(startup=True)
    async with AsyncLapiClient(_dead_url(), api_key="k", max_retries=0) as down:
        with pytest.raises(TransportError):
            await down.get_ip_decisions("192.0.2.1")


# ---- TLS: CA bundle and client certificate -------------------------------------------------------------------------


def test_tls_client_certificate_and_ca(tmp_path: Any) -> None:
    """``ca=`` verifies LAPI's certificate; ``cert=``/``key=`` present the bouncer's certificate, which a LAPI that
    requires one checks (no certificate: the handshake fails, a typed TransportError)."""
    import ssl

    from hostile_server import self_signed_cert

    server_dir, client_dir, other_dir = (tmp_path / n for n in ("server", "client", "other"))
    for d in (server_dir, client_dir, other_dir):
        d.mkdir()
    server, bouncer, stranger = self_signed_cert(server_dir), self_signed_cert(client_dir), self_signed_cert(other_dir)
    with HostileServer(tls=(server.cert, server.key)) as srv:
        context = srv._context
        assert context is not None
        context.verify_mode = ssl.CERT_REQUIRED  # this LAPI requires a client certificate signed by the bouncer CA
        context.load_verify_locations(str(bouncer.cert))
        _stream_route(srv, lambda c, r: c.json(200, {"new": [{**GOOD, "value": "192.0.2.99"}], "deleted": []}))
        tls = {"ca": str(server.cert), "max_retries": 0}
        with LapiClient(srv.url, cert=str(bouncer.cert), key=str(bouncer.key), **tls) as client:
            assert [d.value for d in client.get_decisions(startup=True).new] == ["192.0.2.99"]
            assert "key" not in repr(client).replace("api_key", "") and client.auth == "tls"
        with LapiClient(srv.url, api_key="k", **tls) as no_cert, pytest.raises(TransportError):
            no_cert.get_decisions(startup=True)
        wrong_cert = LapiClient(srv.url, cert=str(stranger.cert), key=str(stranger.key), **tls)
        with wrong_cert, pytest.raises(TransportError):
            wrong_cert.get_decisions(startup=True)
        wrong_ca = {"ca": str(stranger.cert), "max_retries": 0}
        untrusted = LapiClient(srv.url, cert=str(bouncer.cert), key=str(bouncer.key), **wrong_ca)
        with untrusted, pytest.raises(TLSVerificationError):
            untrusted.get_decisions(startup=True)
    with pytest.raises(ConfigurationError):
        LapiClient("https://127.0.0.1:1/", cert=str(bouncer.cert))  # a certificate without its key
    with pytest.raises(ConfigurationError):
        LapiClient("https://127.0.0.1:1/", cert=str(tmp_path / "missing.pem"), key=str(bouncer.key))


def test_the_key_never_reaches_logs(lapi: Any, lapi_bouncer_key: str, caplog: pytest.LogCaptureFixture) -> None:
    """Every logger at DEBUG (ours, httpx, httpcore) through a good refresh, a refused key and a live lookup."""
    lapi.add_decision(ip="192.0.2.110", duration="1h")
    bad = "bad-key-" + lapi_bouncer_key[::-1]
    with caplog.at_level(logging.DEBUG):
        with LapiClient(lapi.base_url, api_key=lapi_bouncer_key) as client:
            engine = _engine(client)
            try:
                engine.refresh_decisions()
                engine.push_usage_metrics()
            finally:
                engine.close()
            client.get_ip_decisions("192.0.2.110")
        with LapiClient(lapi.base_url, api_key=bad, mode="live") as refused:
            engine = _engine(refused)
            try:
                engine.get_ip_remediation("192.0.2.110")
            finally:
                engine.close()
        with LapiClient(lapi.base_url, api_key=bad) as refused, pytest.raises(AuthenticationError):
            refused.get_decisions(startup=True)
    text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert caplog.records and lapi_bouncer_key not in text and bad not in text


def test_origins_of_a_capi_pulling_lapi_are_kept() -> None:
    """A LAPI that pulls CAPI and lists streams origins CAPI, lists:<name>, console...: the engine answers with them."""
    items = [
        {**GOOD, "value": "192.0.2.120", "origin": "CAPI", "scenario": "crowdsecurity/http-probing"},
        {**GOOD, "value": "192.0.2.121", "origin": "lists:firehol_l1", "scenario": "lists:firehol_l1"},
        {**GOOD, "value": "192.0.2.122", "origin": "console", "scenario": "manual", "type": "captcha"},
    ]
    with HostileServer() as srv:
        _stream_route(srv, lambda c, r: c.json(200, {"new": items, "deleted": None}))
        with LapiClient(srv.url, api_key="k") as client:
            engine = _engine(client)
            try:
                engine.refresh_decisions()
                got = {ip: tuple(engine.get_ip_remediation(ip).values()) for ip in ("192.0.2.120", "192.0.2.121")}
                assert got == {"192.0.2.120": ("ban", "CAPI"), "192.0.2.121": ("ban", "lists:firehol_l1")}
                console = engine.get_ip_remediation("192.0.2.122")
                assert (console.remediation, console.origin) == ("captcha", "console")
            finally:
                engine.close()


def test_transient_failures_are_retried_with_backoff() -> None:
    """503 then 200: one retry (after a Retry-After of 0.2 s), the decisions arrive; 3 failures exhaust 2 retries."""
    answers = [(503, {"message": "busy"}), (200, {"new": [{**GOOD, "value": "192.0.2.130"}], "deleted": []})]

    def handler(conn: Conn, request: Received) -> None:
        status, body = answers.pop(0) if answers else (503, {"message": "still busy"})
        conn.answer(status, json.dumps(body).encode(), {"Content-Type": "application/json", "Retry-After": "0.2"})

    with HostileServer() as srv:
        _stream_route(srv, handler)
        with LapiClient(srv.url, api_key="k", retry_base_delay=0.05) as client:
            assert [d.value for d in client.get_decisions(startup=True).new] == ["192.0.2.130"]
            assert srv.count("/v1/decisions/stream") == 2
            with pytest.raises(ServerError):
                client.get_decisions()
            assert srv.count("/v1/decisions/stream") == 5  # 1 try + max_retries (2)


# ---- the real engine over TLS ----------------------------------------------------------------------------------


def test_real_lapi_over_tls_with_a_client_certificate(crowdsec_lapi_tls: Any) -> None:
    """CrowdSec serving TLS: the bouncer's certificate (OU bouncer-ou) authenticates without a key, the stream sees
    cscli's decisions; a certificate of another OU is refused (typed); an API key over https works with ``ca=``;
    a wrong CA is a TLSVerificationError."""
    lapi, certs = crowdsec_lapi_tls, crowdsec_lapi_tls.certs
    lapi.delete_decisions(everything=True)
    lapi.add_decision(ip="192.0.2.140", type="captcha", duration="1h")
    tls = {"ca": str(certs.ca), "max_retries": 0}
    with LapiClient(lapi.base_url, cert=str(certs.bouncer), key=str(certs.bouncer_key), **tls) as client:
        engine = _engine(client)
        try:
            engine.refresh_decisions()
            assert engine.get_ip_remediation("192.0.2.140").remediation == "captcha"
        finally:
            engine.close()
        assert [d.value for d in client.get_ip_decisions("192.0.2.140")] == ["192.0.2.140"]
    stranger = LapiClient(lapi.base_url, cert=str(certs.stranger), key=str(certs.stranger_key), **tls)
    with stranger, pytest.raises(AuthenticationError):
        stranger.get_decisions(startup=True)
    with LapiClient(lapi.base_url, api_key=lapi.add_bouncer(), **tls) as keyed:
        assert [d.value for d in keyed.get_decisions(startup=True).new] == ["192.0.2.140"]
    untrusted = LapiClient(lapi.base_url, cert=str(certs.bouncer), key=str(certs.bouncer_key), max_retries=0)
    with untrusted, pytest.raises(TLSVerificationError):  # the system CAs do not know the test CA
        untrusted.get_decisions(startup=True)


def test_decisions_stats_counts_lapi_origins() -> None:
    """`cscapi decisions stats` reads the origin from the state group (it said CAPI for every LAPI decision)."""
    import time as _time

    from cscapi.cli.cmd_decisions import decision_stats
    from cscapi.models import DecisionStream, StreamDecision
    from cscapi.remediation.core import apply_stream
    from cscapi.remediation.state import State

    now = _time.time()
    stream = DecisionStream(
        new=[
            StreamDecision("192.0.2.1", "ip", "crowdsecurity/ssh-bf", 3600.0, "ban", "crowdsec"),
            StreamDecision("192.0.2.2", "ip", "manual", 3600.0, "captcha", "cscli"),
            StreamDecision("192.0.2.3", "ip", "crowdsecurity/http-probing", 3600.0, "ban", "CAPI"),
        ]
    )
    state = apply_stream(State(), stream, now, True, logging.getLogger("test")).state
    stats = decision_stats(state, now)
    assert stats["by_origin"] == {"crowdsec": 1, "cscli": 1, "CAPI": 1}, stats
