"""Every request body the protocol layer builds validates against the official swagger; URLs, headers, gzip, UA."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from typing import Any

import pytest

from cscapi import __version__
from cscapi.errors import ConfigurationError
from cscapi.models import Context, Signal, SignalDecision, Source
from cscapi.protocol import (
    Endpoints,
    Request,
    encode_json_body,
    metrics_payload,
    normalise_base_url,
    signal_to_wire,
    signals_to_wire,
    usage_metrics_payload,
    user_agent,
)
from cscapi.signals import validate_signal
from cscapi.utils import create_signal, generate_machine_id, generate_password

MID = generate_machine_id("test")
EP = Endpoints("http://127.0.0.1:8081/")


def body(request: Request) -> Any:
    assert request.content is not None
    raw = request.content
    if request.headers.get("Content-Encoding") == "gzip":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def sample_signals() -> list[Signal]:
    return [
        create_signal("192.0.2.1", "crowdsecurity/ssh-bf", "2023-11-17 10:20:46 +0000", MID),
        create_signal(
            "2001:DB8::0001",
            "crowdsecurity/http-probing",
            datetime(2024, 1, 2, 3, 4, 5, 678901),
            MID,
            decision_type="ban",
            duration="4h",
            as_number=64500,
            as_name="EXAMPLE-AS",
            cn="FR",
            latitude=48.85,
            longitude=2.35,
            context={"target_uri": "/wp-login.php", "method": "POST"},
            scenario_version="0.3",
            scenario_hash="abc123",
            kind="waf",
        ),
        create_signal("198.51.100.0/24", "acme/http-bf", None, MID, scenario_trust="custom"),
        create_signal(
            "203.0.113.9",
            "acme/http-bf",
            machine_id=MID,
            decisions=[{"type": "captcha", "duration": "1h30m", "origin": "cscli"}],
            context=[Context(key="k", value="v")],
        ),
    ]


def test_register_and_login_bodies_fit_the_swagger(capi_spec: dict[str, Any], validate_against: Any) -> None:
    password = generate_password()
    register = EP.register(MID, password)
    assert register.method == "POST" and register.url == "http://127.0.0.1:8081/v3/watchers"
    assert not register.authenticated
    validate_against(capi_spec, "RegisterRequest", body(register))
    login = EP.login(MID, password, ["crowdsecurity/ssh-bf", "acme/http-bf"])
    assert login.url.endswith("/v3/watchers/login")
    validate_against(capi_spec, "LoginRequest", body(login))
    assert body(login) == {
        "machine_id": MID,
        "password": password,
        "scenarios": ["crowdsecurity/ssh-bf", "acme/http-bf"],
    }
    reset = EP.reset_password(MID, password)
    assert reset.url.endswith("/v3/watchers/reset") and not reset.authenticated
    validate_against(capi_spec, "ResetPasswordRequest", body(reset))
    # the password never shows in a repr
    assert password not in repr(login) and password not in repr(register)


def test_enroll_body_fits_the_swagger_and_omits_defaults(capi_spec: dict[str, Any], validate_against: Any) -> None:
    minimal = EP.enroll("abcDEF123", None, [], False)
    assert body(minimal) == {"attachment_key": "abcDEF123"}
    full = EP.enroll("abcDEF123", "mymachine", ["ssh-honeypot"], True)
    assert body(full) == {
        "attachment_key": "abcDEF123",
        "name": "mymachine",
        "tags": ["ssh-honeypot"],
        "overwrite": True,
    }
    for req in (minimal, full):
        assert req.authenticated
        validate_against(capi_spec, "EnrollRequest", body(req))


def test_signal_bodies_fit_the_swagger(capi_spec: dict[str, Any], validate_against: Any) -> None:
    items = signals_to_wire(sample_signals())
    request = EP.signals(items)
    validate_against(capi_spec, "AddSignalsRequest", body(request))
    for item in items:
        assert "sent" not in item and "alert_id" not in item
        assert all(v is not None for v in item.values())
        assert all(v is not None for v in item["source"].values())
        assert item["start_at"].endswith("Z") and len(item["start_at"]) == len("2023-11-17T10:20:46.000000Z")


def test_signal_wire_shape_details() -> None:
    whisper, decision, ranged, custom = signals_to_wire(sample_signals())
    assert "decisions" not in whisper and "context" not in whisper
    assert whisper["created_at"] == "2023-11-17T10:20:46.000000Z"
    assert whisper["source"] == {"scope": "ip", "value": "192.0.2.1", "ip": "192.0.2.1"}
    assert decision["source"]["value"] == "2001:db8::1"
    assert decision["source"]["as_number"] == "64500"
    assert decision["start_at"] == "2024-01-02T03:04:05.678901Z"  # naive datetime read as UTC
    assert decision["context"] == [{"key": "target_uri", "value": "/wp-login.php"}, {"key": "method", "value": "POST"}]
    (d,) = decision["decisions"]
    assert d["type"] == "ban" and d["duration"] == "4h" and d["origin"] == "crowdsec" and d["id"] == 0
    assert d["scope"] == "ip" and d["value"] == "2001:db8::1" and d["until"] == "2024-01-02T07:04:05.678901Z"
    assert ranged["source"] == {"scope": "range", "value": "198.51.100.0/24", "range": "198.51.100.0/24"}
    assert ranged["scenario_trust"] == "custom"
    assert custom["decisions"][0]["type"] == "captcha" and custom["decisions"][0]["origin"] == "cscli"


def test_local_fields_never_go_on_the_wire() -> None:
    signal = validate_signal(
        Signal(
            scenario="crowdsecurity/ssh-bf",
            source=Source(value="192.0.2.1"),
            machine_id=MID,
            alert_id=42,
            sent=True,
            decisions=[SignalDecision(duration="1h", type="ban", id=7)],
        )
    )
    item = signal_to_wire(signal)
    assert "alert_id" not in item and "sent" not in item
    assert item["decisions"][0]["id"] == 7


def test_large_bodies_are_gzipped_small_ones_are_not(capi_spec: dict[str, Any], validate_against: Any) -> None:
    small = EP.signals(signals_to_wire(sample_signals()[:1]))
    assert "Content-Encoding" not in small.headers
    many = [create_signal(f"192.0.2.{i % 250}", "crowdsecurity/ssh-bf", machine_id=MID) for i in range(250)]
    big = EP.signals(signals_to_wire(many))
    assert big.headers["Content-Encoding"] == "gzip"
    assert big.headers["Content-Type"] == "application/json"
    decoded = body(big)
    assert len(decoded) == 250
    validate_against(capi_spec, "AddSignalsRequest", decoded)
    raw, headers = encode_json_body({"x": "y" * 6000}, gzip_threshold=5120)
    assert headers.get("Content-Encoding") == "gzip" and len(raw) < 6000
    raw, headers = encode_json_body({"x": "y" * 6000}, gzip_threshold=10_000)
    assert "Content-Encoding" not in headers


def test_metrics_and_delete_bodies_fit_the_swagger(capi_spec: dict[str, Any], validate_against: Any) -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    payload = metrics_payload("capi-py-sdk", __version__, now, now)
    req = EP.metrics(payload)
    assert req.url.endswith("/v3/metrics") and req.authenticated
    validate_against(capi_spec, "MetricsRequest", body(req))
    validate_against(capi_spec, "MetricsRequest", metrics_payload("x", "1", None, now))
    delete = EP.decisions_delete(["6f1f6a8e-5b1a-4b3e-9d43-0c5d1f7b1a11", "b"])
    assert delete.url.endswith("/v3/decisions/delete")
    validate_against(capi_spec, "DecisionsDeleteRequest", body(delete))


def test_usage_metrics_body_fits_the_lapi_swagger(lapi_spec: dict[str, Any], validate_against: Any) -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    payload = usage_metrics_payload(
        name="myapp",
        component_type="capi-py-sdk",
        startup=now,
        now=now,
        window_seconds=1800,
        items=[("dropped", 12, "request", {"origin": "CAPI", "remediation": "ban"})],
        last_pull=now,
    )
    validate_against(lapi_spec, "AllMetrics", payload)
    req = EP.usage_metrics(payload)
    assert req.url.endswith("/v3/usage-metrics") and req.authenticated
    assert body(req) == payload


def test_stream_query_only_carries_what_differs_from_defaults() -> None:
    assert EP.decisions_stream().params == {}
    assert EP.decisions_stream(startup=True).params == {"startup": "true"}
    params = EP.decisions_stream(community_pull=False, additional_pull=False).params
    assert params == {"community_pull": "false", "additional_pull": "false"}
    assert EP.decisions_stream().url == "http://127.0.0.1:8081/v3/decisions/stream"


def test_link_request_is_unauthenticated_and_conditional() -> None:
    req = Endpoints.link("http://127.0.0.1:9/blocklist.txt", datetime(2026, 11, 21, 22, 28, 2, tzinfo=timezone.utc))
    assert not req.authenticated
    assert "Authorization" not in req.headers
    assert req.headers["If-Modified-Since"] == "Sat, 21 Nov 2026 22:28:02 GMT"
    assert Endpoints.link("http://h/x", "Sat, 21 Nov 2026 22:28:02 GMT").headers["If-Modified-Since"].startswith("Sat")
    with pytest.raises(ConfigurationError):
        Endpoints.link("file:///etc/passwd")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081/"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081/"),
        ("http://127.0.0.1:8081/v3", "http://127.0.0.1:8081/"),
        ("http://127.0.0.1:8081/v3/", "http://127.0.0.1:8081/"),
        ("https://proxy.example/capi/v3/", "https://proxy.example/capi/"),
    ],
)
def test_base_url_normalisation(given: str, expected: str) -> None:
    assert normalise_base_url(given) == expected
    assert Endpoints(given).url("signals") == expected + "v3/signals"


@pytest.mark.parametrize("bad", ["", "127.0.0.1:8081", "ftp://x/", "http://h/?a=1"])
def test_bad_base_urls_are_configuration_errors(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        normalise_base_url(bad)


def test_user_agent() -> None:
    assert user_agent() == f"capi-py-sdk/{__version__}"
    assert user_agent("mycompany") == f"mycompany-capi-py-sdk/{__version__}"
