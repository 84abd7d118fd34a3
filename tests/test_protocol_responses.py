"""Reading CAPI's answers: status -> error mapping, login, enroll, decisions stream, retries, JWT claims."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cscapi.errors import (
    AuthenticationError,
    CAPIError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
)
from cscapi.models import EnrollStatus
from cscapi.protocol import (
    NetworkFailure,
    Response,
    RetryPolicy,
    error_for,
    failure_error,
    is_credentials_refusal,
    is_retryable,
    parse_enroll,
    parse_login,
    parse_retry_after,
    parse_stream,
    read_claims,
    server_reason,
    token_expiry,
)
from cscapi.timeutil import format_http_date


def resp(status: int, data: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None) -> Response:
    content = raw if raw is not None else (json.dumps(data).encode() if data is not None else b"")
    return Response(status_code=status, headers={k.lower(): v for k, v in (headers or {}).items()}, content=content)


def make_jwt(claims: dict[str, Any]) -> str:
    def seg(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg(claims)}.c2lnbmF0dXJl"


# ---- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, RequestRejectedError),
        (422, RequestRejectedError),
        (413, RequestRejectedError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (429, RateLimitedError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (418, CAPIError),
    ],
)
def test_status_maps_to_error(status: int, kind: type[CAPIError]) -> None:
    error = error_for(resp(status, {"message": "nope", "errors": "field x"}), "signals")
    assert type(error) is kind
    assert error.status_code == status
    assert "signals" in error.message and str(status) in error.message and "nope" in error.message
    assert error.hint  # says what to do


def test_rejected_error_carries_the_server_fields() -> None:
    error = error_for(resp(400, {"message": "invalid signal", "errors": "source.value: required"}), "signals")
    assert isinstance(error, RequestRejectedError)
    assert error.server_message == "invalid signal"
    assert error.server_errors == "source.value: required"


def test_error_on_non_json_body_uses_the_clipped_text() -> None:
    error = error_for(resp(502, raw=b"<html>" + b"x" * 5000 + b"</html>"), "login")
    assert isinstance(error, ServerError)
    assert len(error.message) < 500


def test_rate_limited_error_reads_retry_after() -> None:
    error = error_for(resp(429, {"message": "slow down"}, {"Retry-After": "7"}), "signals")
    assert isinstance(error, RateLimitedError) and error.retry_after == 7.0


def test_failure_error_names_the_operation_and_tries() -> None:
    error = failure_error(NetworkFailure("timeout", "ReadTimeout", "http://127.0.0.1:1/v3/signals"), "signals", 4)
    assert "signals" in error.message and "4 tries" in error.message and "timeout" in error.message


# ---- login / enroll ---------------------------------------------------------------------------------------


def test_parse_login() -> None:
    token, expire = parse_login(resp(200, {"code": 200, "expire": "2026-01-01T00:00:00Z", "token": "abc"}))
    assert (token, expire) == ("abc", "2026-01-01T00:00:00Z")
    with pytest.raises(ServerError):
        parse_login(resp(200, {"code": 200}))
    with pytest.raises(ServerError, match="not JSON"):
        parse_login(resp(200, raw=b"<html>hello</html>"))


def test_parse_enroll_statuses() -> None:
    assert parse_enroll(resp(200, {"message": "ok"}), overwrite=False)[0] == EnrollStatus.ALREADY_ENROLLED
    assert parse_enroll(resp(200, {"message": "ok"}), overwrite=True)[0] == EnrollStatus.ENROLLED
    assert parse_enroll(resp(202, raw=b""), overwrite=False)[0] == EnrollStatus.ENROLLED
    status, url, expire_at = parse_enroll(resp(201, {"url": "http://c/e", "expire_at": 1_700_000_000_000}), False)
    assert status == EnrollStatus.ENROLLED and url == "http://c/e"
    assert expire_at == datetime.fromtimestamp(1_700_000_000, timezone.utc)


# ---- JWT -----------------------------------------------------------------------------------------------


def test_jwt_claims_and_expiry() -> None:
    token = make_jwt({"exp": 1_900_000_000, "organization_id": "org1"})
    assert read_claims(token)["organization_id"] == "org1"
    assert token_expiry(token) == datetime.fromtimestamp(1_900_000_000, timezone.utc)
    # no exp: fall back on the login answer's expire
    assert token_expiry("opaque-token", "2030-01-01T00:00:00Z") == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert token_expiry(make_jwt({"sub": "x"}), "2030-01-01T00:00:00Z") == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert token_expiry("opaque") is None
    assert read_claims("a.!!!.c") == {}
    assert read_claims("a." + base64.urlsafe_b64encode(b"[1,2]").decode() + ".c") == {}


# ---- retry policy ----------------------------------------------------------------------------------------


def test_retryable_results() -> None:
    for status in (429, 500, 502, 503, 504):
        assert is_retryable(resp(status))
    for status in (200, 400, 401, 403, 404, 422, 501):
        assert not is_retryable(resp(status))
    assert is_retryable(NetworkFailure("connect", "reset"))


def test_backoff_is_capped_exponential_full_jitter() -> None:
    top = RetryPolicy(max_retries=10, base_delay=2, max_delay=10, rand=lambda: 1.0)
    assert [top.delay(n) for n in range(5)] == [2, 4, 8, 10, 10]
    bottom = RetryPolicy(base_delay=2, rand=lambda: 0.0)
    assert bottom.delay(3) == 0.0
    policy = RetryPolicy(max_retries=2)
    assert policy.should_retry(resp(503), 0) and policy.should_retry(resp(503), 1)
    assert not policy.should_retry(resp(503), 2)
    assert not policy.should_retry(resp(400), 0)


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(base_delay=1, max_retry_after=30, rand=lambda: 0.0)
    assert policy.delay(0, resp(429, headers={"Retry-After": "12"})) == 12
    assert policy.delay(0, resp(429, headers={"Retry-After": "3600"})) == 30
    later = datetime.now(timezone.utc) + timedelta(seconds=20)
    waited = policy.delay(0, resp(503, headers={"Retry-After": format_http_date(later)}))
    assert 15 <= waited <= 20.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(format_http_date(datetime(2000, 1, 1, tzinfo=timezone.utc))) == 0.0


# ---- decisions stream -------------------------------------------------------------------------------------

STREAM = {
    "new": [
        {
            "scenario": "crowdsecurity/ssh-bf",
            "scope": "Ip",
            "decisions": [
                {"value": "192.0.2.1", "duration": "3h59m55.756182786s"},
                {"value": "2001:DB8::1", "duration": "24h"},
                {"value": "not-an-ip", "duration": "1h"},
                {"value": "192.0.2.2", "duration": "forever"},
                {"duration": "1h"},
            ],
        },
        {
            "scenario": "crowdsecurity/http-scan",
            "scope": "range",
            "decisions": [{"value": "198.51.100.7/24", "duration": "1h"}],
        },
        {"scope": "ip", "decisions": []},
        "junk",
    ],
    "deleted": [
        {"scope": "ip", "decisions": ["192.0.2.9", "bad ip"]},
        {"scope": "Range", "decisions": ["203.0.113.0/24"]},
        {"decisions": ["1.2.3.4"]},
    ],
    "links": {
        "blocklists": [
            {"name": "tor", "url": "http://127.0.0.1:1/b", "remediation": "ban", "scope": "Ip", "duration": "24h"},
            {"name": "broken", "url": "http://127.0.0.1:1/c"},
        ],
        "allowlists": [
            {
                "id": "a1",
                "name": "partners",
                "description": "ok",
                "url": "http://127.0.0.1:1/a",
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-02T00:00:00Z",
            },
            {"name": "no-id"},
        ],
    },
}


def test_stream_is_flattened_and_malformed_items_are_skipped(capi_spec: dict[str, Any], validate_against: Any) -> None:
    reasons: list[str] = []
    stream = parse_stream(resp(200, STREAM), startup=True, on_skip=reasons.append)
    assert [(d.value, d.scope, d.scenario) for d in stream.new] == [
        ("192.0.2.1", "ip", "crowdsecurity/ssh-bf"),
        ("2001:db8::1", "ip", "crowdsecurity/ssh-bf"),
        ("198.51.100.0/24", "range", "crowdsecurity/http-scan"),
    ]
    assert stream.new[0].duration == pytest.approx(4 * 3600 - 4.243817214)
    assert stream.new[1].duration == 86400
    assert all(d.type == "ban" and d.origin == "CAPI" for d in stream.new)
    assert [(d.value, d.scope) for d in stream.deleted] == [("192.0.2.9", "ip"), ("203.0.113.0/24", "range")]
    assert [(b.name, b.scope, b.duration) for b in stream.blocklists] == [("tor", "ip", 86400)]
    assert [(a.id, a.name, a.description) for a in stream.allowlists] == [("a1", "partners", "ok")]
    # 3 bad decisions + 1 group without scenario + 1 non-object group + 1 bad deleted + 1 deleted without scope
    # + 1 broken blocklist + 1 broken allowlist
    assert stream.skipped == 9 == len(reasons)
    assert stream.startup is True
    assert stream["new"] is STREAM["new"] or stream["new"] == STREAM["new"]  # legacy raw-dict access
    assert all(isinstance(r, str) and r for r in reasons)


def test_stream_tolerates_empty_and_null_parts() -> None:
    assert parse_stream(resp(200, raw=b"")).new == []
    stream = parse_stream(resp(200, {"new": None, "deleted": None, "links": None}))
    assert (stream.new, stream.deleted, stream.blocklists, stream.skipped) == ([], [], [], 0)


def test_stream_non_json_is_a_clear_error() -> None:
    with pytest.raises(ServerError, match="not JSON"):
        parse_stream(resp(200, raw=b"<html>maintenance</html>"))
    with pytest.raises(ServerError, match="not an object"):
        parse_stream(resp(200, [1, 2]))


# ---- hostile JSON ---------------------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"new": ' + DEEP + b"}"


def test_deeply_nested_json_is_an_unreadable_body_not_a_recursion_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        resp(200, raw=DEEP).json()
    with pytest.raises(ServerError, match="not JSON"):
        parse_login(resp(200, raw=DEEP))
    with pytest.raises(ServerError, match="not JSON"):
        parse_stream(resp(200, raw=DEEP_OBJECT))
    message, errors = server_reason(resp(403, raw=DEEP))
    assert message.startswith("[[[") and errors is None  # the clipped raw text, no crash
    assert isinstance(error_for(resp(500, raw=DEEP), "signals"), ServerError)
    status, url, _ = parse_enroll(resp(202, raw=DEEP), overwrite=False)
    assert status == EnrollStatus.ENROLLED and url is None


def test_deeply_nested_jwt_claims_read_as_no_claims() -> None:
    segment = base64.urlsafe_b64encode(DEEP).rstrip(b"=").decode()
    token = f"{make_jwt({})[:36]}.{segment}.sig"
    assert read_claims(token) == {}
    assert token_expiry(token, "2030-01-01T00:00:00Z") == datetime(2030, 1, 1, tzinfo=timezone.utc)


def test_a_body_that_cannot_be_encoded_is_a_validation_error() -> None:
    from cscapi.errors import ValidationError
    from cscapi.protocol import encode_json_body

    deep: list[Any] = []
    cursor = deep
    for _ in range(100_000):
        cursor.append([])
        cursor = cursor[0]
    circular: dict[str, Any] = {}
    circular["self"] = circular
    for payload in (deep, circular, {"when": object()}):
        with pytest.raises(ValidationError) as info:
            encode_json_body(payload)
        assert info.value.field == "payload"


# ---- login 403: a ban or a refusal of the credentials ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "credentials"),
    [
        ({"message": "invalid machine_id or password"}, {}, True),  # the emulator, and CAPI's wording
        ({"message": "Invalid Machine"}, {}, True),
        ({"message": "machine not found"}, {}, True),
        ({"errors": "Unknown machine"}, {}, True),
        ({"message": "forbidden", "errors": "machine is not registered"}, {}, True),
        ({"message": "bad credentials"}, {}, True),
        ({"message": "generate a new password"}, {}, True),  # "generate" is not "rate"
        ({"message": "invalid machine_id or password"}, {"Retry-After": "3600"}, False),
        ({"message": "invalid machine_id or password"}, {"retry-after": ""}, False),
        ({"message": "too many logins: banned until 2026-11-22T00:00:00Z"}, {}, False),
        ({"message": "invalid credentials", "errors": "login rate limit"}, {}, False),
        ({"message": "password attempts over the limit"}, {}, False),
        ({"message": "machine_id banned"}, {}, False),
        ({"message": "Forbidden"}, {}, False),
        ({"message": ""}, {}, False),
        ({}, {}, False),
        (None, {}, False),
        (["invalid password"], {}, False),
    ],
)
def test_login_403_is_a_credentials_refusal_only_when_it_says_so(
    body: Any, headers: dict[str, str], credentials: bool
) -> None:
    assert is_credentials_refusal(resp(403, body, headers)) is credentials


def test_only_a_403_can_be_a_credentials_refusal() -> None:
    assert not is_credentials_refusal(resp(401, {"message": "invalid machine_id or password"}))
    assert not is_credentials_refusal(resp(403, raw=b"invalid machine_id or password"))  # not the JSON fields
    assert not is_credentials_refusal(resp(403, raw=b"[" * 100_000))


def test_stream_values_are_canonicalised_by_the_shared_iputil() -> None:
    from cscapi.iputil import canonical_address

    values = [
        " 192.0.2.1 ",  # surrounding spaces are stripped
        "::FFFF:192.0.2.3",  # IPv4-mapped becomes IPv4
        "2001:DB8:0:0::0001",
        "01.2.3.4",  # leading zeros: refused (ambiguous octal)
        "fe80::1%eth0",  # zone ids: refused
        "1.2.3.4/32",  # a range under scope ip: refused
        "",
        7,
        None,
        "1.2.3.4\x00",
    ]
    data = {
        "new": [
            {"scenario": "a/b", "scope": "ip", "decisions": [{"value": v, "duration": "1h"} for v in values]},
            {
                "scenario": "a/b",
                "scope": "range",
                "decisions": [
                    {"value": "::ffff:192.0.2.0/120", "duration": "1h"},
                    {"value": "2001:DB8::1/32", "duration": "1h"},
                    {"value": "192.0.2.0/33", "duration": "1h"},
                    {"value": "192.0.2.1", "duration": "1h"},
                ],
            },
        ],
        "deleted": [{"scope": "ip", "decisions": ["::ffff:192.0.2.3", 5, "x"]}],
    }
    reasons: list[str] = []
    stream = parse_stream(resp(200, data), on_skip=reasons.append)
    assert [d.value for d in stream.new] == [
        "192.0.2.1",
        "192.0.2.3",
        "2001:db8::1",
        "192.0.2.0/24",
        "2001:db8::/32",
    ]
    assert [d.value for d in stream.deleted] == ["192.0.2.3"]
    assert stream.skipped == len(reasons) == 7 + 2 + 2
    assert all(canonical_address(d.value) == d.value for d in stream.new if d.scope == "ip")


# ---- stream sanity: absurd ranges and durations are skipped and counted (issue 9, #8 and #11) ----------------


def _one_group(scope: str, *items: tuple[str, str]) -> dict[str, Any]:
    return {"new": [{"scenario": "a/b", "scope": scope, "decisions": [{"value": v, "duration": d} for v, d in items]}]}


@pytest.mark.parametrize("value", ["0.0.0.0/0", "::/0", "::ffff:0.0.0.0/96", "128.0.0.0/1", "2000::/3"])
def test_stream_refuses_a_range_too_wide(value: str) -> None:
    reasons: list[str] = []
    stream = parse_stream(
        resp(200, _one_group("range", (value, "4h"), ("198.51.100.0/24", "4h"))), on_skip=reasons.append
    )
    assert [d.value for d in stream.new] == ["198.51.100.0/24"]
    assert stream.skipped == 1 and "MIN_PREFIX_V" in reasons[0]


@pytest.mark.parametrize("duration", ["999999999h", "9" * 400 + "h", "17520h"])
def test_stream_refuses_a_duration_over_the_maximum(duration: str) -> None:
    reasons: list[str] = []
    stream = parse_stream(
        resp(200, _one_group("ip", ("192.0.2.1", duration), ("192.0.2.2", "8760h"))), on_skip=reasons.append
    )
    assert [(d.value, d.duration) for d in stream.new] == [("192.0.2.2", 8760 * 3600.0)]
    assert stream.skipped == 1 and len(reasons) == 1


def test_the_maximum_duration_is_read_at_each_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cscapi.timeutil.MAX_DECISION_DURATION", 3600.0)
    stream = parse_stream(resp(200, _one_group("ip", ("192.0.2.1", "2h"), ("192.0.2.2", "1h"))))
    assert [d.value for d in stream.new] == ["192.0.2.2"] and stream.skipped == 1


@pytest.mark.parametrize("bad", [5, True, 1.5, "abc", {"name": "x"}])
def test_non_list_links_are_skipped_and_counted_never_a_type_error(bad: object) -> None:
    reasons: list[str] = []
    good = {"id": "a1", "name": "ok", "url": "http://l/a"}
    stream = parse_stream(resp(200, {"links": {"blocklists": bad, "allowlists": [good]}}), on_skip=reasons.append)
    assert stream.blocklists == [] and [a.name for a in stream.allowlists] == ["ok"]
    assert stream.skipped == 1 and "links.blocklists" in reasons[0]
    stream = parse_stream(resp(200, {"links": {"allowlists": bad}}))
    assert stream.allowlists == [] and stream.skipped == 1


def test_a_blocklist_link_with_an_absurd_duration_is_skipped() -> None:
    link = {"name": "bl", "url": "http://l/b", "remediation": "ban", "scope": "ip"}
    links = {"blocklists": [{**link, "duration": "9" * 400 + "h"}, {**link, "name": "ok", "duration": "24h"}]}
    stream = parse_stream(resp(200, {"links": links}))
    assert [(b.name, b.duration) for b in stream.blocklists] == [("ok", 86400.0)] and stream.skipped == 1
