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
        r = await self.request("POST", "/v3/watchers/login", json={"machine_id": machine_id, "password": password})
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
