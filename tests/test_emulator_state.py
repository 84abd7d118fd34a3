"""The emulator's state without HTTP: community generation and file loading, config parsing, faults, tokens,
and SQLite persistence across restarts."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from cscapi.emulator import EmulatorConfig, FaultSpec, LoginRateLimit
from cscapi.emulator.community import generate_community, load_community_file, normalise_value
from cscapi.emulator.config import load_config_file, parse_fault_option
from cscapi.emulator.state import ApiError, EmulatorState
from cscapi.emulator.tokens import InvalidToken, decode_jwt, encode_jwt
from cscapi.errors import ConfigurationError

DOC_V4 = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15", "240.0.0.0/4")
]
DOC_V6 = ipaddress.ip_network("2001:db8::/32")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_generated_community_is_reproducible_and_realistic() -> None:
    a = generate_community(2000, seed=3)
    b = generate_community(2000, seed=3)
    c = generate_community(2000, seed=4)
    assert a == b
    assert a != c
    assert len({(d.scope, d.value) for d in a}) == 2000
    kinds = {"v4": 0, "v6": 0, "r4": 0, "r6": 0}
    for d in a:
        net = ipaddress.ip_network(d.value)
        if d.scope == "ip":
            assert net.num_addresses == 1
        kinds[("v4" if net.version == 4 else "v6") if d.scope == "ip" else ("r4" if net.version == 4 else "r6")] += 1
        pools = DOC_V4 if net.version == 4 else [DOC_V6]
        assert any(net.subnet_of(p) for p in pools), d.value  # type: ignore[arg-type]
        assert 0 < d.remaining <= 168 * 3600
    assert kinds == {"v4": 1600, "v6": 160, "r4": 140, "r6": 100}
    scenarios = {d.scenario for d in a}
    assert "crowdsecurity/ssh-bf" in scenarios and "crowdsecurity/http-probing" in scenarios


def test_large_community_overflows_into_reserved_space() -> None:
    decisions = generate_community(168_000, seed=1)  # more IPv4 addresses than the documentation/benchmark nets hold
    assert len({d.value for d in decisions}) == 168_000
    overflow = ipaddress.ip_network("240.0.0.0/4")
    assert any(d.scope == "ip" and ipaddress.ip_address(d.value) in overflow for d in decisions)


def test_normalise_value() -> None:
    assert normalise_value("192.0.2.1") == ("192.0.2.1", "ip")
    assert normalise_value("192.0.2.1/32") == ("192.0.2.1", "ip")
    assert normalise_value("192.0.2.7/24") == ("192.0.2.0/24", "range")
    assert normalise_value("2001:DB8::1") == ("2001:db8::1", "ip")
    assert normalise_value("FR", "country") == ("FR", "country")
    for bad in ("", "nope", "300.1.1.1"):
        with pytest.raises(ValueError):
            normalise_value(bad)


def test_community_file_text_and_json(tmp_path: Path) -> None:
    text = tmp_path / "list.txt"
    text.write_text("# comment\n192.0.2.1\n\n198.51.100.0/24 crowdsecurity/http-probing 2h\n2001:db8::5 a/b\n")
    loaded = load_community_file(text)
    assert [(d.value, d.scope, d.scenario, d.remaining) for d in loaded] == [
        ("192.0.2.1", "ip", "crowdsecurity/community-blocklist", 86400.0),
        ("198.51.100.0/24", "range", "crowdsecurity/http-probing", 7200.0),
        ("2001:db8::5", "ip", "a/b", 86400.0),
    ]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(["192.0.2.9", {"value": "192.0.2.10", "scenario": "x/y", "duration": "90m"}]))
    assert [(d.value, d.remaining) for d in load_community_file(as_list)] == [
        ("192.0.2.9", 86400.0),
        ("192.0.2.10", 5400.0),
    ]
    stream = tmp_path / "stream.json"
    stream.write_text(
        json.dumps(
            {
                "new": [
                    {"scenario": "s/a", "scope": "ip", "decisions": [{"value": "192.0.2.3", "duration": "3h59m55.75s"}]}
                ]
            }
        )
    )
    (only,) = load_community_file(stream)
    assert (only.value, only.scenario, only.remaining) == ("192.0.2.3", "s/a", 14395.75)


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("192.0.2.1\nnot-an-ip\n", ":2"),
        ("192.0.2.1 a/b 5 parts here\n", ":1"),
        ("192.0.2.1 a/b 1x\n", ":1"),
        ('[{"value": 5}]', "[0]"),
        ('{"new": [{"decisions": "x"}]}', "new[0]"),
        ("[1, 2", "not valid JSON"),
    ],
)
def test_bad_community_files_name_the_line(tmp_path: Path, content: str, where: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=r".*") as info:
        load_community_file(path)
    assert where in str(info.value)


def test_state_loads_community_file(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("192.0.2.1\n192.0.2.2\n")
    state = EmulatorState(EmulatorConfig(community_file=str(path)))
    assert sorted(v for _, v, _ in state.decisions) == ["192.0.2.1", "192.0.2.2"]


def test_fault_option_and_spec_validation() -> None:
    endpoint, spec = parse_fault_option("signals:error_rate=0.5,error_status=503,remaining=2")
    assert endpoint == "signals"
    assert (spec.error_rate, spec.error_status, spec.remaining) == (0.5, 503, 2)
    for bad in (
        "signals",
        "nowhere:error_rate=1",
        "signals:error_rate",
        "signals:bogus=1",
        "signals:error_rate=2",
        "signals:error_status=404",
        "signals:error_rate=abc",
    ):
        with pytest.raises(ConfigurationError):
            parse_fault_option(bad)


def test_config_validation_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        EmulatorConfig(attachment_keys=["bad key"])
    with pytest.raises(ConfigurationError):
        EmulatorConfig(faults={"nowhere": FaultSpec()})
    with pytest.raises(ConfigurationError):
        EmulatorConfig.from_dict({"sede": 1})
    with pytest.raises(ConfigurationError):
        LoginRateLimit(per="planet")
    toml = tmp_path / "emu.toml"
    toml.write_text(
        'seed = 5\ncommunity_size = 10\nattachment_keys = ["k1"]\n'
        "[login_rate_limit]\nenabled = false\n"
        "[faults.signals]\nerror_rate = 1.0\nerror_status = 502\n"
        '[[blocklists]]\nname = "tor"\ncontent = ["192.0.2.1"]\nduration = "12h"\n'
        '[[allowlists]]\nname = "office"\nitems = ["203.0.113.1"]\n'
    )
    cfg = EmulatorConfig.from_dict(load_config_file(toml))
    assert cfg.seed == 5 and not cfg.login_rate_limit.enabled and cfg.faults["signals"].error_status == 502
    state = EmulatorState(cfg)
    assert len(state.decisions) == 10 and len(state.blocklists) == 1 and len(state.allowlists) == 1
    js = tmp_path / "emu.json"
    js.write_text(json.dumps({"token_lifetime": 60, "faults": {"login": {"latency": 0.1}}}))
    assert EmulatorConfig.from_dict(load_config_file(js)).faults["login"].latency == 0.1
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigurationError):
        load_config_file(tmp_path / "bad.json")
    with pytest.raises(ConfigurationError):
        load_config_file(tmp_path / "missing.json")


def test_admin_token_is_random_and_never_in_repr() -> None:
    a, b = EmulatorConfig(), EmulatorConfig()
    assert a.admin_token != b.admin_token and len(a.admin_token) >= 24
    assert a.admin_token not in repr(a)


def test_jwt_roundtrip_and_tampering() -> None:
    token = encode_jwt({"sub": "m", "exp": 5}, b"k" * 32)
    assert decode_jwt(token, b"k" * 32) == {"sub": "m", "exp": 5}
    with pytest.raises(InvalidToken):
        decode_jwt(token, b"x" * 32)
    with pytest.raises(InvalidToken):
        decode_jwt(token + "x", b"k" * 32)
    for bad in ("", "a.b", "a.b.c", "é.é.é", "..."):
        with pytest.raises(InvalidToken):
            decode_jwt(bad, b"k" * 32)


def test_fault_remaining_counts_down_and_rates_are_seeded() -> None:
    state = EmulatorState(EmulatorConfig(community_size=0))
    state.set_fault("signals", FaultSpec(error_rate=1.0, remaining=2))
    kinds = [state.take_fault("signals").kind for _ in range(3)]
    assert kinds == ["5xx", "5xx", None]
    state.set_fault("*", FaultSpec(rate_limit_rate=1.0, retry_after=7))
    action = state.take_fault("login")
    assert (action.kind, action.retry_after) == ("429", 7)
    state.clear_faults()

    def draws(seed: int) -> list[str | None]:
        s = EmulatorState(EmulatorConfig(community_size=0, seed=seed))
        s.set_fault("signals", FaultSpec(error_rate=0.5))
        return [s.take_fault("signals").kind for _ in range(200)]

    first = draws(1)
    assert first == draws(1)
    assert 60 < first.count("5xx") < 140


def test_early_token_expiry_fault() -> None:
    clock = Clock()
    state = EmulatorState(EmulatorConfig(community_size=0, clock=clock, login_rate_limit={"enabled": False}))
    state.register("a" * 48, "pw")
    state.set_fault("login", FaultSpec(token_lifetime=30))
    token, expires = state.login("a" * 48, "pw", [], "127.0.0.1")
    assert expires == clock.now + 3600  # the token claims the normal lifetime...
    clock.now += 29
    state.authenticate(f"Bearer {token}")
    clock.now += 2
    with pytest.raises(ApiError) as info:  # ...but stops working after 30 s
        state.authenticate(f"Bearer {token}")
    assert info.value.status == 401


def test_sqlite_state_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "emu.db")
    clock = Clock()
    cfg: dict[str, Any] = {
        "community_size": 50,
        "seed": 2,
        "state_path": path,
        "clock": clock,
        "login_rate_limit": LoginRateLimit(
            threshold=2, threshold_sharing=2, threshold_enrolled=2, threshold_enrolled_sharing=2
        ),
        "attachment_keys": ["k"],
    }
    s1 = EmulatorState(EmulatorConfig(**cfg))
    m = s1.register("b" * 48, "pw")
    token, _ = s1.login("b" * 48, "pw", ["crowdsecurity/ssh-bf"], "127.0.0.1")
    s1.enroll(m, {"attachment_key": "k", "name": "n"})
    s1.add_signals(m, [{"uuid": "u1", "scenario": "s"}, {"uuid": "u2", "scenario": "s"}], "v3")
    s1.record_payload("metrics", m, {"bouncers": [], "machines": []}, "v3")
    s1.stream_v3(m, startup=True, community_pull=True, additional_pull=True, base_url="http://x/")
    gone = next(k for k in s1.decisions if k[2] == "crowdsecurity/ssh-bf")[1]  # the list is tailored to ssh-bf
    s1.remove_decisions([gone])
    s1.add_decisions([{"value": "192.0.2.250", "duration": "1h", "scenario": "crowdsecurity/ssh-bf"}])
    s1.publish_blocklist("bl", ["192.0.2.1"])
    s1.publish_allowlist("al", ["192.0.2.2"])
    snapshot = sorted(s1.decisions)
    s1.close()

    s2 = EmulatorState(EmulatorConfig(**{**cfg, "seed": 99}))  # the file wins over a different seed
    assert sorted(s2.decisions) == snapshot
    m2 = s2.machines["b" * 48]
    assert m2.organization_id is not None and m2.scenarios == ["crowdsecurity/ssh-bf"] and m2.login_count == 1
    assert s2.authenticate(f"Bearer {token}").machine_id == m2.machine_id  # tokens survive a restart
    assert [r["signal"]["uuid"] for r in s2.query_signals()] == ["u1", "u2"]
    assert s2.add_signals(m2, [{"uuid": "u1", "scenario": "s"}], "v3") == (0, 1)
    assert len(s2.records["metrics"]) == 1 and len(s2.records["enrollments"]) == 1
    assert set(s2.blocklists) == {s2.list_id("bl")} and set(s2.allowlists) == {s2.list_id("al")}
    # the delta continues where it stopped
    text = s2.stream_v3(m2, startup=False, community_pull=True, additional_pull=True, base_url="http://x/")
    delta = json.loads(text)
    assert [d["value"] for g in delta["new"] for d in g["decisions"]] == ["192.0.2.250"]
    assert [v for g in delta["deleted"] for v in g["decisions"]] == [gone]
    # login attempts are remembered: one more login is allowed (threshold 2), then a ban
    s2.login("b" * 48, "pw", [], "127.0.0.1")
    s2.close()
    s3 = EmulatorState(EmulatorConfig(**cfg))
    with pytest.raises(ApiError) as info:
        s3.login("b" * 48, "pw", [], "127.0.0.1")
    assert info.value.status == 403
    s3.reset()
    assert s3.machines == {} and len(s3.decisions) == 50
    s3.close()
    s4 = EmulatorState(EmulatorConfig(**cfg))
    assert s4.machines == {} and len(s4.decisions) == 50
    s4.close()


def test_expired_decisions_leave_through_the_heap() -> None:
    clock = Clock()
    state = EmulatorState(EmulatorConfig(community_size=0, clock=clock))
    state.add_decisions([{"value": f"192.0.2.{i}", "duration": float(i)} for i in range(1, 11)])
    clock.now += 5
    assert state.expire_due() == 5
    assert len(state.decisions) == 5 and len(state.tombstones) == 5
    state.add_decisions([{"value": "192.0.2.10", "duration": "1h"}])  # replaced: the old expiry no longer applies
    clock.now += 5
    assert state.expire_due() == 4
    assert [v for _, v, _ in state.decisions] == ["192.0.2.10"]
    with pytest.raises(ApiError):
        state.add_decisions([{"value": "192.0.2.1", "duration": "-1h"}])
    with pytest.raises(ApiError):
        state.add_decisions([{"value": "nope"}])


# ---- the compiled validator agrees with jsonschema ----------------------------------------------------------------

_VALID_SIGNAL: dict[str, Any] = {
    "scenario": "crowdsecurity/ssh-bf",
    "scenario_hash": "h",
    "scenario_version": "0.1",
    "message": "m",
    "source": {"scope": "ip", "value": "192.0.2.1", "latitude": 1.5, "as_number": "1"},
    "start_at": "2026-11-21T22:28:19Z",
    "stop_at": "2026-11-21T22:28:20Z",
    "alert_id": 3,
    "decisions": [
        {
            "id": 0,
            "duration": "4h",
            "origin": "crowdsec",
            "scenario": "s",
            "scope": "ip",
            "value": "192.0.2.1",
            "type": "ban",
            "simulated": False,
        }
    ],
    "context": [{"key": "k", "value": "v"}],
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


_REPLACEMENTS: list[Any] = [None, True, 0, 1.0, -3, 2.5, "", "x", [], [1], {}, {"a": 1}]


@pytest.mark.parametrize(
    ("definition", "spec", "sample"),
    [
        ("AddSignalsRequestItem", "capi", _VALID_SIGNAL),
        ("LoginRequest", "capi", {"machine_id": "a" * 48, "password": "p", "scenarios": ["a/b"]}),
        (
            "AllMetrics",
            "lapi",
            {
                "remediation_components": [
                    {
                        "version": "1",
                        "utc_startup_timestamp": 1,
                        "os": {"name": "l", "version": "1"},
                        "feature_flags": ["f"],
                        "metrics": [
                            {
                                "meta": {"window_size_seconds": 1, "utc_now_timestamp": 2},
                                "items": [{"name": "n", "value": 1, "unit": "u", "labels": {"a": "b"}}],
                            }
                        ],
                    }
                ],
                "log_processors": [
                    {"version": "1", "utc_startup_timestamp": 1, "hub_items": {"x": []}, "datasources": {"file": 2}}
                ],
            },
        ),
    ],
)
def test_compiled_validator_matches_jsonschema_on_every_single_mutation(
    definition: str, spec: str, sample: Any
) -> None:
    """Replace or delete each node of a valid body with values of every JSON type: both validators must agree."""
    import copy

    import jsonschema

    from cscapi.emulator.validation import validator_for

    v = validator_for(definition, spec)
    fast = v._fast
    assert fast is not None
    reference = jsonschema.Draft4Validator(v.schema)
    assert fast(sample) and reference.is_valid(sample)
    checked = 0
    for path in _paths(sample):
        for replacement in [*_REPLACEMENTS, "DELETE"]:
            body = copy.deepcopy(sample)
            if not path:
                if replacement == "DELETE":
                    continue
                body = replacement
            else:
                parent = body
                for part in path[:-1]:
                    parent = parent[part]
                if replacement == "DELETE":
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = replacement
            assert fast(body) == reference.is_valid(body), (path, replacement)
            checked += 1
    assert checked > 50


def test_importing_the_config_does_not_load_the_server_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cscapi.emulator; from cscapi.emulator import EmulatorConfig; EmulatorConfig(); "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'httpx', 'jsonschema') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_flags_over_config_file(tmp_path: Path) -> None:
    from cscapi.emulator.server import build_parser, config_from_args

    cfg_file = tmp_path / "emu.json"
    cfg_file.write_text(
        json.dumps({"seed": 1, "community_size": 7, "attachment_keys": ["a1"], "faults": {"login": {"latency": 0.5}}})
    )
    args = build_parser().parse_args(
        [
            "--config",
            str(cfg_file),
            "--seed",
            "9",
            "--attachment-key",
            "b2",
            "--fault",
            "signals:error_rate=1",
            "--no-login-rate-limit",
            "--token-lifetime",
            "60",
            "--max-batch",
            "50",
            "--admin-token",
            "t",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.seed, cfg.community_size, cfg.token_lifetime, cfg.max_batch, cfg.admin_token) == (9, 7, 60, 50, "t")
    assert list(cfg.attachment_keys) == ["a1", "b2"]
    assert set(cfg.faults) == {"login", "signals"} and not cfg.login_rate_limit.enabled


def test_allowlist_and_blocklist_validation() -> None:
    state = EmulatorState(EmulatorConfig(community_size=0))
    with pytest.raises(ApiError) as info:
        state.publish_allowlist("a", [{"value": "192.0.2.1", "expiration": "tomorrow"}])
    assert "items[0].expiration" in info.value.message
    with pytest.raises(ApiError):
        state.publish_allowlist("a", [42])
    with pytest.raises(ApiError):
        state.publish_blocklist("b", ["192.0.2.1"], duration="forever")
    with pytest.raises(ApiError):
        state.publish_blocklist("", ["192.0.2.1"])
    body = state.publish_blocklist("b", "192.0.2.1\n\n198.51.100.0/24\n")
    assert body["content"] == ["192.0.2.1", "198.51.100.0/24"]
    assert not state.remove_list("allowlist", "missing")


def test_tombstones_are_pruned_once_every_machine_has_seen_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import cscapi.emulator.state.community as state_mod

    monkeypatch.setattr(state_mod, "_TOMBSTONE_PRUNE_AT", 3)
    state = EmulatorState(EmulatorConfig(community_size=10))
    a, b = state.register("a" * 48, "p"), state.register("b" * 48, "p")
    for m in (a, b):
        m.scenarios = sorted({d.scenario for d in state.decisions.values()})  # as a login declaring them does
        state.stream_v3(m, startup=True, community_pull=True, additional_pull=True, base_url="http://x/")
    values = [v for _, v, _ in list(state.decisions)[:5]]
    state.remove_decisions(values)
    state.stream_v3(a, startup=False, community_pull=True, additional_pull=True, base_url="http://x/")
    assert len(state.tombstones) == 5  # b has not seen them yet
    delta = json.loads(
        state.stream_v3(b, startup=False, community_pull=True, additional_pull=True, base_url="http://x/")
    )
    assert sorted(v for g in delta["deleted"] for v in g["decisions"]) == sorted(values)
    assert len(state.tombstones) == 0


# ---- deltas: a client applying every answer always mirrors the server ----------------------------------------------

_VALUES = [f"192.0.2.{i}" for i in range(1, 13)] + ["2001:db8::1", "198.51.100.0/24"]
_SCENARIOS = ["crowdsecurity/ssh-bf", "crowdsecurity/http-probing"]


def _apply(local: dict[str, dict[str, float]], body: dict[str, Any], now: float, startup: bool) -> None:
    """What a client does with an answer: `deleted` drops every decision on a value, `new` sets one per scenario."""
    from cscapi.timeutil import parse_go_duration

    if startup:
        local.clear()
    for value in (v for g in body["deleted"] for v in g["decisions"]):
        local.pop(value, None)
    for group in body["new"]:
        for d in group["decisions"]:
            local.setdefault(d["value"], {})[group["scenario"]] = now + parse_go_duration(d["duration"])


def _ops() -> Any:
    from hypothesis import strategies as st

    value = st.sampled_from(_VALUES)
    scenario = st.sampled_from(_SCENARIOS)
    some_scenario = st.one_of(st.none(), scenario)
    return st.lists(
        st.one_of(
            st.tuples(st.just("add"), value, scenario, st.integers(1, 50)),
            st.tuples(st.just("delete"), value, some_scenario, st.just(0)),
            st.tuples(st.just("expire"), value, some_scenario, st.just(0)),
            st.tuples(st.just("tick"), st.just(""), st.none(), st.integers(1, 30)),
            st.tuples(st.just("pull"), st.just(""), st.none(), st.integers(0, 1)),
        ),
        max_size=40,
    )


def test_delta_pulls_keep_a_client_in_sync_with_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """With several scenarios' decisions per value: after every pull the client holds exactly the server's live
    values, with each live decision's own expiry; a decision removed while its value has others may linger on the
    client (deleted lists values, protocol §6.2) but never outlives the value's last decision on the server."""
    from hypothesis import given, settings

    import cscapi.emulator.state.accounts as state_mod

    monkeypatch.setattr(state_mod, "_SCRYPT_N", 2)  # 300 registrations: the password hash is not under test here

    @settings(max_examples=300, deadline=None)
    @given(ops=_ops())
    def run(ops: list[tuple[str, str, str | None, int]]) -> None:
        clock = Clock()
        state = EmulatorState(EmulatorConfig(community_size=0, clock=clock, snapshot_cache=False))
        m = state.register("c" * 48, "pw")
        m.scenarios = sorted(_SCENARIOS)  # as a login declaring them does
        local: dict[str, dict[str, float]] = {}
        for op, value, scenario, n in [*ops, ("pull", "", None, 0)]:
            if op == "add":
                state.add_decisions([{"value": value, "scenario": scenario, "duration": float(n)}])
            elif op == "delete":
                state.remove_decisions([value], scenario=scenario)
            elif op == "expire":
                state.remove_decisions([value], expire=True, scenario=scenario)
            elif op == "tick":
                clock.now += n
            else:
                startup = n == 1
                body = json.loads(
                    state.stream_v3(m, startup=startup, community_pull=True, additional_pull=True, base_url="http://x/")
                )
                for group in body["deleted"]:
                    assert len(group["decisions"]) == len(set(group["decisions"]))  # a value once per answer
                _apply(local, body, clock.now, startup)
                for v, by_scenario in list(local.items()):  # what a client's own countdown removes
                    for sc in [sc for sc, until in by_scenario.items() if until <= clock.now]:
                        del by_scenario[sc]
                    if not by_scenario:
                        del local[v]
                live: dict[str, dict[str, float]] = {}
                for d in state.decisions.values():
                    live.setdefault(d.value, {})[d.scenario] = d.expires_at
                assert set(local) == set(live)
                for v, by_scenario in live.items():
                    for sc, until in by_scenario.items():
                        assert local[v][sc] == until

    run()


def test_int_duration_matches_format_go_duration() -> None:
    from cscapi.emulator.state.community import _int_duration
    from cscapi.timeutil import format_go_duration, parse_go_duration

    for seconds in [1, 59, 60, 61, 3599, 3600, 3661, 86399, 86400, 604800, 1234567]:
        assert _int_duration(seconds) == format_go_duration(seconds)
        assert parse_go_duration(_int_duration(seconds)) == seconds
