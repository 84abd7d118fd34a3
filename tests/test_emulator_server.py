"""The emulator as a real server: EmbeddedEmulator (sync and inside a running loop), the admin client, every fault
over real TCP, and ``python -m cscapi.emulator`` as a subprocess stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi.emulator import EmbeddedEmulator, EmulatorAdminClient, EmulatorAdminError, EmulatorConfig, LoginRateLimit
from cscapi.emulator.community import ALL_SCENARIOS

MID = "e" * 48
SIGNAL = {
    "scenario": "crowdsecurity/ssh-bf",
    "scenario_hash": "h",
    "scenario_version": "0.1",
    "message": "m",
    "source": {"scope": "ip", "value": "192.0.2.1"},
    "start_at": "2026-11-21T22:28:19Z",
    "stop_at": "2026-11-21T22:28:20Z",
}


def config(**kw: Any) -> EmulatorConfig:
    kw.setdefault("community_size", 100)
    kw.setdefault("login_rate_limit", LoginRateLimit(enabled=False))
    kw.setdefault("attachment_keys", ["key1"])
    return EmulatorConfig(**kw)


@pytest.fixture(scope="module")
def emu() -> Iterator[EmbeddedEmulator]:
    with EmbeddedEmulator(config()) as running:
        yield running


@pytest.fixture
def fresh(emu: EmbeddedEmulator) -> Iterator[EmbeddedEmulator]:
    emu.admin.reset()
    yield emu
    emu.admin.clear_faults()
    assert emu.state.internal_errors == 0


def login(client: httpx.Client, machine_id: str = MID, password: str = "pw") -> str:
    client.post("v3/watchers", json={"machine_id": machine_id, "password": password})
    body = {"machine_id": machine_id, "password": password, "scenarios": [*ALL_SCENARIOS, "a/b"]}
    r = client.post("v3/watchers/login", json=body)  # the community list is tailored to these
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def test_embedded_serves_on_a_free_loopback_port(fresh: EmbeddedEmulator) -> None:
    assert fresh.base_url.startswith("http://127.0.0.1:") and fresh.base_url.endswith("/")
    assert fresh.port > 0
    with httpx.Client(base_url=fresh.base_url) as client:
        token = login(client)
        r = client.get("v3/decisions/stream", params={"startup": "true"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert sum(len(g["decisions"]) for g in r.json()["new"]) == 100


def test_start_stop_is_quick_and_clean() -> None:
    t0 = time.monotonic()
    emu = EmbeddedEmulator(config(community_size=10)).start()
    url = emu.base_url
    with httpx.Client(base_url=url) as client:  # a kept-alive connection must not block the stop
        assert client.post("v3/watchers", json={"machine_id": MID, "password": "p"}).status_code == 200
        emu.stop()
    assert time.monotonic() - t0 < 5
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "v3/decisions/stream")
    with pytest.raises(RuntimeError):
        _ = emu.base_url
    with pytest.raises(RuntimeError):
        emu.start()


def test_embedded_inside_a_running_event_loop() -> None:
    async def main() -> int:
        with EmbeddedEmulator(config(community_size=5)) as emu:
            async with httpx.AsyncClient(base_url=emu.base_url) as client:
                r = await client.post("v3/watchers", json={"machine_id": MID, "password": "p"})
                return r.status_code

    assert asyncio.run(main()) == 200


# ---- the admin API ------------------------------------------------------------------------------------------------


def test_admin_needs_the_admin_token(fresh: EmbeddedEmulator) -> None:
    r = httpx.get(fresh.base_url + "admin/state")
    assert r.status_code == 401 and set(r.json()) == {"message", "errors"}
    with EmulatorAdminClient(fresh.base_url, "wrong") as bad, pytest.raises(EmulatorAdminError) as info:
        bad.state()
    assert info.value.status_code == 401
    assert fresh.admin_token not in repr(fresh.admin) and fresh.admin_token not in str(info.value)


def test_admin_inspects_what_was_received(fresh: EmbeddedEmulator) -> None:
    admin = fresh.admin
    with httpx.Client(base_url=fresh.base_url) as client:
        t1 = login(client, MID)
        t2 = login(client, "f" * 48)
        h1 = {"Authorization": f"Bearer {t1}"}
        client.post("v3/signals", headers=h1, json=[SIGNAL, {**SIGNAL, "scenario": "crowdsecurity/http-probing"}])
        client.post("v3/signals", headers={"Authorization": t2}, json=[SIGNAL])
        client.post("v3/metrics/", headers=h1, json={"bouncers": [], "machines": [{"name": "a"}]})
        client.post("v3/usage-metrics", headers=h1, json={"lapi": {"version": "1", "utc_startup_timestamp": 1}})
        client.post("v3/decisions/delete", headers=h1, json=["u-1"])
        client.post("v3/decisions/sync", headers=h1, json=[SIGNAL])
        assert (
            client.post("v3/watchers/enroll", headers=h1, json={"attachment_key": "key1", "name": "n"}).status_code
            == 202
        )
    assert len(admin.signals()) == 3
    assert len(admin.signals(machine_id=MID)) == 2
    assert [s["signal"]["scenario"] for s in admin.signals(scenario="crowdsecurity/http-probing")] == [
        "crowdsecurity/http-probing"
    ]
    assert len(admin.signals(machine_id=MID, scenario="crowdsecurity/ssh-bf")) == 1
    machines = {m["machine_id"]: m for m in admin.machines()}
    assert set(machines) == {MID, "f" * 48}
    assert machines[MID]["login_count"] == 1 and machines[MID]["enrolled"] and machines[MID]["signals"] == 2
    assert len(admin.logins(MID)) == 1
    assert admin.machine(MID)["organization_id"].startswith("org")
    with pytest.raises(EmulatorAdminError) as info:
        admin.machine("nobody")
    assert info.value.status_code == 404
    assert admin.enrollments()[0]["name"] == "n"
    assert admin.metrics(MID)[0]["body"]["machines"] == [{"name": "a"}]
    assert admin.usage_metrics()[0]["body"]["lapi"]["version"] == "1"
    assert admin.deleted_decisions_received()[0]["body"] == ["u-1"]
    assert len(admin.synced_decisions_received()) == 1
    counts = admin.requests()
    assert counts["signals"] == {"200": 2} and counts["enroll"] == {"202": 1}
    summary = admin.state()
    assert summary["signals"] == 3 and summary["machines"] == 2 and summary["internal_errors"] == 0
    password_bits = json.dumps(admin.machines())
    assert "password" not in password_bits


def test_admin_drives_decisions_and_lists(fresh: EmbeddedEmulator) -> None:
    admin = fresh.admin
    with httpx.Client(base_url=fresh.base_url) as client:
        h = {"Authorization": f"Bearer {login(client)}"}
        client.get("v3/decisions/stream", params={"startup": "true"}, headers=h)
        assert admin.add_decision("192.0.2.200", duration="2h") == 1
        assert admin.add_decisions([{"value": "2001:db8::/64", "scenario": "a/b"}]) == 1
        old = [d["value"] for d in admin.decisions()[:2]]
        assert admin.expire_decisions([old[0]]) == 1
        assert admin.delete_decisions([old[1], "203.0.113.254"]) == 1
        published = admin.publish_blocklist("crowdsec/tor", ["192.0.2.5", "192.0.2.6"], duration="12h")
        assert published["content"] == ["192.0.2.5", "192.0.2.6"]
        admin.publish_allowlist(
            "office",
            ["203.0.113.9", {"value": "2001:db8::9", "expiration": "2030-01-01T00:00:00Z"}],
            description="ours",
        )
        delta = client.get("v3/decisions/stream", headers=h).json()
        new = {d["value"] for g in delta["new"] for d in g["decisions"]}
        assert new == {"192.0.2.200", "2001:db8::/64"}
        assert {v for g in delta["deleted"] for v in g["decisions"]} == set(old)
        bl = delta["links"]["blocklists"][0]
        assert bl["name"] == "crowdsec/tor" and bl["url"].startswith(fresh.base_url)
        assert httpx.get(bl["url"]).text == "192.0.2.5\n192.0.2.6\n"
        lines = httpx.get(delta["links"]["allowlists"][0]["url"]).text.splitlines()
        assert json.loads(lines[1])["expiration"] == "2030-01-01T00:00:00Z"
        assert [b["name"] for b in admin.blocklists()] == ["crowdsec/tor"]
        assert admin.allowlists()[0]["description"] == "ours"
        admin.remove_blocklist("crowdsec/tor")
        admin.remove_allowlist("office")
        assert httpx.get(bl["url"]).status_code == 404
        with pytest.raises(EmulatorAdminError):
            admin.remove_blocklist("crowdsec/tor")
        with pytest.raises(EmulatorAdminError) as info:
            admin.publish_blocklist("x", ["not an ip"])
        assert info.value.status_code == 400 and "content[0]" in str(info.value)
        with pytest.raises(EmulatorAdminError):
            admin.add_decision("nope")
        later = client.get("v3/decisions/stream", headers=h).json()
        assert later["links"] == {"blocklists": [], "allowlists": []}


def test_admin_machines_tokens_bans_and_keys(fresh: EmbeddedEmulator) -> None:
    admin = fresh.admin
    admin.create_machine(MID, "pw")
    with httpx.Client(base_url=fresh.base_url) as client:
        r = client.post("v3/watchers/login", json={"machine_id": MID, "password": "pw"})
        token = r.json()["token"]
        h = {"Authorization": f"Bearer {token}"}
        assert client.post("v3/signals", headers=h, json=[]).status_code == 200
        assert admin.expire_tokens(MID) == 1
        r = client.post("v3/signals", headers=h, json=[])
        assert r.status_code == 401
        admin.only_listed_attachment_keys(True)  # (any well-formed key is accepted by default)
        assert (
            client.post(
                "v3/watchers/enroll", headers={"Authorization": login(client)}, json={"attachment_key": "newkey"}
            ).status_code
            == 403
        )
        admin.add_attachment_key("newkey")
        assert (
            client.post(
                "v3/watchers/enroll", headers={"Authorization": login(client)}, json={"attachment_key": "newkey"}
            ).status_code
            == 202
        )
    admin.clear_login_bans()
    with pytest.raises(EmulatorAdminError):
        admin.create_machine("bad id", "pw")


# ---- faults over real TCP -----------------------------------------------------------------------------------------


def test_fault_5xx_and_429_with_retry_after(fresh: EmbeddedEmulator) -> None:
    admin = fresh.admin
    with httpx.Client(base_url=fresh.base_url) as client:
        h = {"Authorization": f"Bearer {login(client)}"}
        admin.set_fault("signals", error_rate=1.0, error_status=503, remaining=2)
        statuses = [client.post("v3/signals", headers=h, json=[SIGNAL]).status_code for _ in range(3)]
        assert statuses == [503, 503, 200]
        admin.set_fault("decisions_stream", rate_limit_rate=1.0, retry_after=42)
        r = client.get("v3/decisions/stream", headers=h)
        assert r.status_code == 429 and r.headers["retry-after"] == "42"
        assert set(r.json()) == {"message", "errors"}
        assert admin.faults()["decisions_stream"]["retry_after"] == 42
        admin.clear_fault("decisions_stream")
        assert client.get("v3/decisions/stream", headers=h).status_code == 200
        admin.set_fault("*", error_rate=1.0)
        assert client.post("v3/metrics", headers=h, json={"bouncers": [], "machines": []}).status_code == 500
        assert (
            httpx.get(
                fresh.base_url + "admin/state", headers={"Authorization": f"Bearer {fresh.admin_token}"}
            ).status_code
            == 200
        )
    assert admin.requests()["signals"] == {"503": 2, "200": 1}


def test_fault_latency(fresh: EmbeddedEmulator) -> None:
    fresh.admin.set_fault("register", latency=0.3)
    t0 = time.monotonic()
    r = httpx.post(fresh.base_url + "v3/watchers", json={"machine_id": MID, "password": "p"})
    assert r.status_code == 200
    assert time.monotonic() - t0 >= 0.3


def test_fault_dropped_connection(fresh: EmbeddedEmulator) -> None:
    fresh.admin.set_fault("login", drop_rate=1.0, remaining=1)
    with httpx.Client(base_url=fresh.base_url) as client:
        client.post("v3/watchers", json={"machine_id": MID, "password": "p"})
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("v3/watchers/login", json={"machine_id": MID, "password": "p"})
        assert client.post("v3/watchers/login", json={"machine_id": MID, "password": "p"}).status_code == 200
    assert fresh.admin.requests()["login"] == {"0": 1, "200": 1}


def test_fault_tokens_expire_early(fresh: EmbeddedEmulator) -> None:
    fresh.admin.set_fault("login", token_lifetime=0.5)
    with httpx.Client(base_url=fresh.base_url) as client:
        token = login(client)
        h = {"Authorization": f"Bearer {token}"}
        assert client.get("v3/decisions/stream", headers=h).status_code == 200
        time.sleep(0.6)
        r = client.get("v3/decisions/stream", headers=h)
        assert r.status_code == 401 and "expired" in r.json()["message"]


def test_download_faults(fresh: EmbeddedEmulator) -> None:
    fresh.admin.publish_blocklist("b", ["192.0.2.1"])
    fresh.admin.set_fault("blocklist_download", error_rate=1.0, error_status=502)
    list_id = fresh.state.list_id("b")
    assert httpx.get(f"{fresh.base_url}downloads/blocklists/{list_id}").status_code == 502


def test_admin_rejects_bad_faults(fresh: EmbeddedEmulator) -> None:
    with pytest.raises(EmulatorAdminError) as info:
        fresh.admin.set_fault("nowhere", error_rate=1.0)
    assert info.value.status_code == 400
    with pytest.raises(EmulatorAdminError):
        fresh.admin.set_fault("signals", error_rate=3)
    with pytest.raises(EmulatorAdminError):
        fresh.admin.set_fault("signals", bogus=1)


def test_login_rate_limit_over_tcp() -> None:
    with (
        EmbeddedEmulator(config(community_size=0, login_rate_limit=LoginRateLimit(threshold=2))) as emu,
        httpx.Client(base_url=emu.base_url) as client,
    ):
        client.post("v3/watchers", json={"machine_id": MID, "password": "p"})
        statuses = [
            client.post("v3/watchers/login", json={"machine_id": MID, "password": "p"}).status_code for _ in range(4)
        ]
        assert statuses == [200, 200, 403, 403]
        assert emu.admin.machine(MID)["login_banned_until"] is not None
        emu.admin.clear_login_bans()
        assert client.post("v3/watchers/login", json={"machine_id": MID, "password": "p"}).status_code == 200


# ---- python -m cscapi.emulator ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_subprocess_serves_over_tcp_and_exits_cleanly(free_tcp_port: int, tmp_path: Path, stop_signal: int) -> None:
    state = tmp_path / "state.db"
    cmd = [
        sys.executable,
        "-m",
        "cscapi.emulator",
        "--port",
        str(free_tcp_port),
        "--seed",
        "3",
        "--community-size",
        "50",
        "--admin-token",
        "adm1n",
        "--no-login-rate-limit",
        "--state",
        str(state),
        "--attachment-key",
        "k1",
        "--fault",
        "metrics:error_rate=1,error_status=504",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        base_url = f"http://127.0.0.1:{free_tcp_port}/"
        assert base_url in first, first
        second = proc.stdout.readline() if proc.stdout else ""
        assert "adm1n" in second
        with httpx.Client(base_url=base_url) as client:
            token = login(client)
            h = {"Authorization": f"Bearer {token}"}
            r = client.get("v3/decisions/stream", params={"startup": "true"}, headers=h)
            assert sum(len(g["decisions"]) for g in r.json()["new"]) == 50
            assert client.post("v3/metrics", headers=h, json={"bouncers": [], "machines": []}).status_code == 504
            assert client.post("v3/watchers/enroll", headers=h, json={"attachment_key": "k1"}).status_code == 202
        with EmulatorAdminClient(base_url, "adm1n") as admin:
            assert admin.machine(MID)["enrolled"]
    finally:
        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped" in out
    assert state.exists()


def test_main_reports_configuration_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from cscapi.emulator.server import main

    assert main(["--fault", "nowhere:error_rate=1", "--port", "0"]) == 2
    assert "unknown fault endpoint" in capsys.readouterr().err
    assert main(["--config", "/nonexistent/emu.toml"]) == 2


def test_concurrent_senders_with_sqlite_state_lose_nothing(tmp_path: Path) -> None:
    import threading
    import uuid as uuid_mod

    path = str(tmp_path / "emu.db")
    cfg = config(community_size=10, state_path=path)
    with EmbeddedEmulator(cfg) as emu, httpx.Client(base_url=emu.base_url) as setup:
        tokens = [login(setup, f"{i}" * 48) for i in range(1, 5)]

        def send(token: str) -> None:
            with httpx.Client(base_url=emu.base_url, headers={"Authorization": token}) as client:
                for _ in range(10):
                    batch = [{**SIGNAL, "uuid": str(uuid_mod.uuid4())} for _ in range(50)]
                    assert client.post("v3/signals", json=batch).status_code == 200

        threads = [threading.Thread(target=send, args=(t,)) for t in tokens]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert emu.admin.state()["signals"] == 2000
    with EmbeddedEmulator(config(community_size=10, state_path=path)) as again:
        received = again.admin.signals()
        assert len(received) == 2000
        assert len({r["signal"]["uuid"] for r in received}) == 2000
        assert {m["machine_id"]: m["signals"] for m in again.admin.machines()} == {
            f"{i}" * 48: 500 for i in range(1, 5)
        }
