"""Regression tests from the emulator audit: hostile JSON nesting, distinguishable login 403s, several decisions on
one value, bounded admin durations, secrets out of reprs, and a light ``--help``."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi.emulator import EmulatorConfig, LoginRateLimit, create_app
from cscapi.emulator.community import ALL_SCENARIOS
from cscapi.emulator.jsonlimits import MAX_JSON_DEPTH, JSONTooDeep, depth_exceeds, loads_limited
from cscapi.errors import ConfigurationError

MID = "h" * 48
ADMIN = "hardening-admin-token"
DEEP = b"[" * 100_000 + b"]" * 100_000  # the audit's body: RecursionError inside json.loads
JUST_TOO_DEEP = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)  # parses, but deeper than allowed


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Http:
    """The in-process app behind httpx, every error answer checked against the swagger's ErrorResponse."""

    def __init__(self, client: httpx.AsyncClient, app: Any, spec: dict[str, Any], validate: Any) -> None:
        self.client = client
        self.state = app.state.emulator
        self.spec = spec
        self.validate = validate

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await self.client.request(method, path, **kw)
        if r.status_code >= 400:
            self.validate(self.spec, "ErrorResponse", r.json())
        return r

    async def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN}", **kw.pop("headers", {})}
        return await self.request(method, "/admin/" + path, headers=headers, **kw)

    async def register_login(self, machine_id: str = MID, password: str = "pw") -> str:
        r = await self.request("POST", "/v3/watchers", json={"machine_id": machine_id, "password": password})
        assert r.status_code == 200, r.text
        body = {"machine_id": machine_id, "password": password, "scenarios": [*ALL_SCENARIOS, "x/y"]}
        r = await self.request("POST", "/v3/watchers/login", json=body)  # the list is tailored to these
        assert r.status_code == 200, r.text
        return str(r.json()["token"])


def make_app(**kw: Any) -> Any:
    kw.setdefault("community_size", 0)
    kw.setdefault("login_rate_limit", LoginRateLimit(enabled=False))
    return create_app(EmulatorConfig(admin_token=ADMIN, **kw))


@pytest.fixture
async def http(anyio_backend: str, capi_spec: dict[str, Any], validate_against: Any) -> AsyncIterator[Http]:
    app = make_app(clock=Clock())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://capi.test") as client:
        yield Http(client, app, capi_spec, validate_against)
    assert app.state.emulator.internal_errors == 0, "a request reached the catch-all 500 handler"


# ---- 1. deeply nested JSON is a 400, never a 500 -----------------------------------------------------------------


def test_loads_limited_turns_recursion_into_a_value_error() -> None:
    with pytest.raises(JSONTooDeep):
        loads_limited(DEEP)
    with pytest.raises(JSONTooDeep):
        loads_limited(JUST_TOO_DEEP.decode())
    with pytest.raises(ValueError):  # JSONTooDeep is a ValueError: existing `except ValueError` paths catch it
        loads_limited(b'{"a": ' * 5000 + b"1" + b"}" * 5000, drop_null=True)
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert not depth_exceeds(loads_limited(ok))
    assert loads_limited(b'{"a": null, "b": [1, {"c": null}]}', drop_null=True) == {"b": [1, {}]}
    # brackets inside strings are not nesting
    assert loads_limited(json.dumps(["[" * 500, {"k": "{" * 500}]).encode()) == ["[" * 500, {"k": "{" * 500}]


@pytest.mark.anyio
@pytest.mark.parametrize("body", [DEEP, JUST_TOO_DEEP], ids=["recursion", "just-too-deep"])
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
async def test_deep_json_on_capi_endpoints_is_400(http: Http, body: bytes, gzipped: bool) -> None:
    headers = {"Content-Type": "application/json"}
    content = body
    if gzipped:
        content = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    r = await http.request("POST", "/v3/watchers/login", content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["message"]
    token = await http.register_login()
    for path in ("/v3/signals", "/v2/signals", "/v3/metrics", "/v3/usage-metrics", "/v3/decisions/delete"):
        r = await http.request("POST", path, content=content, headers={**headers, "Authorization": f"Bearer {token}"})
        assert r.status_code == 400, (path, r.text)


@pytest.mark.anyio
async def test_deep_value_inside_a_valid_signal_is_refused(http: Http) -> None:
    """Signals allow unknown members: a deep one would pass validation, then break the admin API's json.dumps."""
    token = await http.register_login()
    signal = {
        "message": "m",
        "scenario": "crowdsecurity/ssh-bf",
        "scenario_hash": "h",
        "scenario_version": "1",
        "source": {"scope": "ip", "value": "192.0.2.1"},
        "start_at": "2026-11-21T22:28:19Z",
        "stop_at": "2026-11-21T22:28:20Z",
        "extra": "PLACEHOLDER",
    }
    raw = json.dumps([signal]).replace('"PLACEHOLDER"', "[" * 900 + "]" * 900)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    r = await http.request("POST", "/v3/signals", content=raw, headers=headers)
    assert r.status_code == 400, r.text
    assert (await http.admin("GET", "signals")).json() == []


@pytest.mark.anyio
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "decisions"), ("PUT", "faults/signals"), ("PUT", "blocklists/x"), ("POST", "machines")],
)
async def test_deep_json_on_the_admin_api_is_400(http: Http, method: str, path: str, gzipped: bool) -> None:
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    r = await http.admin(method, path, content=gzip.compress(DEEP) if gzipped else DEEP, headers=headers)
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["message"]


@pytest.mark.anyio
async def test_admin_api_accepts_gzip_bodies(http: Http) -> None:
    body = gzip.compress(json.dumps({"decisions": [{"value": "192.0.2.9"}]}).encode())
    r = await http.admin("POST", "decisions", content=body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["added"] == 1


@pytest.mark.anyio
async def test_deep_jwt_header_is_401_not_500(http: Http) -> None:
    header = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).rstrip(b"=").decode()
    r = await http.request("GET", "/v3/decisions/stream", headers={"Authorization": f"Bearer {header}.e30.c2ln"})
    assert r.status_code == 401, r.text


def test_deep_config_and_community_files_are_configuration_errors(tmp_path: Path) -> None:
    from cscapi.emulator.community import load_community_file
    from cscapi.emulator.config import load_config_file

    (tmp_path / "deep.json").write_bytes(DEEP)
    (tmp_path / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    for path in ("deep.json", "deep.toml"):
        with pytest.raises(ConfigurationError, match=r"nested too deeply|deeper than"):
            load_config_file(tmp_path / path)
    with pytest.raises(ConfigurationError, match="deeper than"):
        load_community_file(tmp_path / "deep.json")


# ---- 2. login 403s: credentials refusal vs rate-limit ban ---------------------------------------------------------


def _is_credentials_refusal(r: httpx.Response) -> bool:
    """The client's policy, as documented: a 403 about credentials without Retry-After (heal by re-registering)."""
    message = r.json()["message"]
    return (
        r.status_code == 403 and "Retry-After" not in r.headers and ("password" in message or "machine_id" in message)
    )


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["v3", "v2"])
async def test_wrong_password_and_unknown_machine_are_credentials_refusals(http: Http, api: str) -> None:
    await http.register_login()
    r = await http.request("POST", f"/{api}/watchers/login", json={"machine_id": MID, "password": "wrong"})
    assert r.status_code == 403
    assert r.json()["message"] == "invalid machine_id or password"
    assert "retry-after" not in r.headers
    assert _is_credentials_refusal(r)
    r = await http.request("POST", f"/{api}/watchers/login", json={"machine_id": "u" * 48, "password": "pw"})
    assert r.status_code == 403
    assert r.json()["message"] == "machine not registered: invalid machine_id or password"
    assert "retry-after" not in r.headers
    assert _is_credentials_refusal(r)


@pytest.mark.anyio
@pytest.mark.parametrize("per", ["machine", "ip"])
async def test_login_ban_has_retry_after_and_never_talks_about_credentials(
    capi_spec: dict[str, Any], validate_against: Any, per: str
) -> None:
    from cscapi.timeutil import parse_timestamp

    clock = Clock()
    limit = LoginRateLimit(threshold=2, window=3000, ban=3600, per=per, retry_extends_ban=False)
    app = make_app(clock=clock, login_rate_limit=limit)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://capi.test") as client:
        http = Http(client, app, capi_spec, validate_against)
        await http.register_login()  # login 1
        body = {"machine_id": MID, "password": "pw"}
        assert (await http.request("POST", "/v3/watchers/login", json=body)).status_code == 200  # login 2
        clock.now += 100
        first = await http.request("POST", "/v3/watchers/login", json=body)  # login 3: the ban starts
        ban_end = clock.now + 3600
        clock.now += 600
        again = await http.request("POST", "/v3/watchers/login", json=body)  # still banned, ban not extended
        wrong = await http.request("POST", "/v3/watchers/login", json={**body, "password": "bad"})  # banned first
        for r, left in ((first, 3600), (again, 3000), (wrong, 3000)):
            assert r.status_code == 403
            assert r.headers["Retry-After"] == str(left)
            payload = r.json()
            who = "this machine is" if per == "machine" else "this address is"
            assert payload["message"].startswith(f"too many logins: {who} banned from logging in until ")
            until = parse_timestamp(payload["message"].rsplit(" ", 1)[1])
            assert until.timestamp() == ban_end
            for text in (payload["message"], payload["errors"]):
                assert "password" not in text and "machine_id" not in text
            assert not _is_credentials_refusal(r)
        clock.now += 3000
        assert (await http.request("POST", "/v3/watchers/login", json=body)).status_code == 200
    assert app.state.emulator.internal_errors == 0


@pytest.mark.anyio
async def test_retry_after_follows_an_extended_ban(capi_spec: dict[str, Any], validate_against: Any) -> None:
    clock = Clock()
    app = make_app(clock=clock, login_rate_limit=LoginRateLimit(threshold=1, ban=3600, retry_extends_ban=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://capi.test") as client:
        http = Http(client, app, capi_spec, validate_against)
        await http.register_login()
        body = {"machine_id": MID, "password": "pw"}
        assert (await http.request("POST", "/v3/watchers/login", json=body)).headers["Retry-After"] == "3600"
        clock.now += 1800.5
        r = await http.request("POST", "/v3/watchers/login", json=body)  # the attempt restarts the hour
        assert r.status_code == 403 and r.headers["Retry-After"] == "3600"


# ---- 4. secrets stay out of reprs ---------------------------------------------------------------------------------


def test_config_and_machine_reprs_hold_no_secrets() -> None:
    from cscapi.emulator.state import EmulatorState

    config = EmulatorConfig(attachment_keys=["SecretAttachKey1"], admin_token="SecretAdminToken2", community_size=0)
    assert config.attachment_keys == ("SecretAttachKey1",)  # still there, just not shown
    for text in (repr(config), str(config)):
        assert "SecretAttachKey1" not in text and "SecretAdminToken2" not in text
    state = EmulatorState(config)
    machine = state.register(MID, "SecretPassword3")
    shown = repr(machine)
    assert MID in shown
    for secret in ("SecretPassword3", machine.password_hash, machine.password_salt):
        assert secret not in shown
    assert "SecretPassword3" not in json.dumps(machine.public(None))


# ---- 5. `cscapi emulator --help` builds its parser without the server stack ---------------------------------------

_HEAVY = (
    "starlette",
    "uvicorn",
    "httpx",
    "jsonschema",
    "sqlite3",
    "click",
    "rich",
    "cscapi.emulator.state",
    "cscapi.emulator.embedded",
    "cscapi.emulator.app",
    "cscapi.emulator.config",
)


def test_building_the_parser_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from cscapi.emulator.server import build_parser\n"
        "p = build_parser(); p.format_help(); p.parse_args(['--port', '0', '--fault', 'signals:error_rate=1'])\n"
        f"print(sorted(m for m in {_HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_module_help_lists_the_flags_and_exits_0() -> None:
    r = subprocess.run([sys.executable, "-m", "cscapi.emulator", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for flag in ("--port", "--state", "--attachment-key", "--fault", "--no-login-rate-limit"):
        assert flag in r.stdout


# ---- 3. several scenarios' decisions on one value; bounded durations ----------------------------------------------

SSH, HTTP = "crowdsecurity/ssh-bf", "crowdsecurity/http-probing"
V = "192.0.2.50"


def _new_by_scenario(stream: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for group in stream["new"]:
        out.setdefault(group["scenario"], set()).update(d["value"] for d in group["decisions"])
    return out


def _deleted(stream: dict[str, Any]) -> list[str]:
    return [v for group in stream["deleted"] for v in group["decisions"]]


async def _stream(http: Http, token: str, **params: Any) -> dict[str, Any]:
    r = await http.request("GET", "/v3/decisions/stream", params=params, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    http.validate(http.spec, "GetDecisionsStreamResponse", r.json())
    return dict(r.json())


@pytest.mark.anyio
async def test_two_scenarios_on_one_value_are_both_kept_and_counted(http: Http) -> None:
    r = await http.admin(
        "POST", "decisions", json={"decisions": [{"value": V, "scenario": SSH}, {"value": V, "scenario": HTTP}]}
    )
    assert r.status_code == 200
    assert (r.json()["added"], r.json()["replaced"]) == (2, 0)
    live = (await http.admin("GET", "decisions")).json()
    assert sorted((d["value"], d["scenario"]) for d in live) == [(V, HTTP), (V, SSH)]
    token = await http.register_login()
    assert _new_by_scenario(await _stream(http, token, startup="true")) == {SSH: {V}, HTTP: {V}}
    # the same value and scenario twice in one call is one decision; again later, a replacement
    same = {"decisions": [{"value": V, "scenario": SSH, "duration": "1h"}, {"value": V, "scenario": SSH}]}
    r = await http.admin("POST", "decisions", json=same)
    assert (r.json()["added"], r.json()["replaced"]) == (0, 1)
    assert len((await http.admin("GET", "decisions")).json()) == 2
    r = await http.admin("POST", "decisions", json={"decisions": [{"value": "192.0.2.51"}, {"value": "192.0.2.51"}]})
    assert (r.json()["added"], r.json()["replaced"]) == (1, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["delete", "expire"])
async def test_value_is_deleted_only_when_its_last_decision_goes(http: Http, how: str) -> None:
    await http.admin(
        "POST", "decisions", json={"decisions": [{"value": V, "scenario": SSH}, {"value": V, "scenario": HTTP}]}
    )
    token = await http.register_login()
    await _stream(http, token, startup="true")
    r = await http.admin("POST", f"decisions/{how}", json={"values": [V], "scenario": SSH})
    assert r.json() == {("deleted" if how == "delete" else "expired"): 1}
    delta = await _stream(http, token)
    assert _deleted(delta) == [] and _new_by_scenario(delta) == {}  # HTTP's decision still bans the value
    assert [d["scenario"] for d in (await http.admin("GET", "decisions")).json()] == [HTTP]
    r = await http.admin("POST", f"decisions/{how}", json={"values": [V]})
    delta = await _stream(http, token)
    assert _deleted(delta) == [V]
    # both removed between two pulls: the value is listed once
    await http.admin(
        "POST", "decisions", json={"decisions": [{"value": V, "scenario": SSH}, {"value": V, "scenario": HTTP}]}
    )
    await _stream(http, token)
    assert (await http.admin("POST", f"decisions/{how}", json={"values": [V]})).json() != {}
    assert _deleted(await _stream(http, token)) == [V]


@pytest.mark.anyio
async def test_decisions_running_out_one_after_the_other(capi_spec: dict[str, Any], validate_against: Any) -> None:
    clock = Clock()
    app = make_app(clock=clock, token_lifetime=86400)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://capi.test") as client:
        http = Http(client, app, capi_spec, validate_against)
        items = [{"value": V, "scenario": SSH, "duration": "1h"}, {"value": V, "scenario": HTTP, "duration": "2h"}]
        await http.admin("POST", "decisions", json={"decisions": items})
        token = await http.register_login()
        assert _new_by_scenario(await _stream(http, token, startup="true")) == {SSH: {V}, HTTP: {V}}
        clock.now += 3601
        assert _deleted(await _stream(http, token)) == []
        startup = await _stream(http, token, startup="true")
        assert _new_by_scenario(startup) == {HTTP: {V}}
        clock.now += 3600
        assert _deleted(await _stream(http, token)) == [V]
        # v2 (flat, per decision) follows the same rule
        login = {"machine_id": MID, "password": "pw", "scenarios": [SSH, HTTP]}  # the list is tailored to these
        r = await http.request("POST", "/v2/watchers/login", json=login)
        v2 = r.json()["token"]
        await http.admin("POST", "decisions", json={"decisions": items})
        await http.request("GET", "/v2/decisions/stream", params={"startup": "true"}, headers={"Authorization": v2})
        clock.now += 3601
        r = await http.request("GET", "/v2/decisions/stream", headers={"Authorization": v2})
        assert r.json()["deleted"] == []
        clock.now += 3600
        r = await http.request("GET", "/v2/decisions/stream", headers={"Authorization": v2})
        assert [(d["value"], d["scenario"]) for d in r.json()["deleted"]] == [(V, HTTP)]
    assert app.state.emulator.internal_errors == 0


def test_several_scenarios_survive_a_restart_and_old_files_migrate(tmp_path: Path) -> None:
    import sqlite3

    from cscapi.emulator.state import EmulatorState

    path = str(tmp_path / "state.db")
    state = EmulatorState(EmulatorConfig(community_size=0, state_path=path))
    state.add_decisions([{"value": V, "scenario": SSH}, {"value": V, "scenario": HTTP}, {"value": "192.0.2.60"}])
    state.remove_decisions(["192.0.2.60"])
    state.close()
    again = EmulatorState(EmulatorConfig(community_size=0, state_path=path))
    assert sorted(again.decisions) == [("ip", V, HTTP), ("ip", V, SSH)]
    assert list(again.tombstones) == [("ip", "192.0.2.60", "crowdsecurity/community-blocklist")]
    again.close()
    # a file from before decisions were keyed by scenario: PRIMARY KEY (scope, value), no scenario column
    conn = sqlite3.connect(path)
    rows = {t: conn.execute(f"SELECT scope, value, body FROM {t}").fetchall() for t in ("decisions", "tombstones")}
    for table in ("decisions", "tombstones"):
        conn.execute(f"DROP TABLE {table}")
        columns = "scope TEXT NOT NULL, value TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (scope, value)"
        conn.execute(f"CREATE TABLE {table} ({columns})")
    conn.executemany("INSERT INTO decisions VALUES (?, ?, ?)", rows["decisions"][:1])
    conn.executemany("INSERT INTO tombstones VALUES (?, ?, ?)", rows["tombstones"])
    conn.commit()
    conn.close()
    old = EmulatorState(EmulatorConfig(community_size=0, state_path=path))
    assert len(old.decisions) == 1 and len(old.tombstones) == 1
    old.add_decisions([{"value": V, "scenario": "x/y"}])  # the migrated table takes a third scenario on V
    old.close()
    assert len(EmulatorState(EmulatorConfig(community_size=0, state_path=path)).decisions) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "duration",
    ["99999999999h", 1e308, -5, "-1h", 0, "0s", "NaN", "Infinity", True, "soon", 10 * 365 * 86400 + 1, [1]],
    ids=repr,
)
async def test_absurd_admin_durations_are_400_naming_the_field(http: Http, duration: Any) -> None:
    raw = json.dumps({"decisions": [{"value": "192.0.2.70"}, {"value": V, "duration": duration}]})
    if duration in ("NaN", "Infinity"):  # the JSON literals Python's json reads as floats
        raw = raw.replace(f'"{duration}"', duration)
    r = await http.admin("POST", "decisions", content=raw)
    assert r.status_code == 400, r.text
    assert "decisions[1].duration" in r.json()["message"]
    assert (await http.admin("GET", "decisions")).json() == []  # nothing half-applied
    if isinstance(duration, str) and duration not in ("NaN", "Infinity"):
        r = await http.admin("PUT", "blocklists/b", json={"content": [V], "duration": duration})
        assert r.status_code == 400 and "blocklist duration" in r.json()["message"]


@pytest.mark.anyio
async def test_longest_admin_duration_is_accepted_and_listed(http: Http) -> None:
    r = await http.admin("POST", "decisions", json={"decisions": [{"value": V, "duration": "87600h"}]})
    assert r.status_code == 200
    (live,) = (await http.admin("GET", "decisions")).json()
    assert live["remaining"] == 87600 * 3600


@pytest.mark.anyio
@pytest.mark.parametrize(
    "fault",
    [{"latency": "NaN"}, {"token_lifetime": 1e308}, {"token_lifetime": "Infinity"}, {"retry_after": 10**12}],
    ids=repr,
)
async def test_absurd_fault_settings_are_400(http: Http, fault: dict[str, Any]) -> None:
    raw = json.dumps(fault).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    r = await http.admin("PUT", "faults/login", content=raw)
    assert r.status_code == 400, r.text
    assert next(iter(fault)) in r.json()["errors"]
    assert (await http.admin("GET", "faults")).json() == {}


def test_absurd_configured_durations_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="token_lifetime"):
        EmulatorConfig(token_lifetime=1e308)
    with pytest.raises(ConfigurationError, match="token_lifetime"):
        EmulatorConfig(token_lifetime=float("nan"))
    for name in ("ban", "window"):
        with pytest.raises(ConfigurationError, match=name):
            LoginRateLimit(**{name: 1e308})


# ---- over TCP: the audit's exact request against the real server --------------------------------------------------


def test_audit_request_over_tcp_is_a_400_error_response(capi_spec: dict[str, Any], validate_against: Any) -> None:
    from cscapi.emulator import EmbeddedEmulator

    config = EmulatorConfig(community_size=0, admin_token=ADMIN, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu, httpx.Client(base_url=emu.base_url, trust_env=False) as client:
        body = "[" * 100_000 + "]" * 100_000
        r = client.post("v3/watchers/login", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        validate_against(capi_spec, "ErrorResponse", r.json())
        assert "Traceback" not in r.text and "RecursionError" not in r.text
        r = client.post("admin/decisions", content=body, headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 400
        assert emu.state.internal_errors == 0


@pytest.mark.anyio
@pytest.mark.parametrize("scope", [1, ["ip"], {"a": 1}, True])
async def test_admin_decision_with_a_non_string_scope_is_400(http: Http, scope: Any) -> None:
    """Found by the admin fuzz test: a numeric scope used to reach the 500 handler (AttributeError)."""
    r = await http.admin("POST", "decisions", json={"decisions": [{"value": V, "scope": scope}]})
    assert r.status_code == 400 and "decisions[0].scope must be a string" in r.json()["message"]
