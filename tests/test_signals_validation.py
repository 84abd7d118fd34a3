"""Signal building and validation (cscapi.signals, cscapi.utils): what a correct signal is, and clear refusals."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cscapi.errors import InvalidIPError, ValidationError
from cscapi.models import Signal, SignalDecision, Source
from cscapi.signals import is_canonical, validate_scenarios, validate_signal, validate_signals
from cscapi.utils import create_signal, generate_machine_id, generate_machine_id_from_key, generate_password

MID = generate_machine_id_from_key("host-1", prefix="test")


# ---- machine ids and passwords ----------------------------------------------------------------------------


def test_machine_id_from_key_is_deterministic_48_chars_prefix_counted() -> None:
    a = generate_machine_id_from_key(key="<key>", prefix="mycompany")
    assert a == generate_machine_id_from_key(key="<key>", prefix="mycompany")
    assert len(a) == 48 and a.startswith("mycompany") and re.fullmatch(r"[a-z0-9]{48}", a)
    assert a != generate_machine_id_from_key(key="<other>", prefix="mycompany")
    b = generate_machine_id_from_key("<key>")
    assert len(b) == 48 and b != a
    assert len(generate_machine_id_from_key("k", prefix="p" * 16)) == 48


@pytest.mark.parametrize("prefix", ["MyCompany", "my-company", "x" * 17, "é"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValidationError) as info:
        generate_machine_id_from_key("k", prefix=prefix)
    assert info.value.field == "prefix"
    with pytest.raises(ValidationError):
        generate_machine_id(prefix)


def test_random_ids_and_passwords() -> None:
    ids = {generate_machine_id("acme") for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 48 and i.startswith("acme") and re.fullmatch(r"[a-z0-9]+", i) for i in ids)
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50 and all(re.fullmatch(r"[A-Za-z0-9]{64}", p) for p in passwords)
    with pytest.raises(ValidationError):
        generate_password(8)


# ---- create_signal ----------------------------------------------------------------------------------------


def test_legacy_call_shape() -> None:
    signal = create_signal(
        attacker_ip="192.0.2.10",
        scenario="crowdsecurity/ssh-bf",
        created_at="2023-11-17 10:20:46 +0000",
        machine_id=generate_machine_id_from_key(key="<key>", prefix="mycompany"),
    )
    assert signal.created_at == signal.start_at == signal.stop_at == "2023-11-17T10:20:46.000000Z"
    assert signal.source == Source(scope="ip", value="192.0.2.10", ip="192.0.2.10")
    assert signal.is_whisper and signal.decisions is None
    assert uuid.UUID(signal.uuid or "")
    assert signal.scenario_trust == "manual"
    assert "192.0.2.10" in (signal.message or "") and "crowdsecurity/ssh-bf" in (signal.message or "")


def test_decision_signal_convenience() -> None:
    signal = create_signal(
        "2001:db8::7", "crowdsecurity/ssh-bf", "2024-05-01T00:00:00Z", MID, decision_type="ban", duration="24h"
    )
    (decision,) = signal.decisions or []
    assert decision.type == "ban" and decision.duration == "24h" and decision.origin == "crowdsec"
    assert decision.scope == "ip" and decision.value == "2001:db8::7" and decision.scenario == "crowdsecurity/ssh-bf"
    assert decision.until == "2024-05-02T00:00:00.000000Z"
    assert uuid.UUID(decision.uuid or "") and decision.simulated is False
    seconds = create_signal("192.0.2.1", "a/b", machine_id=MID, decision_type="captcha", duration=timedelta(hours=2))
    assert (seconds.decisions or [])[0].duration == "2h0m0s"
    with pytest.raises(ValidationError) as info:
        create_signal("192.0.2.1", "a/b", machine_id=MID, decision_type="ban", duration="soon")
    assert info.value.field == "duration"
    with pytest.raises(ValidationError):
        create_signal("192.0.2.1", "a/b", machine_id=MID, decisions=[{"duration": "1h"}], decision_type="ban")


def test_caller_values_are_never_overwritten() -> None:
    fixed_uuid = str(uuid.uuid4())
    source = {"scope": "ip", "value": "192.0.2.50", "as_number": "64500", "cn": "DE", "as_name": "mine"}
    signal = create_signal(
        "192.0.2.99",  # the explicit source wins over attacker_ip
        "acme/http-bf",
        "2024-01-01T00:00:00Z",
        MID,
        source=source,
        cn="FR",  # the source dict already gave cn: kept
        latitude=1.5,
        message="custom message",
        uuid=fixed_uuid,
        scenario_version="2.0",
        scenario_hash="deadbeef",
        scenario_trust="certified",
        start_at="2023-12-31T23:00:00Z",
        decisions=[
            {"type": "ban", "duration": "1h", "origin": "cscli", "uuid": fixed_uuid, "until": "2030-01-01T00:00:00Z"}
        ],
    )
    assert signal.source is not None
    assert (signal.source.value, signal.source.cn, signal.source.as_number, signal.source.latitude) == (
        "192.0.2.50",
        "DE",
        "64500",
        1.5,
    )
    assert signal.message == "custom message" and signal.uuid == fixed_uuid
    assert (signal.scenario_version, signal.scenario_hash, signal.scenario_trust) == ("2.0", "deadbeef", "certified")
    assert signal.start_at == "2023-12-31T23:00:00.000000Z" and signal.stop_at == "2024-01-01T00:00:00.000000Z"
    (d,) = signal.decisions or []
    assert (d.origin, d.uuid, d.until) == ("cscli", fixed_uuid, "2030-01-01T00:00:00.000000Z")
    assert source == {"scope": "ip", "value": "192.0.2.50", "as_number": "64500", "cn": "DE", "as_name": "mine"}


def test_ranges_ipv6_and_canonical_forms() -> None:
    assert create_signal("10.1.2.3/8", "a/b", machine_id=MID).source == Source(
        scope="range", value="10.0.0.0/8", range="10.0.0.0/8"
    )
    assert (create_signal("2001:DB8:0:0::1", "a/b", machine_id=MID).source or Source()).value == "2001:db8::1"
    assert (create_signal("::ffff:192.0.2.1", "a/b", machine_id=MID).source or Source()).value == "192.0.2.1"
    v6range = create_signal("2001:db8::/32", "a/b", machine_id=MID, decision_type="ban", duration="1h")
    assert (v6range.decisions or [])[0].scope == "range"
    assert (v6range.decisions or [])[0].value == "2001:db8::/32"


def test_context_forms() -> None:
    as_dict = create_signal("192.0.2.1", "a/b", machine_id=MID, context={"uri": "/x", "status": 404})
    assert [(c.key, c.value) for c in as_dict.context or []] == [("uri", "/x"), ("status", "404")]
    as_list = create_signal("192.0.2.1", "a/b", machine_id=MID, context=[{"key": "k", "value": "v"}])
    assert [(c.key, c.value) for c in as_list.context or []] == [("k", "v")]
    assert create_signal("192.0.2.1", "a/b", machine_id=MID, context=[]).context is None


def test_naive_datetimes_are_utc_and_offsets_are_converted() -> None:
    naive = create_signal("192.0.2.1", "a/b", datetime(2024, 3, 1, 12, 0, 0, 5), MID)
    assert naive.created_at == "2024-03-01T12:00:00.000005Z"
    offset = create_signal("192.0.2.1", "a/b", "2024-03-01T14:00:00.123456789+02:00", MID)
    assert offset.created_at == "2024-03-01T12:00:00.123456Z"
    aware = create_signal("192.0.2.1", "a/b", datetime(2024, 3, 1, 12, tzinfo=timezone(timedelta(hours=-1))), MID)
    assert aware.created_at == "2024-03-01T13:00:00.000000Z"
    now = create_signal("192.0.2.1", "a/b", machine_id=MID)
    assert now.created_at and now.created_at.startswith(str(datetime.now(timezone.utc).year))


# ---- validation errors name the field --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "error"),
    [
        ({"attacker_ip": "999.1.1.1"}, "source.value", InvalidIPError),
        ({"attacker_ip": "10.0.0.0/33"}, "source.value", InvalidIPError),
        ({"attacker_ip": "192.0.2.1", "scope": "range"}, "source.value", InvalidIPError),
        ({"scenario": "ssh-bf"}, "scenario", ValidationError),
        ({"scenario": "crowdsecurity/ssh bf"}, "scenario", ValidationError),
        ({"machine_id": "short"}, "machine_id", ValidationError),
        ({"machine_id": None}, "machine_id", ValidationError),
        ({"created_at": "yesterday"}, "created_at", ValidationError),
        ({"uuid": "not-a-uuid"}, "uuid", ValidationError),
        ({"decisions": [{"type": "ban"}]}, "decisions[0].duration", ValidationError),
        ({"decisions": [{"type": "ban", "duration": "1 hour"}]}, "decisions[0].duration", ValidationError),
        ({"decisions": [{"duration": "1h", "uuid": "x"}]}, "decisions[0].uuid", ValidationError),
        ({"latitude": 123.0}, "source.latitude", ValidationError),
        ({"start_at": "2024-01-02T00:00:00Z", "stop_at": "2024-01-01T00:00:00Z"}, "stop_at", ValidationError),
        ({"colour": "red"}, "colour", ValidationError),
    ],
)
def test_invalid_input_names_the_field(kwargs: dict[str, object], field: str, error: type[ValidationError]) -> None:
    args: dict[str, object] = {"attacker_ip": "192.0.2.1", "scenario": "crowdsecurity/ssh-bf", "machine_id": MID}
    args.update(kwargs)
    with pytest.raises(error) as info:
        create_signal(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.hint


def test_validate_signals_names_the_index_and_is_all_or_nothing() -> None:
    good = create_signal("192.0.2.1", "a/b", machine_id=MID)
    bad = Signal(scenario="a/b", source=Source(value="nope"), machine_id=MID)
    with pytest.raises(ValidationError) as info:
        validate_signals([good, good, bad])
    assert info.value.field == "signals[2].source.value"
    assert "#2" in info.value.message


def test_validate_signal_does_not_mutate_the_input() -> None:
    original = Signal(
        scenario="a/b",
        source=Source(value="2001:DB8::1"),
        machine_id=MID,
        decisions=[SignalDecision(duration="1h", type="ban")],
    )
    normalised = validate_signal(original)
    assert original.source is not None and original.source.value == "2001:DB8::1"
    assert original.decisions is not None and original.decisions[0].uuid is None
    assert normalised.source is not None and normalised.source.value == "2001:db8::1"
    assert validate_signal(normalised) == normalised  # idempotent


def test_other_scopes_pass_through() -> None:
    signal = validate_signal(Signal(scenario="a/b", source=Source(scope="Username", value="root"), machine_id=MID))
    assert signal.source is not None and (signal.source.scope, signal.source.value) == ("username", "root")


def test_scenario_lists() -> None:
    assert validate_scenarios(["a/b", "c/d", "a/b"]) == ["a/b", "c/d"]
    for bad in ([], "a/b", ["a/b", "nope"], [1]):
        with pytest.raises(ValidationError):
            validate_scenarios(bad)


def test_canonical_looking_values_are_still_checked() -> None:
    with pytest.raises(ValidationError) as info:
        create_signal("192.0.2.1", "a/b", "2024-13-01T00:00:00.000000Z", MID)
    assert info.value.field == "created_at"
    upper = "6F1F6A8E-5B1A-4B3E-9D43-0C5D1F7B1A11"
    assert create_signal("192.0.2.1", "a/b", machine_id=MID, uuid=upper).uuid == upper.lower()
    assert create_signal("192.0.2.1", "a/b", "2024-02-29T23:59:59.999999Z", MID).created_at == (
        "2024-02-29T23:59:59.999999Z"
    )


# ---- properties -----------------------------------------------------------------------------------------

_ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
_times = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.sampled_from([None, timezone.utc])
)


@settings(max_examples=150, deadline=None)
@given(ip=_ips, when=_times, ban=st.booleans(), seconds=st.integers(min_value=1, max_value=10**7))
def test_any_ip_and_time_gives_a_valid_idempotent_wire_signal(
    ip: str, when: datetime, ban: bool, seconds: int, capi_spec: dict[str, object], validate_against: object
) -> None:
    from cscapi.protocol import signal_to_wire

    signal = create_signal(
        ip, "crowdsecurity/ssh-bf", when, MID, decision_type="ban" if ban else None, duration=seconds if ban else None
    )
    assert validate_signal(signal) == signal
    item = signal_to_wire(signal)
    validate_against(capi_spec, "AddSignalsRequestItem", item)  # type: ignore[operator]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", item["created_at"])
    assert canonical(item["source"]["value"]) == item["source"]["value"]


def canonical(value: str) -> str:
    from cscapi.signals import canonical_ip

    return canonical_ip(value)


# ---- the fast path of add_signals: canonical signals are checked, not rebuilt ------------------------------


def test_created_signals_are_canonical_and_reused_as_they_are() -> None:
    whisper = create_signal("192.0.2.1", "a/b", machine_id=MID, as_name="X", cn="FR", latitude=1.5, context={"k": 1})
    ranged = create_signal("198.51.100.0/24", "a/b", machine_id=MID)
    assert is_canonical(whisper) and is_canonical(ranged)
    assert validate_signals([whisper, ranged], reuse=True)[0] is whisper
    copies = validate_signals([whisper, ranged])
    assert copies == [whisper, ranged] and copies[0] is not whisper  # without reuse: copies, as before
    banned = create_signal("192.0.2.1", "a/b", machine_id=MID, decision_type="ban", duration="4h")
    ranged_ban = create_signal("198.51.100.0/24", "a/b", machine_id=MID, decisions=[{"duration": "1h30m"}])
    assert is_canonical(banned) and is_canonical(ranged_ban)
    assert validate_signals([banned], reuse=True)[0] is banned
    other_scope = validate_signal(Signal(scenario="a/b", source=Source(scope="username", value="root"), machine_id=MID))
    assert not is_canonical(other_scope)  # rare scopes take the full path
    assert validate_signals([other_scope], reuse=True) == [other_scope]


def _mutations() -> list[tuple[str, object]]:
    return [
        ("scenario", "nope"),
        ("scenario", "a/" + "b" * 300),
        ("machine_id", "x" * 47),
        ("machine_id", None),
        ("created_at", "2024-13-01T00:00:00.000000Z"),
        ("created_at", "2024-01-01T00:00:00.000+00Z"),
        ("created_at", "\uff12\uff10\uff12\uff14-01-01T00:00:00.000000Z"),  # full-width digits
        ("start_at", "2024-02-30T00:00:00.000000Z"),
        ("stop_at", "1999-01-01T00:00:00.000000Z"),  # before start_at
        ("uuid", "not-a-uuid"),
        ("message", 5),
        ("message", "m" * 5000),
        ("scenario_hash", None),
        ("scenario_trust", ""),
        ("kind", ""),
        ("sent", True),
        ("context", []),
        ("context", [{"key": "", "value": "v"}]),
        ("source.value", "not an ip"),
        ("source.value", " 192.0.2.1"),
        ("source.value", "2001:DB8::1"),
        ("source.value", "::ffff:192.0.2.1"),
        ("source.ip", None),
        ("source.ip", "192.0.2.01"),
        ("source.range", "10.0.0.0/8"),
        ("source.scope", "IP"),
        ("source.scope", None),
        ("source.as_number", 64500),
        ("source.as_name", "a" * 5000),
        ("source.latitude", 91.0),
        ("source.latitude", float("nan")),
        ("source.longitude", 2),
    ]


def _decision_mutations() -> list[tuple[str, object]]:
    return [
        ("decisions", []),
        ("decisions", ()),
        ("decision.duration", "4 h"),
        ("decision.duration", " 4h"),
        ("decision.duration", "-4h"),
        ("decision.duration", 3600),
        ("decision.until", None),
        ("decision.until", "2024-01-01 04:00:00"),
        ("decision.uuid", None),
        ("decision.uuid", "X"),
        ("decision.scope", "IP"),
        ("decision.scope", "range"),
        ("decision.value", "192.0.2.001"),
        ("decision.value", None),
        ("decision.value", "2001:DB8::1"),
        ("decision.id", None),
        ("decision.id", True),
        ("decision.simulated", None),
        ("decision.simulated", "no"),
        ("decision.type", ""),
        ("decision.type", "b" * 5000),
        ("decision.origin", None),
        ("decision.scenario", ""),
    ]


@pytest.mark.parametrize(("name", "value"), _mutations() + _decision_mutations())
def test_a_changed_canonical_signal_is_validated_in_full(name: str, value: object) -> None:
    signal = create_signal(
        "192.0.2.1", "a/b", "2024-01-01T00:00:00.000000Z", MID, context={"k": "v"}, decision_type="ban", duration="4h"
    )
    assert is_canonical(signal)
    target: object = signal
    if name.startswith("source."):
        target, name = signal.source, name[len("source.") :]
    elif name.startswith("decision."):
        assert signal.decisions is not None
        target, name = signal.decisions[0], name[len("decision.") :]
    setattr(target, name, value)
    assert not is_canonical(signal)
    try:
        expected = validate_signal(signal)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as info:
            validate_signals([signal], reuse=True)
        assert info.value.field == f"signals[0].{exc.field}"
    else:
        (got,) = validate_signals([signal], reuse=True)
        if value is None and name == "uuid" and got.decisions and expected.decisions:  # a fresh uuid4 each time
            assert uuid.UUID(got.decisions[0].uuid or "").version == 4
            got.decisions[0].uuid = expected.decisions[0].uuid
        assert got == expected and got is not signal


_texts = st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["", " ", "a" * 4097]))


@settings(max_examples=300, deadline=None)
@given(
    ip=_ips,
    scope=st.sampled_from([None, "ip", "IP", "range", " ip"]),
    ip_field=st.one_of(st.none(), _ips, st.just("")),
    texts=st.tuples(_texts, _texts, _texts, _texts, _texts),
    coordinate=st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-200, 200)),
    times=st.tuples(*[st.sampled_from([None, "", "2024-01-01T00:00:00.000000Z", "2024-01-01 00:00:00"])] * 3),
)
def test_the_fast_path_accepts_only_what_full_validation_leaves_unchanged(
    ip: str,
    scope: str | None,
    ip_field: str | None,
    texts: tuple[str | None, ...],
    coordinate: float | None,
    times: tuple[str | None, ...],
) -> None:
    source = Source(scope=scope, value=ip, ip=ip_field, as_number=texts[0], as_name=texts[1], latitude=coordinate)
    signal = Signal(
        scenario="a/b",
        source=source,
        machine_id=MID,
        created_at=times[0],
        start_at=times[1],
        stop_at=times[2],
        uuid=str(uuid.uuid4()),
        message=texts[2] if texts[2] is not None else "m",
        scenario_version=texts[3],
        kind=texts[4],
    )
    if is_canonical(signal):
        assert validate_signal(signal) == signal
    try:
        normalised = validate_signal(signal)
    except ValidationError:
        return
    assert is_canonical(normalised) == (normalised.source is not None and normalised.source.scope in ("ip", "range"))


_decision_values = st.fixed_dictionaries(
    {
        "duration": st.sampled_from([None, "4h", " 4h", "-1s", "1h30m", "x", 60]),
        "until": st.sampled_from([None, "", "2024-01-01T04:00:00.000000Z", "2024-01-01 04:00:00"]),
        "uuid": st.sampled_from(
            [None, "", "6f1f6a8e-5b1a-4b3e-9d43-0c5d1f7b1a11", "6F1F6A8E-5B1A-4B3E-9D43-0C5D1F7B1A11"]
        ),
        "scope": st.sampled_from([None, "ip", "Ip", "range", "username"]),
        "value": st.sampled_from([None, "", "192.0.2.1", "192.0.2.0/24", "2001:DB8::1"]),
        "id": st.sampled_from([None, 0, 7, True]),
        "simulated": st.sampled_from([None, False, True, "no"]),
        "type": st.sampled_from([None, "", "ban", "captcha"]),
        "origin": st.sampled_from([None, "", "crowdsec", "cscli"]),
        "scenario": st.sampled_from([None, "", "a/b", "c/d"]),
    }
)


@settings(max_examples=300, deadline=None)
@given(ip=st.sampled_from(["192.0.2.1", "192.0.2.0/24"]), decisions=st.lists(_decision_values, max_size=3))
def test_the_fast_path_agrees_with_full_validation_on_decisions(ip: str, decisions: list[dict[str, object]]) -> None:
    signal = Signal(
        scenario="a/b",
        source=Source(value=ip),
        machine_id=MID,
        created_at="2024-01-01T00:00:00.000000Z",
        decisions=[SignalDecision(**d) for d in decisions],  # type: ignore[arg-type]
    )
    if is_canonical(signal):
        assert validate_signal(signal) == signal
    try:
        normalised = validate_signal(signal)
    except ValidationError:
        return
    if is_canonical(normalised):
        assert validate_signal(normalised) == normalised
    for decision in normalised.decisions or []:  # a decision on the source itself is reused as it is
        if decision.scope == normalised.source.scope:  # type: ignore[union-attr]
            assert _decision_is_canonical(decision, normalised)


def _decision_is_canonical(decision: SignalDecision, signal: Signal) -> bool:
    from cscapi.signals import _canonical_decision

    return _canonical_decision(decision, signal.source)  # type: ignore[arg-type]


# ---- typed errors for any input (issue 9, #11) ----------------------------------------------------------------


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("duration", ["999999999h", "9" * 400 + "h", 1e300, 10**400, float("inf"), timedelta.max])
def test_create_signal_with_an_overflowing_duration_is_a_validation_error(duration: object) -> None:
    with pytest.raises(ValidationError) as info:
        create_signal("192.0.2.1", "crowdsecurity/ssh-bf", machine_id=MID, decision_type="ban", duration=duration)  # type: ignore[arg-type]
    assert info.value.field == "duration"


def test_a_decision_ending_after_the_year_9999_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        create_signal(
            "192.0.2.1", "crowdsecurity/ssh-bf", machine_id=MID, created_at="9999-12-31T00:00:00Z",
            start_at="9999-12-31T00:00:00Z", stop_at="9999-12-31T00:00:00Z", decision_type="ban", duration="48h",
        )  # fmt: skip
    assert info.value.field == "decisions[0].duration"


def test_a_context_nested_5000_deep_is_a_validation_error_not_a_recursion_error() -> None:
    deep = _nested(5000)
    with pytest.raises(ValidationError) as info:
        create_signal("192.0.2.1", "crowdsecurity/ssh-bf", machine_id=MID, context={"k": deep})
    assert info.value.field == "context[0].value"
    with pytest.raises(ValidationError):
        validate_signal(
            {
                "scenario": "a/b",
                "machine_id": MID,
                "source": {"value": "192.0.2.1"},
                "context": [{"key": "k", "value": deep}],
            }
        )


@pytest.mark.parametrize(
    "field", ["scenario", "created_at", "start_at", "uuid", "message", "alert_id", "decisions", "context", "source"]
)
def test_any_field_nested_deep_is_a_validation_error(field: str) -> None:
    data = {"scenario": "a/b", "machine_id": MID, "source": {"value": "192.0.2.1"}, field: _nested(5000)}
    with pytest.raises(ValidationError):
        validate_signal(data)


@pytest.mark.parametrize("field", ["ip", "range", "scope", "as_number", "latitude"])
def test_a_source_field_nested_deep_or_huge_is_a_validation_error(field: str) -> None:
    for bad in (_nested(5000), 10**5000):
        with pytest.raises(ValidationError):
            validate_signal({"scenario": "a/b", "machine_id": MID, "source": {"value": "192.0.2.1", field: bad}})


@pytest.mark.parametrize("bad", [None, 5, 1.5, "192.0.2.1", b"x"])
def test_add_signals_of_a_non_list_is_a_typed_error_naming_the_argument(bad: object) -> None:
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.errors import InvalidArgumentError
    from cscapi.sql_storage import SQLStorage

    storage = SQLStorage("sqlite://")
    try:
        client = CAPIClient(storage, CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"]))
        with client, pytest.raises(InvalidArgumentError) as info:
            client.add_signals(bad)  # type: ignore[arg-type]
        assert isinstance(info.value, ValidationError) and isinstance(info.value, TypeError)
        assert info.value.field == "signals" and "signals must be a list" in str(info.value)
        assert storage.count_signals().queued == 0
    finally:
        storage.close()


@pytest.mark.anyio
@pytest.mark.parametrize("bad", [None, 5])
async def test_async_add_signals_of_a_non_list_is_the_same_typed_error(bad: object) -> None:
    from cscapi.aio import AsyncCAPIClient
    from cscapi.client import CAPIClientConfig
    from cscapi.errors import InvalidArgumentError
    from cscapi.sql_storage import SQLStorage

    storage = SQLStorage("sqlite://")
    try:
        async with AsyncCAPIClient(storage, CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"])) as client:
            with pytest.raises(InvalidArgumentError):
                await client.add_signals(bad)  # type: ignore[arg-type]
    finally:
        storage.close()
