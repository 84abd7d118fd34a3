"""Arbitrary JSON into the signal validator and the stream parser: only typed errors ever come out (issue 9, #11)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cscapi.errors import CAPIError, ValidationError
from cscapi.models import DecisionStream
from cscapi.protocol import parse_stream
from cscapi.protocol.http import Response
from cscapi.signals import validate_signal, validate_signals

_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["1.2.3.4", "0.0.0.0/0", "::/0", "24h", "999999999h", "9" * 400 + "h", "2023-11-17T10:20:46Z"])
)
_json = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)


def _maybe(valid: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(valid), _json)


_DECISION = {"duration": "4h", "type": "ban", "scope": "ip", "value": "192.0.2.1", "until": "2030-01-01T00:00:00Z"}
_SIGNAL_FIELDS = {
    "scenario": _maybe("crowdsecurity/ssh-bf"),
    "source": st.one_of(
        st.just({"scope": "ip", "value": "192.0.2.1"}),
        st.fixed_dictionaries(
            {}, optional={k: _maybe(v) for k, v in {"scope": "range", "value": "10.0.0.0/8"}.items()}
        ),
        _json,
    ),
    "machine_id": _maybe("a" * 48),
    "created_at": _maybe("2023-11-17T10:20:46Z"),
    "start_at": _maybe("2023-11-17T10:20:46Z"),
    "stop_at": _maybe("2023-11-17T10:20:47Z"),
    "uuid": _maybe("00000000-0000-4000-8000-000000000000"),
    "message": _maybe("m"),
    "scenario_trust": _maybe("manual"),
    "decisions": st.one_of(
        st.lists(st.fixed_dictionaries({}, optional={k: _maybe(v) for k, v in _DECISION.items()}), max_size=3),
        _json,
    ),
    "context": st.one_of(st.lists(st.fixed_dictionaries({"key": _maybe("k"), "value": _json}), max_size=3), _json),
    "kind": _maybe(None),
    "alert_id": _maybe(None),
}
_signals = st.fixed_dictionaries({}, optional=_SIGNAL_FIELDS)


@_FUZZ
@given(_signals)
def test_validate_signal_raises_only_validation_errors(data: dict[str, Any]) -> None:
    with contextlib.suppress(ValidationError):
        validate_signal(data)
    with contextlib.suppress(ValidationError):
        validate_signals([data, data])


@_FUZZ
@given(_json)
def test_validate_signal_of_any_json_raises_only_validation_errors(data: Any) -> None:
    with contextlib.suppress(ValidationError):
        validate_signal(data)
    with contextlib.suppress(ValidationError):
        validate_signals(data)


_LINK = {"name": "tor", "url": "http://l/x", "remediation": "ban", "scope": "ip", "duration": "24h", "id": "a1"}
_streams = st.fixed_dictionaries(
    {},
    optional={
        "new": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "scenario": _maybe("crowdsecurity/ssh-bf"),
                        "scope": _maybe("range"),
                        "decisions": st.one_of(
                            st.lists(
                                st.fixed_dictionaries({}, optional={"value": _json, "duration": _maybe("4h")}),
                                max_size=3,
                            ),
                            _json,
                        ),
                    },
                ),
                max_size=3,
            ),
            _json,
        ),
        "deleted": st.one_of(
            st.lists(st.fixed_dictionaries({}, optional={"scope": _maybe("ip"), "decisions": _json}), max_size=3),
            _json,
        ),
        "links": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "blocklists": st.one_of(
                        st.lists(st.fixed_dictionaries({}, optional={k: _maybe(v) for k, v in _LINK.items()})),
                        _scalars,
                        _json,
                    ),
                    "allowlists": st.one_of(
                        st.lists(st.fixed_dictionaries({}, optional={k: _maybe(v) for k, v in _LINK.items()})),
                        _scalars,
                        _json,
                    ),
                },
            ),
            _json,
        ),
    },
)


def _parse(body: Any) -> DecisionStream | None:
    try:
        return parse_stream(Response(200, {"content-type": "application/json"}, json.dumps(body).encode()))
    except CAPIError:
        return None


@_FUZZ
@given(st.one_of(_streams, _json))
@example({"links": {"blocklists": 5}})  # a TypeError once
@example({"links": {"allowlists": True, "blocklists": 1.5}})
@example(
    {"new": [{"scenario": "a/b", "scope": "range", "decisions": [{"value": "::/0", "duration": "9" * 400 + "h"}]}]}
)
def test_stream_parser_returns_a_stream_or_a_typed_error(body: Any) -> None:
    stream = _parse(body)
    if stream is not None:
        for d in stream.new:
            assert isinstance(d.value, str) and 0 <= d.duration < float("inf")
        assert stream.skipped >= 0


def test_list_parsing_logs_a_skipped_value_nested_deep_or_huge_by_its_type(caplog: Any) -> None:
    import logging

    from cscapi.remediation.parsing import ParseTally, parse_allowlist

    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    tally = ParseTally()
    logger = logging.getLogger("cscapi.test.parsing")
    with caplog.at_level(logging.WARNING, logger="cscapi.test.parsing"):
        tally.skip("not a string", deep, logger, "allowlist 'a'")  # what a line's "value" can be
        tally.skip("not a string", 10**5000, logger, "allowlist 'a'")
        entries = parse_allowlist(
            '{"value": ' + "[" * 900 + "]" * 900 + '}\n{"value": "192.0.2.1"}\n', 0.0, tally, logger, "a"
        )
    assert tally.reasons == {"not a string": 3} and entries == {"192.0.2.1": None}
    assert "skipped a list in allowlist 'a'" in caplog.text and "skipped a int in allowlist 'a'" in caplog.text
