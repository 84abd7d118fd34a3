"""The emulator's CAPI endpoints driven in-process with plain httpx (ASGITransport), every answer checked
against the official swagger (ErrorResponse, SuccessResponse, LoginResponse, GetDecisionsStreamResponse)."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cscapi.emulator import EmulatorConfig, LoginRateLimit, create_app
from cscapi.emulator.community import ALL_SCENARIOS as _ALL

pytestmark = pytest.mark.anyio

MID = "m" * 24 + "0123456789abcdefghijklmn"
MID2 = "z" * 48
KEY = "attachKey42"


class Clock:
    """A hand-driven clock (unix seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_signal(i: int = 0, **changes: Any) -> dict[str, Any]:
    ip = f"192.0.2.{i % 250 + 1}"
    sig: dict[str, Any] = {
        "scenario": "crowdsecurity/ssh-bf",
        "scenario_hash": "4441dcff07020f6690d998b7101e642359ba405c2abb83565bbbdcee36de280f",
        "scenario_version": "0.1",
        "scenario_trust": "certified",
        "message": f"Ip {ip} performed 'crowdsecurity/ssh-bf' (6 events)",
        "source": {"scope": "ip", "value": ip, "ip": ip, "as_number": "64496", "cn": "FR", "latitude": 48.8},
        "start_at": "2026-11-21T22:28:19.195898403Z",
        "stop_at": "2026-11-21T22:28:20.195898403Z",
        "created_at": "2026-11-21T22:28:21Z",
        "machine_id": MID,
        "uuid": str(uuid.uuid4()),
        "decisions": [
            {
                "id": 0,
                "uuid": str(uuid.uuid4()),
                "duration": "4h",
                "origin": "crowdsec",
                "scenario": "crowdsecurity/ssh-bf",
                "scope": "ip",
                "value": ip,
                "type": "ban",
                "simulated": False,
            }
        ],
        "context": [{"key": "target_user", "value": "root"}],
    }
    sig.update(changes)
    return sig


class Capi:
    """httpx.AsyncClient on the in-process app, validating each answer against the swagger."""

    def __init__(self, client: httpx.AsyncClient, app: Any, spec: dict[str, Any], validate: Any) -> None:
        self.http = client
        self.app = app
        self.state = app.state.emulator
        self.spec = spec
        self.validate = validate

    def checked(self, response: httpx.Response, success: str | None = "SuccessResponse") -> httpx.Response:
        if response.status_code >= 400:
            self.validate(self.spec, "ErrorResponse", response.json())
            assert isinstance(response.json()["errors"], str)
        elif success is not None and response.status_code != 304:
            self.validate(self.spec, success, response.json())
        return response

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        bearer: bool = True,
        success: str | None = "SuccessResponse",
        **kw: Any,
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}" if bearer else token
        if body is not None:
            kw["json"] = body
        if path.endswith("/watchers/login") and success == "SuccessResponse":
            success = "LoginResponse"
        return self.checked(await self.http.post(path, headers=headers, **kw), success)

    async def get(
        self, path: str, *, token: str | None = None, success: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.checked(await self.http.get(path, headers=headers, **kw), success)

    async def register_login(
        self, machine_id: str = MID, password: str = "secret", scenarios: list[str] | None = None, api: str = "v3"
    ) -> str:
        r = await self.post(f"/{api}/watchers", {"machine_id": machine_id, "password": password})
        assert r.status_code == 200, r.text
        r = await self.post(
            f"/{api}/watchers/login",
            {
                "machine_id": machine_id,
                "password": password,
                "scenarios": ALL_SCENARIOS if scenarios is None else scenarios,
            },
            success="LoginResponse",
        )
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    async def stream(self, token: str, api: str = "v3", **params: Any) -> dict[str, Any]:
        success = "GetDecisionsStreamResponse" if api == "v3" else None
        r = await self.get(f"/{api}/decisions/stream", token=token, params=params, success=success)
        assert r.status_code == 200, r.text
        return dict(r.json())


#: Every scenario the generated list and admin-added decisions use: lists are tailored to the login's scenarios.
ALL_SCENARIOS = list(_ALL)


def emulator_config(**kw: Any) -> EmulatorConfig:
    kw.setdefault("community_size", 200)
    kw.setdefault("seed", 7)
    kw.setdefault("login_rate_limit", LoginRateLimit(enabled=False))
    kw.setdefault("attachment_keys", [KEY])
    return EmulatorConfig(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def capi(
    anyio_backend: str, capi_spec: dict[str, Any], validate_against: Any, clock: Clock
) -> AsyncIterator[Capi]:
    app = create_app(emulator_config(clock=clock))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://capi.test") as client:
        yield Capi(client, app, capi_spec, validate_against)
    assert app.state.emulator.internal_errors == 0, "a request reached the catch-all 500 handler"


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# ---- register / login / reset -----------------------------------------------------------------------------------


async def test_register_then_duplicate_is_409(capi: Capi) -> None:
    r = await capi.post("/v3/watchers", {"machine_id": MID, "password": "pw"})
    assert r.status_code == 200
    r = await capi.post("/v3/watchers", {"machine_id": MID, "password": "pw"})
    assert r.status_code == 409
    assert "already registered" in r.json()["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"machine_id": "bad id!", "password": "pw"}, "body.machine_id"),
        ({"machine_id": MID}, "password"),
        ({"machine_id": 12, "password": "pw"}, "body.machine_id"),
        ([], "object"),
    ],
)
async def test_register_rejects_bad_bodies_naming_the_field(capi: Capi, body: Any, field: str) -> None:
    r = await capi.post("/v3/watchers", body)
    assert r.status_code == 400
    assert field in r.json()["message"] + r.json()["errors"]


async def test_login_returns_a_real_hs256_jwt(capi: Capi, clock: Clock) -> None:
    token = await capi.register_login(scenarios=["crowdsecurity/ssh-bf", "crowdsecurity/http-probing"])
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    claims = jwt_claims(token)
    assert claims["sub"] == MID
    assert claims["iat"] == int(clock.now)
    assert claims["exp"] == int(clock.now) + 3600
    assert "organization_id" not in claims
    machine = capi.state.machines[MID]
    assert machine.scenarios == ["crowdsecurity/http-probing", "crowdsecurity/ssh-bf"]


async def test_login_expire_field_is_rfc3339_matching_exp(capi: Capi) -> None:
    await capi.post("/v3/watchers", {"machine_id": MID, "password": "pw"})
    r = await capi.post("/v3/watchers/login", {"machine_id": MID, "password": "pw"}, success="LoginResponse")
    from cscapi.timeutil import parse_timestamp

    body = r.json()
    assert body["code"] == 200
    assert parse_timestamp(body["expire"]).timestamp() == jwt_claims(body["token"])["exp"]


async def test_token_lifetime_is_configurable(capi_spec: dict[str, Any], validate_against: Any) -> None:
    clock = Clock()
    app = create_app(emulator_config(clock=clock, token_lifetime=120))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        c = Capi(client, app, capi_spec, validate_against)
        token = await c.register_login()
        assert jwt_claims(token)["exp"] == int(clock.now) + 120
        clock.now += 119
        assert (await c.get("/v3/decisions/stream", token=token)).status_code == 200
        clock.now += 2
        r = await c.get("/v3/decisions/stream", token=token)
        assert r.status_code == 401
        assert r.json()["message"] == "The incoming token has expired"


@pytest.mark.parametrize("password", ["wrong", ""])
async def test_wrong_password_is_403(capi: Capi, password: str) -> None:
    await capi.post("/v3/watchers", {"machine_id": MID, "password": "pw"})
    r = await capi.post("/v3/watchers/login", {"machine_id": MID, "password": password})
    assert r.status_code == 403


async def test_unknown_machine_login_is_403(capi: Capi) -> None:
    r = await capi.post("/v3/watchers/login", {"machine_id": MID2, "password": "pw"})
    assert r.status_code == 403


async def test_login_machine_id_must_be_48_characters(capi: Capi) -> None:
    r = await capi.post("/v3/watchers/login", {"machine_id": "short", "password": "pw"})
    assert r.status_code == 400
    assert "body.machine_id" in r.json()["message"]


async def test_reset_password_revokes_old_tokens(capi: Capi) -> None:
    token = await capi.register_login(password="old")
    r = await capi.post("/v3/watchers/reset", {"machine_id": MID, "password": "new"})
    assert r.status_code == 200
    assert (await capi.get("/v3/decisions/stream", token=token)).status_code == 401
    assert (await capi.post("/v3/watchers/login", {"machine_id": MID, "password": "old"})).status_code == 403
    r = await capi.post("/v3/watchers/login", {"machine_id": MID, "password": "new"}, success="LoginResponse")
    assert r.status_code == 200
    assert (await capi.post("/v3/watchers/reset", {"machine_id": MID2, "password": "x"})).status_code == 404


# ---- auth ---------------------------------------------------------------------------------------------------------


async def test_bearer_and_bare_tokens_are_both_accepted(capi: Capi) -> None:
    token = await capi.register_login()
    r1 = await capi.post("/v3/signals", [make_signal(1)], token=token, bearer=True)
    r2 = await capi.post("/v3/signals", [make_signal(2)], token=token, bearer=False)
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert len(capi.state.query_signals(MID)) == 2


@pytest.mark.parametrize(
    "header", [None, "Bearer ", "Bearer not.a.jwt", "Bearer a.b", "Bearer \xe9.x.y".encode("latin-1")]
)
async def test_missing_or_invalid_token_is_401(capi: Capi, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = await capi.post("/v3/signals", [], headers=headers)
    assert r.status_code == 401


async def test_token_with_forged_signature_is_401(capi: Capi) -> None:
    token = await capi.register_login()
    head, _payload, sig = token.split(".")
    claims = jwt_claims(token)
    claims["exp"] += 10_000
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    r = await capi.get("/v3/decisions/stream", token=f"{head}.{forged}.{sig}")
    assert r.status_code == 401


# ---- enroll -------------------------------------------------------------------------------------------------------


async def test_enroll_statuses_and_organization_id(capi: Capi) -> None:
    capi.state.set_only_listed_keys(True)
    token = await capi.register_login()
    r = await capi.post("/v3/watchers/enroll", {"attachment_key": "nope"}, token=token)
    assert r.status_code == 403
    body = {"attachment_key": KEY, "name": "web-1", "tags": ["prod"], "overwrite": False}
    r = await capi.post("/v3/watchers/enroll", body, token=token)
    assert r.status_code == 202
    r = await capi.post("/v3/watchers/enroll", body, token=token)
    assert r.status_code == 200
    assert "already" in r.json()["message"]
    r = await capi.post("/v3/watchers/enroll", {**body, "overwrite": True}, token=token)
    assert r.status_code == 202
    r = await capi.post("/v3/watchers/login", {"machine_id": MID, "password": "secret"}, success="LoginResponse")
    assert jwt_claims(r.json()["token"])["organization_id"].startswith("org")
    assert capi.state.records["enrollments"][0]["name"] == "web-1"


async def test_enroll_needs_auth_and_a_valid_key_shape(capi: Capi) -> None:
    assert (await capi.post("/v3/watchers/enroll", {"attachment_key": KEY})).status_code == 401
    token = await capi.register_login()
    r = await capi.post("/v3/watchers/enroll", {"attachment_key": "has space"}, token=token)
    assert r.status_code == 400
    assert "attachment_key" in r.json()["message"]


# ---- signals ------------------------------------------------------------------------------------------------------


async def test_signals_are_recorded_per_machine_and_deduplicated_by_uuid(capi: Capi) -> None:
    t1 = await capi.register_login(MID)
    t2 = await capi.register_login(MID2)
    batch = [make_signal(i) for i in range(5)]
    assert (await capi.post("/v3/signals", batch, token=t1)).status_code == 200
    r = await capi.post("/v3/signals", [*batch[:3], make_signal(9)], token=t1)
    assert r.status_code == 200
    assert "3 duplicate" in r.json()["message"]
    assert (await capi.post("/v3/signals", batch[:2], token=t2)).status_code == 200
    assert len(capi.state.query_signals(MID)) == 6
    assert len(capi.state.query_signals(MID2)) == 2
    assert capi.state.query_signals(MID)[0]["signal"]["uuid"] == batch[0]["uuid"]


async def test_signals_batch_limit_is_250(capi: Capi) -> None:
    token = await capi.register_login()
    assert (await capi.post("/v3/signals", [make_signal(i) for i in range(250)], token=token)).status_code == 200
    r = await capi.post("/v3/signals", [make_signal(i) for i in range(251)], token=token)
    assert r.status_code == 400
    assert "251" in r.json()["message"]
    assert len(capi.state.signals) == 250


async def test_gzip_bodies_are_accepted(capi: Capi) -> None:
    token = await capi.register_login()
    raw = gzip.compress(json.dumps([make_signal(i) for i in range(40)]).encode())
    r = await capi.post(
        "/v3/signals",
        token=token,
        content=raw,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200
    assert len(capi.state.signals) == 40


async def test_bad_gzip_and_unknown_encoding_are_refused(capi: Capi) -> None:
    token = await capi.register_login()
    r = await capi.post("/v3/signals", token=token, content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    r = await capi.post("/v3/signals", token=token, content=b"[]", headers={"Content-Encoding": "br"})
    assert r.status_code == 415


async def test_null_optional_fields_count_as_absent(capi: Capi) -> None:
    token = await capi.register_login()
    sig = make_signal(1, context=None, decisions=None, uuid=None, created_at=None, scenario_trust=None, kind=None)
    sig["source"]["as_name"] = None
    r = await capi.post("/v3/signals", [sig], token=token)
    assert r.status_code == 200
    assert "context" not in capi.state.signals[0]["signal"]


async def test_null_required_field_is_400_naming_it(capi: Capi) -> None:
    token = await capi.register_login()
    r = await capi.post("/v3/signals", [make_signal(1), make_signal(2, scenario=None)], token=token)
    assert r.status_code == 400
    assert "body[1]" in r.json()["message"]
    assert "scenario" in r.json()["message"]
    assert capi.state.signals == []


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda s: s["source"].update(value=12), "body[0].source.value"),
        (lambda s: s.update(alert_id="x"), "body[0].alert_id"),
        (lambda s: s["decisions"][0].update(id="1"), "body[0].decisions[0].id"),
        (lambda s: s.update(decisions={"a": 1}), "body[0].decisions"),
        (lambda s: s.update(context=[{"key": 1}]), "body[0].context[0].key"),
        (lambda s: s.pop("source"), "source"),
        (lambda s: s["source"].update(latitude="north"), "body[0].source.latitude"),
    ],
)
async def test_wrong_types_are_400_naming_the_field(capi: Capi, mutate: Any, where: str) -> None:
    token = await capi.register_login()
    sig = make_signal(1)
    mutate(sig)
    r = await capi.post("/v3/signals", [sig], token=token)
    assert r.status_code == 400, r.text
    assert where in r.json()["message"] + r.json()["errors"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"   ", b'{"a": 1}', b"\xff\xfe\x00", b"null", b"[1, 2]", b'"text"', b"[[]]", b"[null]"],
)
async def test_malformed_bodies_are_400_never_500(capi: Capi, content: bytes) -> None:
    token = await capi.register_login()
    r = await capi.post("/v3/signals", token=token, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text


async def test_body_size_limit_is_413(capi_spec: dict[str, Any], validate_against: Any) -> None:
    app = create_app(emulator_config(max_body_bytes=4096))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        c = Capi(client, app, capi_spec, validate_against)
        token = await c.register_login()
        r = await c.post("/v3/signals", [make_signal(i) for i in range(10)], token=token)
        assert r.status_code == 413
        bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")
        r = await c.post("/v3/signals", token=token, content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413


# ---- decisions stream ---------------------------------------------------------------------------------------------


def flat_new(stream: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {d["value"]: (g["scenario"], g["scope"], d["duration"]) for g in stream["new"] for d in g["decisions"]}


def flat_deleted(stream: dict[str, Any]) -> set[str]:
    return {v for g in stream["deleted"] for v in g["decisions"]}


async def test_startup_pull_returns_the_whole_community_list(capi: Capi) -> None:
    token = await capi.register_login()
    stream = await capi.stream(token, startup="true")
    values = flat_new(stream)
    assert len(values) == 200
    assert set(values) == {d.value for d in capi.state.decisions.values()}
    assert stream["deleted"] == []
    scopes = {scope for (_, scope, _) in values.values()}
    assert scopes == {"ip", "range"}
    assert any(":" in v for v in values) and any("." in v for v in values)
    assert len({scenario for (scenario, _, _) in values.values()}) > 5


async def test_durations_count_down(capi: Capi, clock: Clock) -> None:
    from cscapi.timeutil import parse_go_duration

    token = await capi.register_login()
    first = flat_new(await capi.stream(token, startup="true"))
    clock.now += 600
    second = flat_new(await capi.stream(token, startup="true"))
    value = next(iter(first))
    assert parse_go_duration(first[value][2]) - parse_go_duration(second[value][2]) == 600


async def test_delta_pull_has_new_and_deleted_since_last_pull(capi: Capi, clock: Clock) -> None:
    token = await capi.register_login()
    await capi.stream(token, startup="true")
    empty = await capi.stream(token)
    assert flat_new(empty) == {} and flat_deleted(empty) == set()
    victims = sorted(capi.state.decisions)[:3]
    capi.state.add_decisions([{"value": "203.0.113.200", "scenario": "crowdsecurity/http-probing", "duration": "30m"}])
    capi.state.remove_decisions([victims[0][1]])
    capi.state.remove_decisions([victims[1][1]], expire=True)
    delta = await capi.stream(token)
    assert set(flat_new(delta)) == {"203.0.113.200"}
    assert flat_new(delta)["203.0.113.200"] == ("crowdsecurity/http-probing", "ip", "30m0s")
    assert flat_deleted(delta) == {victims[0][1], victims[1][1]}
    # decisions running out of time disappear and show up as deleted
    clock.now += 1801
    delta = await capi.stream(token)
    assert "203.0.113.200" in flat_deleted(delta)
    after = await capi.stream(token, startup="true")
    assert "203.0.113.200" not in flat_new(after)
    assert victims[0][1] not in flat_new(after)


async def test_each_machine_has_its_own_pull_position(capi: Capi) -> None:
    t1 = await capi.register_login(MID)
    t2 = await capi.register_login(MID2)
    await capi.stream(t1, startup="true")
    capi.state.add_decisions([{"value": "2001:db8::dead", "duration": "2h"}])
    assert set(flat_new(await capi.stream(t1))) == {"2001:db8::dead"}
    assert len(flat_new(await capi.stream(t2))) == 201  # never pulled: the full list
    assert flat_new(await capi.stream(t1)) == {}


async def test_community_and_additional_pull_flags(capi: Capi) -> None:
    token = await capi.register_login()
    capi.state.publish_blocklist("crowdsec/tor-exit-nodes", ["198.51.100.9"])
    s = await capi.stream(token, startup="true", community_pull="false")
    assert s["new"] == [] and len(s["links"]["blocklists"]) == 1
    s = await capi.stream(token, startup="true", additional_pull="false")
    assert len(flat_new(s)) == 200 and s["links"]["blocklists"] == []
    r = await capi.get("/v3/decisions/stream", token=token, params={"startup": "maybe"})
    assert r.status_code == 400
    assert "startup" in r.json()["message"]


async def test_links_point_at_downloads_served_without_auth(capi: Capi, clock: Clock) -> None:
    token = await capi.register_login()
    capi.state.publish_blocklist(
        "my/list", ["192.0.2.1", "198.51.100.0/24", "2001:db8::/64"], duration="12h", remediation="captcha"
    )
    capi.state.publish_allowlist(
        "office", [{"value": "203.0.113.5", "description": "office"}, "2001:db8::1"], description="our addresses"
    )
    s = await capi.stream(token, startup="true")
    bl = s["links"]["blocklists"][0]
    assert bl["url"].startswith("http://capi.test/") and bl["remediation"] == "captcha" and bl["duration"] == "12h"
    al = s["links"]["allowlists"][0]
    assert al["name"] == "office" and al["description"] == "our addresses"
    r = await capi.http.get(bl["url"])
    assert r.status_code == 200
    assert r.text.splitlines() == ["192.0.2.1", "198.51.100.0/24", "2001:db8::/64"]
    last_modified = r.headers["last-modified"]
    r = await capi.http.get(bl["url"], headers={"If-Modified-Since": last_modified})
    assert r.status_code == 304 and r.content == b""
    clock.now += 5
    capi.state.publish_blocklist("my/list", ["192.0.2.2"], duration="12h", remediation="captcha")
    r = await capi.http.get(bl["url"], headers={"If-Modified-Since": last_modified})
    assert r.status_code == 200 and r.text == "192.0.2.2\n"
    r = await capi.http.get(al["url"])
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [x["value"] for x in lines] == ["203.0.113.5", "2001:db8::1"]
    assert lines[0]["description"] == "office" and "created_at" in lines[0]
    r = await capi.http.get(al["url"], headers={"If-Modified-Since": r.headers["last-modified"]})
    assert r.status_code == 304
    capi.state.remove_list("blocklist", "my/list")
    r = await capi.http.get(bl["url"])
    assert r.status_code == 404
    capi.validate(capi.spec, "ErrorResponse", r.json())


async def test_list_changed_twice_in_one_second_is_not_304(capi: Capi) -> None:
    capi.state.publish_blocklist("l", ["192.0.2.1"])
    url = f"/downloads/blocklists/{capi.state.list_id('l')}"
    first = await capi.http.get(url)
    capi.state.publish_blocklist("l", ["192.0.2.3"])
    r = await capi.http.get(url, headers={"If-Modified-Since": first.headers["last-modified"]})
    assert r.status_code == 200 and r.text == "192.0.2.3\n"


async def test_stream_needs_auth(capi: Capi) -> None:
    assert (await capi.get("/v3/decisions/stream")).status_code == 401


# ---- metrics, usage metrics, decisions delete / sync ------------------------------------------------------------

METRICS = {
    "bouncers": [{"custom_name": "web", "name": "php", "version": "1.0", "last_pull": "2026-11-21T22:00:00Z"}],
    "machines": [
        {
            "name": "agent",
            "version": "v1.4.6",
            "last_update": "2026-11-21 22:28:02.382239733 +0000 UTC",
            "last_push": "2026-11-21T22:00:00Z",
        }
    ],
}

USAGE = {
    "remediation_components": [
        {
            "version": "1.0.0",
            "utc_startup_timestamp": 1_800_000_000,
            "type": "cscapi",
            "name": "web",
            "os": {"name": "linux", "version": "6.1"},
            "feature_flags": [],
            "metrics": [
                {
                    "meta": {"window_size_seconds": 1800, "utc_now_timestamp": 1_800_001_800},
                    "items": [{"name": "dropped", "value": 12, "unit": "request", "labels": {"origin": "CAPI"}}],
                }
            ],
        }
    ]
}


@pytest.mark.parametrize("path", ["/v3/metrics", "/v3/metrics/"])
async def test_metrics_with_or_without_trailing_slash(capi: Capi, path: str) -> None:
    token = await capi.register_login()
    assert (await capi.post(path, METRICS, token=token)).status_code == 200
    assert capi.state.records["metrics"][-1]["body"] == METRICS
    r = await capi.post(path, {"bouncers": "x", "machines": []}, token=token)
    assert r.status_code == 400 and "body.bouncers" in r.json()["message"]


async def test_metrics_null_lists_are_accepted_as_empty(capi: Capi) -> None:
    token = await capi.register_login()
    r = await capi.post("/v3/metrics", {"bouncers": None, "machines": METRICS["machines"]}, token=token)
    assert r.status_code == 200


async def test_usage_metrics_validated_against_lapi_allmetrics(capi: Capi, lapi_spec: dict[str, Any]) -> None:
    token = await capi.register_login()
    capi.validate(lapi_spec, "AllMetrics", USAGE)
    r = await capi.post("/v3/usage-metrics", USAGE, token=token)
    assert r.status_code == 201
    assert capi.state.records["usage_metrics"][0]["body"] == USAGE
    bad = json.loads(json.dumps(USAGE))
    del bad["remediation_components"][0]["utc_startup_timestamp"]
    r = await capi.post("/v3/usage-metrics", bad, token=token)
    assert r.status_code == 422
    assert "utc_startup_timestamp" in r.json()["message"]


async def test_decisions_delete_and_sync(capi: Capi) -> None:
    token = await capi.register_login()
    uuids = [str(uuid.uuid4()) for _ in range(3)]
    assert (await capi.post("/v3/decisions/delete", uuids, token=token)).status_code == 200
    assert capi.state.records["decisions_delete"][0]["body"] == uuids
    assert (await capi.post("/v3/decisions/delete", [1, 2], token=token)).status_code == 400
    item = make_signal(1)
    for key in ("uuid", "context", "kind"):
        item.pop(key, None)
    for d in item["decisions"]:
        d.pop("uuid")
    assert (await capi.post("/v3/decisions/sync", [item], token=token)).status_code == 200
    assert (await capi.post("/v3/decisions/sync", {"x": 1}, token=token)).status_code == 400


# ---- errors in general --------------------------------------------------------------------------------------------


async def test_unknown_paths_and_methods_are_error_responses(capi: Capi) -> None:
    r = await capi.get("/v3/nothing")
    assert r.status_code == 404
    r = await capi.get("/v3/signals")
    assert r.status_code == 405
    r = await capi.http.delete("/v3/watchers/login")
    assert r.status_code == 405
    capi.validate(capi.spec, "ErrorResponse", r.json())


# ---- legacy v2 ----------------------------------------------------------------------------------------------------


async def test_v2_register_login_signals_metrics_and_flat_stream(capi: Capi, lapi_spec: dict[str, Any]) -> None:
    token = await capi.register_login(api="v2")
    v2_signal = {
        "machine_id": "localtest",
        "message": "m",
        "scenario": "crowdsecurity/ssh-bf",
        "scenario_hash": "h",
        "scenario_trust": "certified",
        "scenario_version": "0.1",
        "source": {"ip": "192.0.2.8", "scope": "Ip", "value": "192.0.2.8"},
        "start_at": "2026-11-21 22:28:19.195898403 +0000 UTC",
        "stop_at": "2026-11-21 22:28:20 +0000 UTC",
    }
    assert (await capi.post("/v2/signals", [v2_signal], token=token)).status_code == 200
    assert capi.state.signals[0]["api"] == "v2"
    assert (await capi.post("/v2/metrics/", METRICS, token=token)).status_code == 200
    capi.state.publish_blocklist("lst", ["198.51.100.1"], duration="24h")
    s = await capi.stream(token, api="v2", startup="true")
    assert set(s) == {"new", "deleted"}
    for decision in s["new"]:
        capi.validate(lapi_spec, "Decision", decision)
    origins = {d["origin"] for d in s["new"]}
    assert origins == {"CAPI", "lists"}
    assert sum(1 for d in s["new"] if d["origin"] == "CAPI") == 200
    gone = next(iter(capi.state.decisions))[1]
    capi.state.remove_decisions([gone])
    s = await capi.stream(token, api="v2")
    assert [d["value"] for d in s["deleted"]] == [gone]
    for decision in s["deleted"]:
        capi.validate(lapi_spec, "Decision", decision)
    token_v3 = (
        await capi.post("/v2/watchers/login", {"machine_id": MID, "password": "secret"}, success="LoginResponse")
    ).json()["token"]
    assert (await capi.post("/v2/watchers/enroll", {"attachment_key": KEY}, token=token_v3)).status_code == 202


# ---- login rate limit ---------------------------------------------------------------------------------------------


async def test_login_rate_limit_bans_for_an_hour(capi_spec: dict[str, Any], validate_against: Any) -> None:
    clock = Clock()
    limit = LoginRateLimit(threshold=3, threshold_sharing=4, window=3000, ban=3600, retry_extends_ban=False)
    app = create_app(emulator_config(clock=clock, login_rate_limit=limit))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        c = Capi(client, app, capi_spec, validate_against)
        await c.post("/v3/watchers", {"machine_id": MID, "password": "pw"})
        body = {"machine_id": MID, "password": "pw"}
        statuses = []
        for _ in range(4):
            statuses.append((await c.post("/v3/watchers/login", body, success="LoginResponse")).status_code)
            clock.now += 60
        assert statuses == [200, 200, 200, 403]
        r = await c.post("/v3/watchers/login", body)
        assert (
            r.status_code == 403
            and "banned from logging in until" in r.json()["message"]
            and "Retry-After" in r.headers
        )
        clock.now += 3600
        assert (await c.post("/v3/watchers/login", body, success="LoginResponse")).status_code == 200
        # another machine is counted on its own (per="machine")
        await c.post("/v3/watchers", {"machine_id": MID2, "password": "pw"})
        r = await c.post("/v3/watchers/login", {"machine_id": MID2, "password": "pw"}, success="LoginResponse")
        assert r.status_code == 200


async def test_login_rate_limit_retry_extends_ban_and_per_ip(capi_spec: dict[str, Any], validate_against: Any) -> None:
    clock = Clock()
    limit = LoginRateLimit(threshold=1, per="ip", retry_extends_ban=True)
    app = create_app(emulator_config(clock=clock, login_rate_limit=limit))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        c = Capi(client, app, capi_spec, validate_against)
        for mid in (MID, MID2):
            await c.post("/v3/watchers", {"machine_id": mid, "password": "pw"})
        assert (await c.post("/v3/watchers/login", {"machine_id": MID, "password": "pw"})).status_code == 200
        # same source address: the second machine counts against the same budget
        assert (await c.post("/v3/watchers/login", {"machine_id": MID2, "password": "pw"})).status_code == 403
        clock.now += 3000
        assert (await c.post("/v3/watchers/login", {"machine_id": MID, "password": "pw"})).status_code == 403
        clock.now += 3599  # the retry above restarted the hour
        assert (await c.post("/v3/watchers/login", {"machine_id": MID, "password": "pw"})).status_code == 403
        app.state.emulator.clear_login_bans()
        assert (await c.post("/v3/watchers/login", {"machine_id": MID, "password": "pw"})).status_code == 200


async def test_sharing_and_enrolled_machines_get_higher_thresholds(
    capi_spec: dict[str, Any], validate_against: Any
) -> None:
    from cscapi.emulator import LoginRateLimit as L

    limit = L(threshold=1, threshold_sharing=2, threshold_enrolled=3, threshold_enrolled_sharing=4)
    assert limit.limit_for(enrolled=False, sharing=False) == 1
    assert limit.limit_for(enrolled=False, sharing=True) == 2
    assert limit.limit_for(enrolled=True, sharing=False) == 3
    assert limit.limit_for(enrolled=True, sharing=True) == 4
    clock = Clock()
    app = create_app(emulator_config(clock=clock, login_rate_limit=limit))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        c = Capi(client, app, capi_spec, validate_against)
        token = await c.register_login()
        await c.post("/v3/signals", [make_signal(1)], token=token)
        body = {"machine_id": MID, "password": "secret"}
        assert (await c.post("/v3/watchers/login", body)).status_code == 200  # 2nd login: sharing allows 2
        assert (await c.post("/v3/watchers/login", body)).status_code == 403


# ---- caching, CORS, in-process drops ------------------------------------------------------------------------------


async def test_startup_answer_is_cached_until_the_list_changes_or_ages(capi: Capi, clock: Clock) -> None:
    token = await capi.register_login()
    first = await capi.http.get("/v3/decisions/stream?startup=true", headers={"Authorization": token})
    clock.now += 1
    second = await capi.http.get("/v3/decisions/stream?startup=true", headers={"Authorization": token})
    assert second.content == first.content  # reused (durations read up to snapshot_max_age long)
    capi.state.add_decisions([{"value": "192.0.2.251", "duration": "1h"}])
    third = await capi.http.get("/v3/decisions/stream?startup=true", headers={"Authorization": token})
    assert "192.0.2.251" in flat_new(third.json())
    capi.state.publish_blocklist("late", ["192.0.2.1"])
    fourth = await capi.http.get("/v3/decisions/stream?startup=true", headers={"Authorization": token})
    assert [b["name"] for b in fourth.json()["links"]["blocklists"]] == ["late"]
    clock.now += 10
    fifth = await capi.http.get("/v3/decisions/stream?startup=true", headers={"Authorization": token})
    assert fifth.content != fourth.content  # older than snapshot_max_age: rebuilt with shorter durations
    assert set(flat_new(fifth.json())) == set(flat_new(fourth.json()))


async def test_cors_preflight_declared_by_the_swagger(capi: Capi) -> None:
    r = await capi.http.options("/v3/decisions/stream")
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


async def test_drop_fault_in_process_raises_to_the_caller(capi: Capi) -> None:
    from cscapi.emulator import FaultSpec
    from cscapi.emulator.app import ConnectionDropped

    capi.state.set_fault("register", FaultSpec(drop_rate=1.0, remaining=1))
    with pytest.raises(ConnectionDropped):
        await capi.http.post("/v3/watchers", json={"machine_id": MID, "password": "pw"})
    assert (await capi.post("/v3/watchers", {"machine_id": MID, "password": "pw"})).status_code == 200


async def test_a_genuine_bug_is_a_500_error_response(capi: Capi, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(capi.state, "register", boom)
    r = await capi.http.post("/v3/watchers", json={"machine_id": MID, "password": "pw"})
    assert r.status_code == 500
    capi.validate(capi.spec, "ErrorResponse", r.json())
    assert "Traceback" not in r.text and "simulated bug" not in r.text
    assert capi.state.internal_errors == 1
    capi.state.internal_errors = 0  # the fixture asserts no bug was hit otherwise


async def test_tailor_to_scenarios(capi_spec: dict[str, Any], validate_against: Any) -> None:
    clock = Clock()
    app = create_app(emulator_config(clock=clock, tailor_to_scenarios=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        c = Capi(client, app, capi_spec, validate_against)
        state = app.state.emulator
        ssh = await c.register_login(MID, scenarios=["crowdsecurity/ssh-bf"])
        both = await c.register_login(MID2, scenarios=["crowdsecurity/ssh-bf", "crowdsecurity/http-probing"])
        s1 = await c.stream(ssh, startup="true")
        s2 = await c.stream(both, startup="true")
        assert {g["scenario"] for g in s1["new"]} == {"crowdsecurity/ssh-bf"}
        assert {g["scenario"] for g in s2["new"]} == {"crowdsecurity/ssh-bf", "crowdsecurity/http-probing"}
        expected = {d.value for d in state.decisions.values() if d.scenario == "crowdsecurity/ssh-bf"}
        assert set(flat_new(s1)) == expected
        state.add_decisions(
            [
                {"value": "192.0.2.201", "scenario": "crowdsecurity/http-probing"},
                {"value": "192.0.2.202", "scenario": "crowdsecurity/ssh-bf"},
            ]
        )
        assert set(flat_new(await c.stream(ssh))) == {"192.0.2.202"}
        assert set(flat_new(await c.stream(both))) == {"192.0.2.201", "192.0.2.202"}
        v2 = await c.stream(ssh, api="v2", startup="true")
        assert {d["scenario"] for d in v2["new"]} == {"crowdsecurity/ssh-bf"}


async def test_autoenroll_without_key_returns_a_console_url(capi: Capi, clock: Clock) -> None:
    token = await capi.register_login()
    r = await capi.post("/v3/watchers/enroll", {"autoenroll": True, "name": "web"}, token=token)
    assert r.status_code == 202
    body = r.json()
    assert body["url"].startswith("http://capi.test/console/enroll/")
    assert body["expire_at"] == int((clock.now + 900) * 1000)
    assert capi.state.machines[MID].organization_id is None
    assert capi.state.records["enrollments"][0]["autoenroll"] is True
    r = await capi.post("/v3/watchers/enroll", {"autoenroll": True, "tags": "x"}, token=token)
    assert r.status_code == 400 and "body.tags" in r.json()["message"]
