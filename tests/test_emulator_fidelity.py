"""Emulator fidelity found by running a real CrowdSec 1.4.6 (CAPI v2) against it: enrollment keys, v2 list deltas and
removals, a login ban that ends on time, and scenario tailoring by default. The v2 endpoints are driven with plain
httpx, as a v2 engine drives them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cscapi.emulator import EmulatorConfig, LoginRateLimit, create_app
from cscapi.emulator.community import ALL_SCENARIOS
from cscapi.emulator.server import build_parser, config_from_args

MID = "f" * 48
SSH = "crowdsecurity/ssh-bf"
ADMIN = "fidelity-admin"


class Clock:
    """A hand-driven clock (unix seconds)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Engine:
    """What a CrowdSec engine does over HTTP: register, log in with its scenarios, pull the stream."""

    def __init__(self, app: Any, api: str = "v2") -> None:
        self.http = httpx.Client(transport=_SyncASGI(app), base_url="http://capi.test")
        self.api = api
        self.token = ""

    def register_login(self, scenarios: list[str], machine_id: str = MID) -> httpx.Response:
        self.http.post(f"/{self.api}/watchers", json={"machine_id": machine_id, "password": "pw"})
        r = self.login(scenarios, machine_id)
        assert r.status_code == 200, r.text
        return r

    def login(self, scenarios: list[str], machine_id: str = MID) -> httpx.Response:
        body = {"machine_id": machine_id, "password": "pw", "scenarios": scenarios}
        r = self.http.post(f"/{self.api}/watchers/login", json=body)
        if r.status_code == 200:
            self.token = r.json()["token"]
        return r

    def pull(self, startup: bool = False) -> dict[str, Any]:
        params = {"startup": "true"} if startup else {}
        r = self.http.get(f"/{self.api}/decisions/stream", params=params, headers={"Authorization": self.token})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self.http.request(method, "/admin/" + path, headers={"Authorization": f"Bearer {ADMIN}"}, **kw)
        assert r.status_code < 400, r.text
        return r


class _SyncASGI(httpx.BaseTransport):
    """httpx's ASGI transport driven from synchronous code (a fresh event loop per request)."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        import asyncio

        async def run() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return asyncio.run(run())


def make(api: str = "v2", **kw: Any) -> tuple[Any, Engine, Clock]:
    clock = Clock()
    kw.setdefault("community_size", 0)
    kw.setdefault("login_rate_limit", LoginRateLimit(enabled=False))
    app = create_app(EmulatorConfig(admin_token=ADMIN, clock=clock, **kw))
    return app, Engine(app, api), clock


@pytest.fixture
def v2() -> Iterator[tuple[Any, Engine, Clock]]:
    app, engine, clock = make(token_lifetime=7 * 86400)
    yield app, engine, clock
    engine.http.close()
    assert app.state.emulator.internal_errors == 0


def lists_new(body: dict[str, Any]) -> set[tuple[str, str]]:
    return {(d["scenario"], d["value"]) for d in body["new"] if d["origin"] == "lists"}


def lists_deleted(body: dict[str, Any]) -> set[tuple[str, str]]:
    return {(d["scenario"], d["value"]) for d in body["deleted"] if d["origin"] == "lists"}


# ---- 1. enrollment keys -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["v3", "v2"])
def test_any_well_formed_attachment_key_is_accepted_by_default(api: str) -> None:
    app, engine, _ = make()
    engine.api = api
    engine.register_login([SSH])
    auth = {"Authorization": f"Bearer {engine.token}"}
    r = engine.http.post(f"/{api}/watchers/enroll", json={"attachment_key": "clxyz0AnyKey9", "name": "n"}, headers=auth)
    assert r.status_code == 202, r.text  # no key was configured: a well-formed one is enough
    r = engine.http.post(f"/{api}/watchers/enroll", json={"attachment_key": "not well-formed!"}, headers=auth)
    assert r.status_code == 400 and "attachment_key" in r.json()["message"]
    assert app.state.emulator.machines[MID].organization_id is not None


def test_only_listed_attachment_keys_from_config_flag_and_admin_api() -> None:
    _app, engine, _ = make(attachment_keys=["listed1"], only_listed_attachment_keys=True)
    engine.register_login([SSH])
    auth = {"Authorization": f"Bearer {engine.token}"}
    r = engine.http.post("/v3/watchers/enroll", json={"attachment_key": "other2"}, headers=auth)
    assert r.status_code == 403 and "listed" in r.json()["errors"]
    assert engine.http.post("/v3/watchers/enroll", json={"attachment_key": "listed1"}, headers=auth).status_code == 202
    # the admin API switches it off and on at run time
    assert engine.admin("PUT", "attachment-keys", json={"only_listed": False}).json()["only_listed"] is False
    body = {"attachment_key": "other2", "overwrite": True}
    assert engine.http.post("/v3/watchers/enroll", json=body, headers=auth).status_code == 202
    engine.admin("PUT", "attachment-keys", json={"only_listed": True})
    assert engine.http.post("/v3/watchers/enroll", json=body, headers=auth).status_code == 403
    r = engine.http.put(
        "/admin/attachment-keys", json={"only_listed": "yes"}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert r.status_code == 400
    # and the command line
    args = build_parser().parse_args(["--only-listed-attachment-keys", "--attachment-key", "k1"])
    config = config_from_args(args)
    assert config.only_listed_attachment_keys and list(config.attachment_keys) == ["k1"]
    assert not config_from_args(build_parser().parse_args([])).only_listed_attachment_keys


# ---- 3a/3b. v2 pulls: only changes, and removals as deleted entries ------------------------------------------------


def test_v2_value_removed_from_a_blocklist_reaches_the_engine_as_deleted(v2: tuple[Any, Engine, Clock]) -> None:
    _app, engine, _clock = v2
    engine.admin("PUT", "blocklists/tor", json={"content": ["192.0.2.1", "192.0.2.2", "198.51.100.0/24"]})
    engine.admin("PUT", "blocklists/other", json={"content": ["192.0.2.2"]})
    engine.register_login([SSH])
    first = engine.pull(startup=True)
    assert lists_new(first) == {
        ("tor", "192.0.2.1"),
        ("tor", "192.0.2.2"),
        ("tor", "198.51.100.0/24"),
        ("other", "192.0.2.2"),
    }
    engine.admin("PUT", "blocklists/tor", json={"content": ["192.0.2.2"]})
    delta = engine.pull()
    assert lists_deleted(delta) == {("tor", "192.0.2.1"), ("tor", "198.51.100.0/24")}
    (entry,) = [d for d in delta["deleted"] if d["value"] == "198.51.100.0/24"]
    assert entry["origin"] == "lists" and entry["type"] == "ban" and entry["scope"] == "Ip"  # the list's scope
    assert lists_new(delta) == set()  # 192.0.2.2 was sent already
    # 1.4.6 deletes every `lists` decision on a value: one still held by another list is not sent as deleted
    engine.admin("DELETE", "blocklists/tor")
    assert lists_deleted(engine.pull()) == set()
    engine.admin("DELETE", "blocklists/other")
    assert lists_deleted(engine.pull()) == {("other", "192.0.2.2")}
    assert engine.pull() == {"new": [], "deleted": []}


def test_v2_pulls_send_only_what_changed_and_startup_sends_everything(v2: tuple[Any, Engine, Clock]) -> None:
    _app, engine, clock = v2
    engine.admin(
        "POST", "decisions", json={"decisions": [{"value": "203.0.113.1", "scenario": SSH, "duration": "48h"}]}
    )
    engine.admin("PUT", "blocklists/tor", json={"content": ["192.0.2.1"], "duration": "24h"})
    engine.register_login([SSH])
    first = engine.pull(startup=True)
    assert {d["value"] for d in first["new"]} == {"203.0.113.1", "192.0.2.1"}
    assert engine.pull() == {"new": [], "deleted": []}  # nothing changed: nothing re-sent
    engine.admin("PUT", "blocklists/tor", json={"content": ["192.0.2.1", "192.0.2.9"], "duration": "24h"})
    engine.admin("POST", "decisions", json={"decisions": [{"value": "203.0.113.2", "scenario": SSH, "duration": "1h"}]})
    delta = engine.pull()
    assert {(d["origin"], d["value"]) for d in delta["new"]} == {("lists", "192.0.2.9"), ("CAPI", "203.0.113.2")}
    again = engine.pull(startup=True)  # an engine restart: the whole state again
    assert {d["value"] for d in again["new"]} == {"203.0.113.1", "203.0.113.2", "192.0.2.1", "192.0.2.9"}
    # a list entry is sent again before the engine's copy (24h from when it was sent) runs out
    clock.now += 20 * 3600
    assert lists_new(engine.pull()) == set()
    clock.now += 2 * 3600
    assert lists_new(engine.pull()) == {("tor", "192.0.2.1"), ("tor", "192.0.2.9")}
    assert lists_new(engine.pull()) == set()


def test_v2_list_positions_survive_a_restart(tmp_path: Any) -> None:
    path = str(tmp_path / "emu.db")
    app, engine, _ = make(state_path=path)
    engine.admin("PUT", "blocklists/tor", json={"content": ["192.0.2.1", "192.0.2.2"]})
    engine.register_login([SSH])
    engine.pull(startup=True)
    app.state.emulator.close()
    app2, engine2, _ = make(state_path=path)
    engine2.token = engine.token
    engine2.admin("PUT", "blocklists/tor", json={"content": ["192.0.2.2"]})
    body = engine2.pull()
    assert lists_new(body) == set() and lists_deleted(body) == {("tor", "192.0.2.1")}
    app2.state.emulator.close()


# ---- 3c. a login ban ends on time --------------------------------------------------------------------------------


def test_a_login_during_a_ban_does_not_push_its_end_back() -> None:
    _app, engine, clock = make(login_rate_limit=LoginRateLimit(threshold=1, ban=3600))
    engine.register_login([SSH])
    refused = engine.login([SSH])
    assert refused.status_code == 403 and refused.headers["retry-after"] == "3600"
    for _ in range(2):  # an engine retrying every 20 minutes
        clock.now += 1200
        r = engine.login([SSH])
        assert r.status_code == 403
        assert int(r.headers["retry-after"]) == 3600 - (clock.now - 1_800_000_000)
    clock.now += 1199
    assert engine.login([SSH]).status_code == 403
    clock.now += 1
    assert engine.login([SSH]).status_code == 200  # the hour is over: it recovers on its own
    assert LoginRateLimit().retry_extends_ban is False


# ---- 3d. scenario tailoring by default ---------------------------------------------------------------------------


def test_the_community_list_is_tailored_to_the_login_scenarios_by_default() -> None:
    assert EmulatorConfig().tailor_to_scenarios is True
    for api in ("v3", "v2"):
        app, engine, _ = make(community_size=200, seed=4, api=api)
        engine.api = api
        engine.register_login([])  # an engine with no scenarios (the 1.4.6 bug) gets nothing, as from real CAPI
        body = engine.pull(startup=True)
        assert body["new"] == []
        engine.register_login([SSH], machine_id="e" * 48)
        body = engine.pull(startup=True)
        scenarios = {g["scenario"] for g in body["new"]} if api == "v3" else {d["scenario"] for d in body["new"]}
        assert scenarios == {SSH}
        expected = sum(1 for d in app.state.emulator.decisions.values() if d.scenario == SSH)
        got = sum(len(g["decisions"]) for g in body["new"]) if api == "v3" else len(body["new"])
        assert got == expected > 0
        engine.register_login(list(ALL_SCENARIOS), machine_id="d" * 48)
        body = engine.pull(startup=True)
        got = sum(len(g["decisions"]) for g in body["new"]) if api == "v3" else len(body["new"])
        assert got == 200


def test_tailoring_can_be_turned_off() -> None:
    _app, engine, _ = make(community_size=50, tailor_to_scenarios=False)
    engine.register_login([])
    assert len(engine.pull(startup=True)["new"]) == 50
    assert config_from_args(build_parser().parse_args(["--no-tailor-to-scenarios"])).tailor_to_scenarios is False
    assert config_from_args(build_parser().parse_args([])).tailor_to_scenarios is True


def test_community_scenarios_generate_a_list_of_declared_scenarios_only() -> None:
    config = config_from_args(build_parser().parse_args(["--community-scenario", SSH, "--community-scenario", "a/b"]))
    assert config.community_scenarios == (SSH, "a/b")
    app, _engine, _ = make(community_size=100, seed=2, community_scenarios=[SSH, "a/b"])
    assert {d.scenario for d in app.state.emulator.decisions.values()} == {SSH, "a/b"}
    reference = create_app(EmulatorConfig(community_size=100, seed=2)).state.emulator
    assert sorted(k[1] for k in app.state.emulator.decisions) == sorted(k[1] for k in reference.decisions)
