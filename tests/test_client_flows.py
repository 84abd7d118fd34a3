"""Client flows against a scripted CAPI (httpx.MockTransport) and a real SQLite SQLStorage, sync AND async.

Every test body runs twice (``mode``: the blocking ``CAPIClient`` and the ``AsyncCAPIClient``), so both drivers of
the one core are held to the same behaviour. Pauses are recorded, not slept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi.errors import (
    AuthenticationError,
    ConfigurationError,
    LoginBannedError,
    NotFoundError,
    RequestRejectedError,
    ServerError,
    TransportError,
    ValidationError,
)
from cscapi.models import EnrollStatus, SendReport
from cscapi.sql_storage import SQLStorage
from cscapi.timeutil import utcnow
from cscapi.utils import create_signal, generate_machine_id, generate_machine_id_from_key
from test_client_support import SCENARIOS, Api, FakeCAPI, make_config

M1 = generate_machine_id_from_key("host-1", prefix="test")
M2 = generate_machine_id_from_key("host-2", prefix="test")


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLStorage]:
    store = SQLStorage(f"sqlite:///{tmp_path / 'cscapi.db'}")
    yield store
    store.close()


@pytest.fixture
def fake(capi_spec: dict[str, Any], lapi_spec: dict[str, Any]) -> FakeCAPI:
    return FakeCAPI(capi_spec=capi_spec, lapi_spec=lapi_spec)


@pytest.fixture
def api(mode: str, storage: SQLStorage, fake: FakeCAPI) -> Iterator[Api]:
    client = Api(mode, storage, make_config(fake))
    yield client
    client.close()


def signals(n: int, machine_id: str = M1, scenario: str = "crowdsecurity/ssh-bf", start: int = 0) -> list[Any]:
    return [
        create_signal(f"192.0.2.{(start + i) % 250}", scenario, machine_id=machine_id, decision_type="ban")
        for i in range(n)
    ]


# ---- the happy path ----------------------------------------------------------------------------------------


def test_add_and_send_registers_logs_in_and_sends(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    assert api.add_signals(signals(3, M1) + signals(2, M2)) == 5
    report = api.send_signals()
    assert isinstance(report, SendReport) and report == 5 and int(report) == 5 and report.batches == 2
    assert fake.count("/v3/watchers") == 2 and fake.count("/v3/watchers/login") == 2
    assert fake.count("/v3/metrics") == 2  # after each login, as the official clients do
    assert len(fake.signals) == 5
    assert {s["machine_id"] for s in fake.signals} == {M1, M2}
    for seen in fake.calls("/v3/signals"):
        assert seen.headers["authorization"].startswith("Bearer ")
        assert seen.headers["user-agent"].startswith("capi-py-sdk/")
        assert fake.tokens[seen.headers["authorization"][7:]] == seen.body[0]["machine_id"]
    login = fake.calls("/v3/watchers/login")[0].body
    assert login["scenarios"] == SCENARIOS
    counts = storage.count_signals()
    assert (counts.queued, counts.claimed, counts.sent) == (0, 0, 0)  # prune_after_send deleted them
    m1 = storage.get_machine_by_id(M1)
    assert m1 is not None and m1.registered and m1.token and m1.password and len(m1.password) == 64
    # nothing left: a second call sends nothing and makes no request
    before = len(fake.requests)
    assert api.send_signals() == 0
    assert len(fake.requests) == before


def test_same_uuid_is_queued_once_and_keep_sent_when_asked(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    batch = signals(4)
    assert api.add_signals(batch) == 4
    assert api.add_signals(batch) == 0
    assert all(s.alert_id is not None for s in batch)
    assert api.send_signals(prune_after_send=False) == 4
    assert storage.count_signals().sent == 4
    assert len(fake.signals) == 4
    api.add_signals(signals(2, start=10))
    assert api.send_signals() == 2
    counts = storage.count_signals()
    assert counts.sent == 4 and counts.queued == 0  # pruning deletes what this call sent, not the history kept before


def test_add_signals_validates_everything_first(api: Api, storage: SQLStorage) -> None:
    good = signals(2)
    bad = create_signal("192.0.2.1", "a/b", machine_id=M1)
    bad.source.value = "not an ip"  # type: ignore[union-attr]
    with pytest.raises(ValidationError) as info:
        api.add_signals([*good, bad])
    assert info.value.field == "signals[2].source.value"
    assert storage.count_signals().queued == 0  # nothing stored


def test_batches_are_capped_at_250_and_configurable(api: Api, fake: FakeCAPI) -> None:
    api.add_signals(signals(600))
    assert api.send_signals() == 600
    sizes = [len(r.body) for r in fake.calls("/v3/signals")]
    assert sizes == [250, 250, 100]
    assert all(r.gzipped for r in fake.calls("/v3/signals"))  # > 5 KiB bodies go gzipped
    api.add_signals(signals(10, start=600))
    assert api.send_signals(batch_size=4) == 10
    assert [len(r.body) for r in fake.calls("/v3/signals")][3:] == [4, 4, 2]
    api.add_signals(signals(300, start=700))
    assert api.send_signals(batch_size=5000) == 300  # the legacy fetch size: capped at 250 per POST
    assert [len(r.body) for r in fake.calls("/v3/signals")][6:] == [250, 50]
    with pytest.raises(ConfigurationError):
        api.send_signals(batch_size=0)
    with pytest.raises(ConfigurationError):
        make_config(fake, batch_size=0)


# ---- 400: bisect and quarantine -----------------------------------------------------------------------------


def test_a_bad_signal_is_isolated_and_quarantined(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    good = signals(15)
    bad = signals(1, scenario="bad/signal", start=100)
    api.add_signals(good[:7] + bad + good[7:])
    report = api.send_signals()
    assert report.sent == 15 and report.quarantined == 1 and report.failed_machines == {}
    assert len(fake.signals) == 15 and all(s["scenario"] != "bad/signal" for s in fake.signals)
    posts = fake.count("/v3/signals")
    assert posts <= 2 * 5 + 1  # bisection: about 2 * log2(16) requests, not one per signal
    (quarantined, reason), *rest = storage.list_quarantined()
    assert not rest and quarantined.uuid == bad[0].uuid
    assert "invalid signal" in reason and "400" in reason
    # the queue is not blocked: the next run sends new signals and does not retry the quarantined one
    api.add_signals(signals(2, start=200))
    assert api.send_signals() == 2


def _legacy_unvalidated(n: int, start: int) -> list[Any]:
    """Signals an older caller queued through the 0.7.0 ``update_or_create_signal`` (no validation): no
    ``start_at``, which CAPI requires. They pass nothing of the client's checks at send time either."""
    out = signals(n, start=start)
    for signal in out:
        signal.start_at = None
    return out


def test_a_refused_batch_is_split_and_only_the_refused_signals_quarantined_by_the_emulator(
    mode: str, storage: SQLStorage
) -> None:
    """End to end against the emulator (which answers 400 naming the invalid item): the batch is bisected, the two
    signals the emulator refuses are quarantined with its reason, the 15 others are received exactly once."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    config = EmulatorConfig(seed=1, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu:
        api = Api(mode, storage, make_config(None, base_url=emu.base_url))
        good = signals(15)
        bad = _legacy_unvalidated(2, start=100)
        api.add_signals(good[:7])
        storage.update_or_create_signal(bad[0])
        api.add_signals(good[7:12])
        storage.update_or_create_signal(bad[1])
        api.add_signals(good[12:])
        report = api.send_signals()
        inbox = emu.admin.signals()
        posts = emu.admin.requests()["signals"]
        quarantined = storage.list_quarantined()
        api.add_signals(signals(2, start=200))  # the queue is not blocked, the quarantined ones stay aside
        again = api.send_signals()
        api.close()
    assert report.sent == 15 and report.quarantined == 2 and report.failed_machines == {}
    assert sorted(r["signal"]["uuid"] for r in inbox) == sorted(str(s.uuid) for s in good)
    assert sorted(str(q.uuid) for q, _ in quarantined) == sorted(str(s.uuid) for s in bad)
    for _, reason in quarantined:
        assert reason.startswith("400 invalid signal") and "start_at" in reason
    # bisection: at most 2 POSTs per level of halving per refused signal (2 * 2 * ceil(log2 17) + 1), not 1 per signal
    assert posts["400"] >= 2 and sum(posts.values()) <= 21
    assert again.sent == 2 and again.quarantined == 0


def test_the_fake_and_the_emulator_answer_signals_posts_alike(capi_spec: dict[str, Any]) -> None:
    """The statuses the send path relies on, from the fake CAPI and from the emulator: 200 for a valid batch, a 400
    ``ErrorResponse`` whose message says ``invalid signal`` for a batch with one refused item (the client bisects),
    400 for more than 250 items, 401 without a valid token (the client logs in again)."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit
    from cscapi.protocol.wire import signals_to_wire

    fake = FakeCAPI(capi_spec=capi_spec)
    machine, password = M1, "a-password"
    good = signals_to_wire(signals(3))
    fake_bad = signals_to_wire(signals(1, scenario=fake.bad_scenario, start=50))  # what the fake refuses
    emulator_bad = signals_to_wire(_legacy_unvalidated(1, start=50))  # what the emulator refuses
    many = signals_to_wire(signals(251))

    def answers(http: httpx.Client, bad: list[dict[str, Any]]) -> list[tuple[int, bool, str]]:
        assert http.post("v3/watchers", json={"machine_id": machine, "password": password}).status_code == 200
        login = http.post("v3/watchers/login", json={"machine_id": machine, "password": password, "scenarios": []})
        auth = {"Authorization": f"Bearer {login.json()['token']}"}
        out = []
        for body, headers in [
            (good, auth),
            (good[:1] + bad + good[1:], auth),
            (many, auth),
            (good, {"Authorization": "Bearer not-a-token"}),
        ]:
            r = http.post("v3/signals", json=body, headers=headers)
            shape = r.status_code == 200 or (isinstance(r.json(), dict) and "message" in r.json())
            out.append((r.status_code, shape, str(r.json().get("message", ""))[:14]))
        return out

    with httpx.Client(transport=fake.transport, base_url="http://capi.test/") as http:
        from_fake = answers(http, fake_bad)
    config = EmulatorConfig(seed=1, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu, httpx.Client(base_url=emu.base_url, trust_env=False) as http:
        from_emulator = answers(http, emulator_bad)
    assert [(status, shape) for status, shape, _ in from_fake] == [(200, True), (400, True), (400, True), (401, True)]
    assert [(status, shape) for status, shape, _ in from_emulator] == [(s, sh) for s, sh, _ in from_fake]
    assert from_fake[1][2] == from_emulator[1][2] == "invalid signal"


# ---- retries and failing machines -------------------------------------------------------------------------


def test_persistent_500_is_bounded_and_marks_the_machine_failing(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    api.add_signals(signals(3, M1) + signals(2, M2))
    fake.script("/v3/signals", *([503] * 4))  # M1's batch: 1 try + 3 retries, all 503
    report = api.send_signals()
    assert report.sent == 2 and list(report.failed_machines) == [M1]
    assert "503" in report.failed_machines[M1]
    assert fake.count("/v3/signals") == 5  # 4 for M1, 1 for M2: no infinite loop
    assert len(api.sleeps) == 3
    m1 = storage.get_machine_by_id(M1)
    assert m1 is not None and m1.is_failing and m1.failing_until is not None and m1.failing_until > utcnow()
    counts = storage.count_signals(M1)
    assert counts.queued == 3 and counts.claimed == 0  # released, not lost
    # while it cools down, M1's signals are not retried
    before = fake.count("/v3/signals")
    assert api.send_signals() == 0 and fake.count("/v3/signals") == before
    # the legacy prune deletes the queued signals of failing machines only
    api.add_signals(signals(1, M2, start=50))
    assert api.prune_failing_machines_signals() == 3
    assert storage.count_signals(M1).queued == 0 and storage.count_signals(M2).queued == 1


def test_failing_machine_recovers_after_cooldown(mode: str, storage: SQLStorage, fake: FakeCAPI) -> None:
    api = Api(mode, storage, make_config(fake, failing_cooldown=0.0))
    try:
        api.add_signals(signals(2))
        fake.script("/v3/signals", *([500] * 4))
        assert api.send_signals() == 0
        assert storage.get_machine_by_id(M1).is_failing  # type: ignore[union-attr]
        assert api.send_signals() == 2  # cooldown over: retried, and the failing flag is cleared
        assert not storage.get_machine_by_id(M1).is_failing  # type: ignore[union-attr]
    finally:
        api.close()


def test_429_honours_retry_after_then_succeeds(api: Api, fake: FakeCAPI) -> None:
    api.add_signals(signals(2))
    fake.script("/v3/signals", (429, {"message": "slow down"}, {"Retry-After": "7"}))
    assert api.send_signals() == 2
    assert api.sleeps == [7.0]


def test_timeouts_and_resets_are_retried(api: Api, fake: FakeCAPI) -> None:
    api.add_signals(signals(2))
    fake.script("/v3/signals", httpx.ReadTimeout, httpx.ConnectError, httpx.RemoteProtocolError)
    assert api.send_signals() == 2
    assert len(api.sleeps) == 3 and all(0 <= s <= 0.08 for s in api.sleeps)
    assert fake.count("/v3/signals") == 4


def test_network_failure_after_retries_is_a_transport_error(api: Api, fake: FakeCAPI) -> None:
    api.login(M1)
    fake.script("/v3/decisions/stream", *([httpx.ConnectError] * 4))
    with pytest.raises(TransportError) as info:
        api.get_decisions(M1)
    assert "4 tries" in info.value.message and info.value.hint
    assert fake.count("/v3/decisions/stream") == 4


@pytest.mark.parametrize(("status", "error"), [(500, ServerError), (502, ServerError), (503, ServerError)])
def test_5xx_after_retries_raises_server_error(api: Api, fake: FakeCAPI, status: int, error: type[Exception]) -> None:
    api.login(M1)
    fake.script("/v3/decisions/stream", *([status] * 4))
    with pytest.raises(error):
        api.get_decisions(M1)
    assert fake.count("/v3/decisions/stream") == 4


def test_404_on_signals_marks_failing_without_retry(api: Api, fake: FakeCAPI) -> None:
    api.add_signals(signals(2))
    fake.script("/v3/signals", 404)
    report = api.send_signals()
    assert report == 0 and M1 in report.failed_machines and fake.count("/v3/signals") == 1


# ---- tokens -------------------------------------------------------------------------------------------


def test_401_forces_exactly_one_login_and_one_retry(api: Api, fake: FakeCAPI) -> None:
    api.add_signals(signals(2))
    api.login(M1)
    assert fake.count("/v3/watchers/login") == 1
    fake.script("/v3/signals", 401)
    assert api.send_signals() == 2
    assert fake.count("/v3/watchers/login") == 2 and fake.count("/v3/signals") == 2


def test_second_401_is_an_authentication_error(api: Api, fake: FakeCAPI) -> None:
    api.login(M1)
    fake.script("/v3/decisions/stream", 401, 401)
    with pytest.raises(AuthenticationError):
        api.get_decisions(M1)
    assert fake.count("/v3/watchers/login") == 2 and fake.count("/v3/decisions/stream") == 2


def test_token_is_reused_across_restarts_until_expiry(mode: str, storage: SQLStorage, fake: FakeCAPI) -> None:
    first = Api(mode, storage, make_config(fake))
    first.get_decisions(M1)
    first.close()
    assert fake.count("/v3/watchers/login") == 1
    second = Api(mode, storage, make_config(fake))  # a restart: new client, same storage
    second.get_decisions(M1)
    assert fake.count("/v3/watchers/login") == 1
    # within latency_offset of exp: log in again
    second.set_clock(lambda: utcnow() + timedelta(seconds=3600 - 5))
    second.get_decisions(M1)
    assert fake.count("/v3/watchers/login") == 2
    second.close()
    # a config whose scenarios the token already declares reuses it; a new scenario means one login
    subset = Api(mode, storage, make_config(fake, scenarios=["crowdsecurity/ssh-bf"]))
    subset.get_decisions(M1)
    assert fake.count("/v3/watchers/login") == 2
    subset.close()
    third = Api(mode, storage, make_config(fake, scenarios=["crowdsecurity/http-probing"]))
    third.get_decisions(M1)
    assert fake.count("/v3/watchers/login") == 3
    # the new config first, then what the live token declared (no flip-flop with the other config's process)
    assert fake.calls("/v3/watchers/login")[-1].body["scenarios"] == ["crowdsecurity/http-probing", *sorted(SCENARIOS)]
    third.close()


def test_get_decisions_scenarios_are_added_to_the_configs_at_login(api: Api, fake: FakeCAPI) -> None:
    api.get_decisions(M1, ["crowdsecurity/http-probing"])
    assert fake.calls("/v3/watchers/login")[-1].body["scenarios"] == [*SCENARIOS, "crowdsecurity/http-probing"]
    with pytest.raises(ValidationError):
        api.get_decisions(M1, ["not a scenario"])


def test_alternating_sends_and_subset_pulls_log_in_once(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    for i in range(10):
        api.add_signals(signals(1, start=i))
        assert api.send_signals() == 1
        api.get_decisions(main_machine_id=M1, scenarios=["crowdsecurity/ssh-bf"])
    assert fake.count("/v3/watchers/login") == 1
    assert fake.calls("/v3/watchers/login")[0].body["scenarios"] == SCENARIOS
    machine = storage.get_machine_by_id(M1)
    assert machine is not None and machine.scenarios == ",".join(sorted(SCENARIOS))  # not narrowed by the pull


def test_alternating_overrides_outside_the_config_settle_after_one_login_each(api: Api, fake: FakeCAPI) -> None:
    for i in range(10):
        api.add_signals(signals(1, start=i))
        assert api.send_signals() == 1
        api.get_decisions(M1, ["crowdsecurity/http-probing"])
        api.get_decisions(M1, ["acme/other"])
    # config, then + http-probing, then + acme/other (keeping http-probing): never again while the token lives
    assert fake.count("/v3/watchers/login") == 3
    assert fake.calls("/v3/watchers/login")[-1].body["scenarios"] == [
        *SCENARIOS,
        "acme/other",
        "crowdsecurity/http-probing",
    ]


def test_forced_or_expired_logins_declare_only_what_is_wanted(api: Api, fake: FakeCAPI) -> None:
    api.get_decisions(M1, ["crowdsecurity/http-probing"])
    api.login(M1, force=True)  # an operator's way to drop scenarios no longer wanted, at once
    assert fake.calls("/v3/watchers/login")[-1].body["scenarios"] == SCENARIOS
    api.get_decisions(M1, ["crowdsecurity/http-probing"])
    api.set_clock(lambda: utcnow() + timedelta(hours=2))  # the token expired: a fresh declaration
    api.get_decisions(M1)
    assert fake.count("/v3/watchers/login") == 4
    assert fake.calls("/v3/watchers/login")[-1].body["scenarios"] == SCENARIOS


def test_login_403_is_a_persisted_ban(mode: str, storage: SQLStorage, fake: FakeCAPI) -> None:
    api = Api(mode, storage, make_config(fake))
    api.register_machine(M1)
    fake.script("/v3/watchers/login", (403, {"message": "too many logins"}))
    with pytest.raises(LoginBannedError) as info:
        api.login(M1)
    until = info.value.until
    assert timedelta(minutes=59) < until - utcnow() <= timedelta(hours=1)
    assert "too many logins" in info.value.message and info.value.status_code == 403
    api.close()
    restarted = Api(mode, storage, make_config(fake))
    with pytest.raises(LoginBannedError):
        restarted.get_decisions(M1)
    assert fake.count("/v3/watchers/login") == 1  # no login attempted while banned, even after a restart
    # a banned machine stops only itself
    restarted.add_signals(signals(2, M1) + signals(3, M2))
    report = restarted.send_signals()
    assert report.sent == 3  # the storage does not even hand out a banned machine's signals
    assert storage.count_signals(M1).queued == 2
    assert fake.count("/v3/watchers/login") == 2  # M2 logged in; still no login for M1
    # after the ban, logins resume
    restarted.set_clock(lambda: utcnow() + timedelta(hours=1, minutes=1))
    assert restarted.login(M1).token
    restarted.close()


def test_wrong_password_is_an_authentication_error_with_a_cooldown(
    api: Api, fake: FakeCAPI, storage: SQLStorage
) -> None:
    machine = api.register_machine(M1)
    fake.machines[M1] = "something-else"  # CAPI knows the id with another password
    with pytest.raises(AuthenticationError) as info:
        api.login(M1)
    assert not isinstance(info.value, LoginBannedError) and info.value.status_code == 403
    assert "invalid machine_id or password" in info.value.message
    # one registration of the SAME pair was tried (refused: the id is taken), never a new password
    assert fake.count("/v3/watchers") == 2 and fake.calls("/v3/watchers")[-1].body["password"] == machine.password
    stored = storage.get_machine_by_id(M1)
    assert stored is not None and stored.login_banned_until is None and stored.password == machine.password
    assert stored.failing_until is not None and stored.failure_reason is not None
    assert timedelta(minutes=4) < stored.failing_until - utcnow() <= timedelta(minutes=5)  # failing_cooldown
    # during the cool-down nothing is sent: no tight loop of failed logins (CAPI counts them too)
    requests = len(fake.requests)
    with pytest.raises(AuthenticationError, match="no login") as again:
        api.get_decisions(M1)
    assert not isinstance(again.value, LoginBannedError)
    api.add_signals(signals(2))
    report = api.send_signals()
    assert report == 0 and storage.count_signals(M1).queued == 2
    assert len(fake.requests) == requests
    assert storage.get_machine_by_id(M1).failure_reason == stored.failure_reason  # type: ignore[union-attr]
    # an operator who fixed it clears the cool-down; the next call logs in at once
    fake.machines[M1] = machine.password  # type: ignore[assignment]
    assert api.clear_login_ban(M1) is True
    assert api.clear_login_ban(M1) is False
    assert api.send_signals() == 2
    with pytest.raises(ValidationError):
        api.clear_login_ban(M2)  # not a stored machine


def test_login_403_wordings_ban_or_refuse_credentials(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    api.register_machine(M1)
    invalid = {"message": "invalid machine_id or password"}
    fake.script("/v3/watchers/login", (403, invalid, {"Retry-After": "60"}))  # Retry-After: a ban, whatever it says
    with pytest.raises(LoginBannedError):
        api.login(M1)
    assert fake.count("/v3/watchers") == 1  # a ban never re-registers
    assert api.clear_login_ban(M1) is True
    assert storage.get_machine_by_id(M1).login_banned_until is None  # type: ignore[union-attr]
    fake.script("/v3/watchers/login", (403, {"message": "Forbidden"}))  # unknown wording: a ban (safe default)
    with pytest.raises(LoginBannedError):
        api.login(M1)
    api.clear_login_ban(M1)
    fake.script("/v3/watchers/login", (403, b""))  # empty body: a ban
    with pytest.raises(LoginBannedError):
        api.login(M1)
    api.clear_login_ban(M1)
    assert api.login(M1).token  # lifted locally: logins resume
    assert fake.count("/v3/watchers/login") == 4


def test_reregistered_machine_whose_login_still_fails_is_not_retried(
    api: Api, fake: FakeCAPI, storage: SQLStorage
) -> None:
    api.register_machine(M1)
    fake.machines.clear()
    refused = (403, {"message": "invalid machine_id or password"})
    fake.script("/v3/watchers/login", refused, refused)
    with pytest.raises(AuthenticationError) as info:
        api.login(M1)
    assert not isinstance(info.value, LoginBannedError)
    assert fake.count("/v3/watchers") == 2 and fake.count("/v3/watchers/login") == 2  # re-registered ONCE
    stored = storage.get_machine_by_id(M1)
    assert stored is not None and stored.login_banned_until is None and stored.failing_until is not None


def test_metrics_failure_after_login_is_only_logged(api: Api, fake: FakeCAPI, caplog: pytest.LogCaptureFixture) -> None:
    fake.script("/v3/metrics", 500)
    with caplog.at_level(logging.WARNING, logger="cscapi"):
        machine = api.login(M1)
    assert machine.token
    assert fake.count("/v3/metrics") == 1  # one try only: no backoff on a courtesy call
    assert any("metrics" in r.getMessage() for r in caplog.records)


def test_metrics_after_login_can_be_disabled(mode: str, storage: SQLStorage, fake: FakeCAPI) -> None:
    api = Api(mode, storage, make_config(fake, send_metrics_after_login=False))
    api.login(M1)
    assert fake.count("/v3/metrics") == 0
    api.send_metrics(M1)
    assert fake.count("/v3/metrics") == 1
    api.close()


# ---- registration ------------------------------------------------------------------------------------


def test_register_generates_id_and_password_with_prefix(mode: str, storage: SQLStorage, fake: FakeCAPI) -> None:
    api = Api(mode, storage, make_config(fake, machine_id_prefix="acme"))
    machine = api.register_machine()
    assert len(machine.machine_id) == 48 and machine.machine_id.startswith("acme")
    assert fake.machines[machine.machine_id] == machine.password
    assert api.default_machine_id() == machine.machine_id
    # registering again changes nothing and sends nothing
    assert api.register_machine(machine.machine_id).password == machine.password
    assert fake.count("/v3/watchers") == 1
    with pytest.raises(ValidationError):
        api.register_machine(machine.machine_id, "another-password")
    api.close()


def test_default_machine_id_registers_one_when_none(api: Api, fake: FakeCAPI) -> None:
    mid = api.default_machine_id()
    assert len(mid) == 48 and mid in fake.machines
    assert api.default_machine_id() == mid and fake.count("/v3/watchers") == 1


def test_duplicate_register_counts_only_if_login_works(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    # CAPI already knows M1 with the password we hold (e.g. a crash after register, before we stored "registered")
    from cscapi.models import Machine

    storage.update_or_create_machine(Machine(machine_id=M1, password="P" * 64, registered=False))
    fake.machines[M1] = "P" * 64
    machine = api.register_machine(M1)
    assert machine.registered and machine.password == "P" * 64 and machine.token
    # another id held by someone else with another password: refused, our stored password is not changed
    storage.update_or_create_machine(Machine(machine_id=M2, password="Q" * 64, registered=False))
    fake.machines[M2] = "theirs"
    with pytest.raises(AuthenticationError, match="another password"):
        api.register_machine(M2)
    stored = storage.get_machine_by_id(M2)
    assert stored is not None and stored.password == "Q" * 64 and not stored.registered


def test_register_5xx_keeps_the_password_for_next_time(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    fake.script("/v3/watchers", *([500] * 4))
    with pytest.raises(ServerError):
        api.register_machine(M1)
    stored = storage.get_machine_by_id(M1)
    assert stored is not None and stored.password and not stored.registered
    machine = api.register_machine(M1)
    assert machine.password == stored.password and fake.machines[M1] == stored.password


# ---- decisions stream and links -------------------------------------------------------------------------


def test_get_decisions_parses_and_sends_the_right_query(api: Api, fake: FakeCAPI) -> None:
    fake.stream = {
        "new": [
            {
                "scenario": "crowdsecurity/ssh-bf",
                "scope": "Ip",
                "decisions": [{"value": "192.0.2.1", "duration": "1h"}, {"value": "x", "duration": "1h"}],
            }
        ],
        "deleted": [{"scope": "ip", "decisions": ["192.0.2.2"]}],
        "links": {
            "blocklists": [
                {"name": "l", "url": "http://capi.test/lists/l", "remediation": "ban", "scope": "ip", "duration": "24h"}
            ]
        },
    }
    stream = api.get_decisions(main_machine_id=M1)
    assert [(d.value, d.scope, d.duration) for d in stream.new] == [("192.0.2.1", "ip", 3600.0)]
    assert stream.skipped == 1 and [d.value for d in stream.deleted] == ["192.0.2.2"]
    assert stream.blocklists[0].url == "http://capi.test/lists/l"
    assert fake.calls("/v3/decisions/stream")[-1].query == {}
    api.get_decisions(M1, startup=True, community_pull=False, additional_pull=False)
    assert fake.calls("/v3/decisions/stream")[-1].query == {
        "startup": "true",
        "community_pull": "false",
        "additional_pull": "false",
    }


def test_get_decisions_non_json_is_a_clear_error(api: Api, fake: FakeCAPI) -> None:
    fake.script("/v3/decisions/stream", (200, b"<html>maintenance</html>"))
    with pytest.raises(ServerError, match="not JSON"):
        api.get_decisions(M1)


def test_get_decisions_400_and_404(api: Api, fake: FakeCAPI) -> None:
    fake.script("/v3/decisions/stream", (400, {"message": "bad query"}), 404)
    with pytest.raises(RequestRejectedError) as info:
        api.get_decisions(M1)
    assert info.value.server_message == "bad query"
    with pytest.raises(NotFoundError):
        api.get_decisions(M1)


def test_download_link_without_auth_and_conditional(api: Api, fake: FakeCAPI) -> None:
    modified = "Sat, 21 Nov 2026 22:28:02 GMT"
    fake.links["/lists/tor"] = ("192.0.2.1\n192.0.2.2\n", modified)
    api.login(M1)  # a logged-in client must still not send its token to link URLs
    got = api.download_link("http://capi.test/lists/tor")
    assert got.status_code == 200 and got.text.splitlines() == ["192.0.2.1", "192.0.2.2"] and not got.not_modified
    assert got.last_modified == modified
    again = api.download_link("http://capi.test/lists/tor", if_modified_since=got.last_modified)
    assert again.not_modified and again.status_code == 304 and again.text == ""
    dated = api.download_link(
        "http://capi.test/lists/tor", if_modified_since=datetime(2026, 11, 21, 22, 28, 2, tzinfo=timezone.utc)
    )
    assert dated.not_modified
    assert all("authorization" not in r.headers for r in fake.calls("/lists/tor"))
    with pytest.raises(NotFoundError):
        api.download_link("http://capi.test/lists/missing")
    fake.script("/lists/tor", 503, 503)
    assert api.download_link("http://capi.test/lists/tor").status_code == 200


# ---- enrollment -------------------------------------------------------------------------------------


def test_enroll_outcomes(api: Api, fake: FakeCAPI) -> None:
    fake.script(
        "/v3/watchers/enroll",
        200,
        (202, {"url": "http://console/x", "expire_at": 1_900_000_000_000}),
        (403, {"message": "attachment key not found"}),
    )
    outcomes = api.enroll_machines(
        machine_ids=[M1, M2, generate_machine_id()], attachment_key="abc123", name="mymachine", tags=["ssh-honeypot"]
    )
    assert [o.status for o in outcomes] == [EnrollStatus.ALREADY_ENROLLED, EnrollStatus.ENROLLED, EnrollStatus.FAILED]
    assert outcomes[1].url == "http://console/x" and outcomes[1].expire_at is not None
    assert outcomes[2].reason is not None and "attachment key" in outcomes[2].reason and not outcomes[2].ok
    body = fake.calls("/v3/watchers/enroll")[0].body
    assert body == {"attachment_key": "abc123", "name": "mymachine", "tags": ["ssh-honeypot"]}
    # legacy positional order: machine_ids, name, attachment_key, tags, overwrite
    (forced,) = api.enroll_machines([M1], "basicName", "key", ["tag"], True)
    assert forced.status == EnrollStatus.ENROLLED
    assert fake.calls("/v3/watchers/enroll")[-1].body == {
        "attachment_key": "key",
        "name": "basicName",
        "tags": ["tag"],
        "overwrite": True,
    }


def test_enroll_never_raises_for_one_machine(api: Api, fake: FakeCAPI) -> None:
    fake.script("/v3/watchers", *([500] * 4))  # the first machine cannot even register
    outcomes = api.enroll_machines([M1, M2, "bad-id"], "n", "key", [])
    assert [o.status for o in outcomes] == [EnrollStatus.FAILED, EnrollStatus.ALREADY_ENROLLED, EnrollStatus.FAILED]
    assert "500" in (outcomes[0].reason or "") and "machine id" in (outcomes[2].reason or "").lower()
    with pytest.raises(ValidationError):
        api.enroll_machines([M1], "n", "not a key!", [])


# ---- metrics, usage metrics, decisions delete --------------------------------------------------------------


def test_usage_metrics_and_decisions_delete(api: Api, fake: FakeCAPI) -> None:
    from cscapi.protocol import usage_metrics_payload

    now = utcnow()
    payload = usage_metrics_payload(
        name="myapp",
        component_type="capi-py-sdk",
        startup=now,
        now=now,
        window_seconds=60,
        items=[("dropped", 3, "request", {})],
    )
    api.push_usage_metrics(M1, payload)
    assert fake.calls("/v3/usage-metrics")[0].body == payload
    fake.script("/v3/usage-metrics", (422, {"message": "bad metrics"}))
    with pytest.raises(RequestRejectedError):
        api.push_usage_metrics(M1, payload)
    api.delete_decisions(M1, ["u1", "u2"])
    assert fake.calls("/v3/decisions/delete")[0].body == ["u1", "u2"]
    with pytest.raises(ValidationError):
        api.delete_decisions(M1, "u1")


# ---- crash safety ------------------------------------------------------------------------------------


class CrashingStorage(SQLStorage):
    """Fails the first ``mark_sent`` or ``delete_signals``: the process "crashed" between the POST and the mark."""

    crashes = 1

    def _crash(self) -> None:
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("simulated crash")

    def mark_sent(self, claim: Any, signal_ids: Any = None) -> int:
        self._crash()
        return super().mark_sent(claim, signal_ids)

    def delete_signals(self, signal_ids: Any) -> None:
        self._crash()
        super().delete_signals(signal_ids)


@pytest.mark.parametrize("prune", [True, False])
def test_crash_between_post_and_mark_resends_never_loses(
    mode: str, tmp_path: Path, fake: FakeCAPI, prune: bool
) -> None:
    from cscapi.errors import StorageError

    store = CrashingStorage(f"sqlite:///{tmp_path / 'crash.db'}")
    api = Api(mode, store, make_config(fake))
    try:
        batch = signals(3)
        api.add_signals(batch)
        with pytest.raises(StorageError, match="delete_signals" if prune else "mark_sent"):
            api.send_signals(prune_after_send=prune)
        assert len(fake.signals) == 3  # CAPI got them
        assert store.count_signals().queued == 3  # but they are still ours to send
        assert api.send_signals(prune_after_send=prune) == 3
        assert [s["uuid"] for s in fake.signals] == [s.uuid for s in batch] * 2  # resent (same uuids), never lost
        counts = store.count_signals()
        assert counts.pending == 0 and counts.sent == (0 if prune else 3)
    finally:
        api.close()
        store.close()


# ---- secrets never leak -------------------------------------------------------------------------------


def test_no_password_or_token_in_logs_errors_or_reprs(
    api: Api, fake: FakeCAPI, storage: SQLStorage, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        api.add_signals(signals(3) + signals(1, scenario="bad/signal", start=9))
        api.send_signals()
        fake.script("/v3/decisions/stream", 401, 401)
        try:
            api.get_decisions(M1)
        except AuthenticationError as exc:
            errors.append(str(exc) + repr(exc))
        fake.script("/v3/watchers/login", (403, {"message": "banned"}))
        api.set_clock(lambda: utcnow() + timedelta(hours=2))
        try:
            api.get_decisions(M1)
        except LoginBannedError as exc:
            errors.append(str(exc) + repr(exc))
    machine = storage.get_machine_by_id(M1)
    assert machine is not None and machine.password
    secrets = [machine.password, *fake.tokens]
    text = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records) + "\n".join(errors)
    text += repr(machine) + repr(api.client) + repr(api.client.config)
    assert len(caplog.records) > 5 and len(errors) == 2
    for secret in secrets:
        assert secret not in text


def test_config_repr_hides_proxy_credentials() -> None:
    config = make_config(None, proxy="http://user:hunter2@127.0.0.1:3128")
    assert "hunter2" not in repr(config) and "127.0.0.1:3128" in repr(config)


def test_ban_during_send_stops_that_machine_only(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    api.add_signals(signals(2, M1) + signals(3, M2))
    api.register_machine(M1)
    fake.script("/v3/watchers/login", (403, {"message": "too many logins"}))  # M1's login is refused
    report = api.send_signals()
    assert report.sent == 3 and list(report.failed_machines) == [M1]
    assert "banned" in report.failed_machines[M1]
    m1 = storage.get_machine_by_id(M1)
    assert m1 is not None and m1.login_banned_until is not None and not m1.is_failing
    assert storage.count_signals(M1).queued == 2 and storage.count_signals(M1).claimed == 0


def test_403_on_a_call_is_not_a_login_and_not_retried(api: Api, fake: FakeCAPI) -> None:
    api.login(M1)
    fake.script("/v3/decisions/stream", (403, {"message": "forbidden"}))
    with pytest.raises(AuthenticationError) as info:
        api.get_decisions(M1)
    assert not isinstance(info.value, LoginBannedError) and info.value.status_code == 403
    assert fake.count("/v3/watchers/login") == 1 and fake.count("/v3/decisions/stream") == 1


def test_429_after_every_retry_is_rate_limited(api: Api, fake: FakeCAPI) -> None:
    from cscapi.errors import RateLimitedError

    api.login(M1)
    fake.script("/v3/decisions/stream", *([(429, {"message": "slow"}, {"Retry-After": "2"})] * 4))
    with pytest.raises(RateLimitedError) as info:
        api.get_decisions(M1)
    assert info.value.retry_after == 2.0 and "4 tries" in info.value.message
    assert api.sleeps == [2.0, 2.0, 2.0]


def test_422_on_a_batch_is_bisected_like_400(api: Api, fake: FakeCAPI, storage: SQLStorage) -> None:
    api.add_signals(signals(2))
    fake.script("/v3/signals", (422, {"message": "unprocessable"}), 200, (422, {"message": "bad item"}))
    report = api.send_signals()
    assert report.sent == 1 and report.quarantined == 1
    ((_, reason),) = storage.list_quarantined()
    assert reason.startswith("422") and "bad item" in reason


def test_login_ban_honours_a_longer_retry_after(api: Api, fake: FakeCAPI) -> None:
    api.register_machine(M1)
    fake.script("/v3/watchers/login", (403, {"message": "banned"}, {"Retry-After": "7200"}))
    with pytest.raises(LoginBannedError) as info:
        api.login(M1)
    assert info.value.until - utcnow() > timedelta(minutes=119)


def test_link_urls_with_signatures_stay_out_of_logs(api: Api, fake: FakeCAPI, caplog: pytest.LogCaptureFixture) -> None:
    fake.script("/lists/signed", 503, 503, 503, 503)
    with caplog.at_level(logging.DEBUG, logger="cscapi"), pytest.raises(ServerError) as info:
        api.download_link("http://capi.test/lists/signed?token=s3cr3tsig")
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cscapi")) + str(info.value)
    assert "s3cr3tsig" not in text and len(caplog.records) >= 3


def test_machine_forgotten_by_capi_is_registered_again_with_the_same_pair(
    api: Api, fake: FakeCAPI, storage: SQLStorage
) -> None:
    machine = api.register_machine(M1)
    fake.machines.clear()  # CAPI lost it (e.g. an in-memory emulator restarted)
    again = api.login(M1)
    assert again.token and again.password == machine.password
    assert fake.machines[M1] == machine.password  # same id/password pair
    assert fake.count("/v3/watchers") == 2 and fake.count("/v3/watchers/login") == 2


def test_deeply_nested_json_answers_are_server_errors(api: Api, fake: FakeCAPI) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    api.register_machine(M1)
    fake.script("/v3/watchers/login", (200, deep[:6000] + deep[-6000:]))  # under max_token_bytes, still too deep
    with pytest.raises(ServerError, match="not JSON"):
        api.login(M1)
    fake.script("/v3/decisions/stream", (200, b'{"new": ' + deep + b"}"))
    with pytest.raises(ServerError, match="not JSON"):
        api.get_decisions(M1)
    fake.script("/v3/decisions/stream", (400, deep))
    with pytest.raises(RequestRejectedError):
        api.get_decisions(M1)


def test_a_long_send_reads_each_machine_once_not_per_claim_round(
    mode: str, storage: SQLStorage, fake: FakeCAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = Api(mode, storage, make_config(fake, batch_size=10))
    try:
        api.add_signals(signals(200, M1))
        api.login(M1)
        reads: list[str] = []
        original = storage.get_machine_by_id

        def counting(machine_id: str) -> Any:
            reads.append(machine_id)
            return original(machine_id)

        monkeypatch.setattr(storage, "get_machine_by_id", counting)
        report = api.send_signals()  # 200 signals, 10 per POST, 40 per claim: 5 claim rounds, 20 POSTs
        assert report == 200 and report.batches == 20
        assert reads == [M1]
    finally:
        api.close()
