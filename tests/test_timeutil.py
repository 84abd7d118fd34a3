"""Time values as CAPI speaks them: Go durations, RFC 3339 timestamps, HTTP dates."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cscapi.timeutil import (
    GO_MAX_DURATION,
    format_go_duration,
    format_http_date,
    format_rfc3339,
    parse_go_duration,
    parse_http_date,
    parse_timestamp,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4h", 14400.0),
        ("3h59m55.756182786s", 3 * 3600 + 59 * 60 + 55.756182786),
        ("1m30s", 90.0),
        ("-1m30s", -90.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("10us", 1e-5),
        ("10µs", 1e-5),
        ("0", 0.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "4", "h", "4x", "4h-3m", "1..5s", "four hours"])
def test_bad_go_durations_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(bad)


@given(st.integers(min_value=0, max_value=10**7))
def test_go_duration_round_trip(seconds: int) -> None:
    assert parse_go_duration(format_go_duration(seconds)) == seconds


@given(st.datetimes(timezones=st.just(timezone.utc)))
def test_rfc3339_round_trip_keeps_microseconds(moment: datetime) -> None:
    text = format_rfc3339(moment)
    assert text.endswith("Z") and len(text) == 27
    assert parse_timestamp(text) == moment


def test_naive_datetimes_are_utc_and_offsets_are_converted() -> None:
    assert format_rfc3339(datetime(2023, 11, 17, 10, 20, 46)) == "2023-11-17T10:20:46.000000Z"
    assert parse_timestamp("2023-11-17 10:20:46 +0200") == datetime(2023, 11, 17, 8, 20, 46, tzinfo=timezone.utc)
    assert parse_timestamp("2026-11-21T22:28:19.195898403Z").microsecond == 195898
    assert format_rfc3339(datetime(1, 1, 1, tzinfo=timezone.utc)) == "0001-01-01T00:00:00.000000Z"


@pytest.mark.parametrize("bad", ["", "yesterday", "2023-13-01T00:00:00Z", 1e20, float("inf"), True, None])
def test_bad_timestamps_raise_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(bad)  # type: ignore[arg-type]


def test_http_dates() -> None:
    moment = datetime(2026, 11, 21, 22, 28, 2, tzinfo=timezone.utc)
    assert format_http_date(moment) == "Sat, 21 Nov 2026 22:28:02 GMT"
    assert parse_http_date("Sat, 21 Nov 2026 22:28:02 GMT") == moment
    assert parse_http_date("not a date") is None
    assert parse_http_date(format_http_date(moment + timedelta(days=1))) == moment + timedelta(days=1)


# ---- bounds: a duration is always a finite number (issue 9, #8) ---------------------------------------------


@pytest.mark.parametrize("huge", ["999999999h", "9" * 400 + "h", "9" * 200 + "h", "2562048h", "-999999999h", "1" * 300])
def test_overflowing_durations_raise_value_error_never_infinity(huge: str) -> None:
    with pytest.raises(ValueError, match=r"out of range|too long|invalid"):
        parse_go_duration(huge)


def test_the_longest_go_duration_is_accepted() -> None:
    assert parse_go_duration("2562047h47m16s") == pytest.approx(GO_MAX_DURATION, abs=1)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_format_go_duration_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        format_go_duration(bad)


def test_bad_timestamps_nested_deep_or_huge_raise_value_error() -> None:
    nested: list[object] = []
    for _ in range(5000):
        nested = [nested]
    for bad in (nested, 10**5000, {"a": nested}):
        with pytest.raises(ValueError):
            parse_timestamp(bad)  # type: ignore[arg-type]
