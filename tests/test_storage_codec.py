"""Signals to stored JSON and back (cscapi._sql.codec): our own payloads, older or foreign ones, and bad values."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cscapi._sql import codec
from cscapi._sql.schema import CLAIMED, SENT
from cscapi.errors import StorageError, ValidationError
from cscapi.models import Context, Signal, SignalDecision, Source
from test_storage_support import make_signal


def stored(signal: Signal) -> str:
    return codec.payload_of(signal)


def test_payload_is_compact_unicode_json_without_the_local_fields() -> None:
    signal = make_signal(1, message="attaque à 10:20 ✓")
    signal.alert_id, signal.sent = 42, True
    payload = stored(signal)
    assert ", " not in payload and ": " not in payload  # compact separators
    assert "à 10:20 ✓" in payload  # not \\u-escaped
    data = json.loads(payload)
    assert "alert_id" not in data and "sent" not in data
    assert data["decisions"][0]["duration"] == "24h" and data["context"] == [{"key": "target_user", "value": "root"}]


@pytest.mark.parametrize("shape", ["decision", "whisper", "no source"])
def test_our_own_payload_comes_back_equal_with_its_local_fields(shape: str) -> None:
    overrides: dict[str, Any] = {"whisper": {"decisions": None, "context": None}, "no source": {"source": None}}.get(
        shape, {}
    )
    signal = make_signal(3, **overrides)
    back = codec.signal_from_row(17, stored(signal), SENT)
    assert back.alert_id == 17 and back.sent is True
    back.alert_id, back.sent = None, False
    assert back == signal
    assert back.to_dict() == signal.to_dict()
    if signal.source is not None:
        assert type(back.source) is Source
    for decision in back.decisions or []:
        assert type(decision) is SignalDecision
    for item in back.context or []:
        assert type(item) is Context
    assert codec.signal_from_row(18, stored(signal), CLAIMED).sent is False


def test_two_rows_of_one_payload_are_independent_objects() -> None:
    payload = stored(make_signal(4))
    first, second = codec.signal_from_row(1, payload, SENT), codec.signal_from_row(2, payload, SENT)
    assert first.source is not None and second.source is not None
    first.source.value = "changed"
    assert second.source.value != "changed" and first.alert_id == 1 and second.alert_id == 2


def test_a_foreign_payload_with_unknown_or_missing_keys_is_read_like_from_dict() -> None:
    data = json.loads(stored(make_signal(5)))
    data["added_by_a_newer_version"] = {"x": 1}
    data["source"]["unknown"] = "y"
    data["decisions"][0]["extra"] = 1
    del data["kind"], data["message"]  # an older payload: defaults apply
    back = codec.signal_from_row(9, json.dumps(data), CLAIMED)
    expected = Signal.from_dict(data)
    expected.alert_id, expected.sent = 9, False
    assert back == expected
    assert back.message == "" and back.kind is None
    assert isinstance(back.source, Source) and back.source.value == "192.0.2.5"
    assert back.decisions is not None and isinstance(back.decisions[0], SignalDecision)


@pytest.mark.parametrize("payload", ["not json", "[1, 2]", '"text"', "null", "{"])
def test_an_unreadable_payload_is_a_storage_error_naming_the_row(payload: str) -> None:
    with pytest.raises(StorageError) as info:
        codec.signal_from_row(123, payload, CLAIMED)
    assert "alert_id 123" in str(info.value)
    assert "delete_signals" in (info.value.hint or "")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()])
def test_a_value_json_cannot_hold_is_a_validation_error(bad: Any) -> None:
    signal = make_signal(6)
    assert signal.source is not None
    signal.source.latitude = bad
    with pytest.raises(ValidationError) as info:
        codec.payload_of(signal)
    assert signal.uuid is not None and signal.uuid in str(info.value)
