"""Issue 13: the lookup memoises slow-path answers (range hits and misses; a ``::ffff:a.b.c.d`` query's under its
IPv4 tail) in the index's ``fast`` map, so that a repeated client costs one dictionary probe. The memo must answer
exactly as the index does, stay bounded, never touch ``exact`` (the index without a horizon), never hold a live-mode
miss, never outlive the horizon's promise (a memoised range answer is re-read once the horizon passes), and start over
when a flood filled it."""

from __future__ import annotations

import ipaddress
import random
import socket
import time

import pytest

from cscapi.errors import ConfigurationError, InvalidIPError
from cscapi.lapi import LapiClient
from cscapi.remediation import RemediationEngine
from cscapi.remediation.index import MEMO_ENTRIES, build_index
from test_remediation_lookup_equivalence import NOW, Clock, Reference, make_items, make_state, probes, spellings


def _engine(clock: Clock) -> RemediationEngine:
    engine = RemediationEngine(None, "memory://", clock=clock, sync_interval_ms=0)
    engine._renewing = True  # no background horizon renewal: the tests install the index they inspect
    return engine


def test_a_repeated_query_is_answered_from_the_memo_exactly_as_the_index_answers() -> None:
    rng = random.Random(5)
    items = make_items(rng, 1500, True)
    clock = Clock()
    engine = _engine(clock)
    try:
        index = build_index(make_state(items), engine.policy, "v", NOW).with_horizon(NOW)
        assert index.memo_limit == len(index.exact) + MEMO_ENTRIES
        room = 400
        index.memo_limit = len(index.exact) + room
        engine._index = index
        reference = Reference(items, engine.policy)
        queries = [s for ip in probes(rng, items, 1000) for s in spellings(ip)]
        slow = [q for q in dict.fromkeys(queries) if q not in index.exact]
        assert len(slow) > 2 * room  # range hits, misses and spellings enough to fill the memo
        covering = {q: reference.covering(q) for q in queries}
        for now in (NOW, NOW + 150, NOW + 450, NOW + 5000):  # the last pass is past the horizon (NOW + 600)
            clock.now = now
            for _ in range(2):  # a first sight fills the memo, the repeat reads it
                for q in queries:
                    got = engine.get_ip_remediation(q)
                    assert (got.remediation, got.origin) in reference.answers(covering[q], now), (q, now, got)
        # bounded: exactly ``room`` memoised keys, all of them slow-path spellings; ``exact`` untouched
        memoised = [k for k in index.fast if k not in index.exact]
        assert len(memoised) == room and len(index.fast) == index.memo_limit
        assert set(memoised) <= set(slow)
        assert len(index.exact) == len(set(index.exact)) and all(k in index.fast for k in index.exact)
    finally:
        engine.close()


def test_a_mapped_spelling_is_answered_and_memoised_as_its_ipv4_tail() -> None:
    """``::ffff:a.b.c.d`` probes its IPv4 tail only: a range hit or a miss is memoised under the tail, so the plain
    and the mapped spelling share one entry. Other spellings are memoised as they are; ``::ffff:abcd`` (IPv6 text
    with a tail that is no IPv4 address) is answered the IPv6 way and memoised nowhere: not as ``abcd``."""
    items = [("10.0.0.1", "ban", "CAPI", NOW + 3600), ("10.1.0.0/16", "captcha", "CAPI", NOW + 3600)]
    clock = Clock()
    engine = _engine(clock)
    try:
        engine._index = index = build_index(make_state(items), engine.policy, "v", NOW).with_horizon(NOW)
        assert engine.get_ip_remediation("::ffff:10.0.0.1").remediation == "ban"
        assert len(index.fast) == len(index.exact)  # an exact hit by its tail: nothing to memoise
        assert engine.get_ip_remediation("::ffff:10.1.2.3").remediation == "captcha"  # a range hit, by its tail
        assert "10.1.2.3" in index.fast and "::ffff:10.1.2.3" not in index.fast
        assert engine.get_ip_remediation("10.1.2.3").remediation == "captcha"  # the plain spelling: the same entry
        assert engine.get_ip_remediation("::ffff:10.2.0.1").remediation == "bypass"
        assert engine.get_ip_remediation("::ffff:10.2.0.1").remediation == "bypass"
        assert "10.2.0.1" in index.fast
        assert engine.get_ip_remediation("::ffff:a01:203").remediation == "captcha"  # ::ffff:10.1.2.3 in hex
        assert engine.get_ip_remediation("::FFFF:10.1.2.3").remediation == "captcha"
        assert {"::ffff:a01:203", "::FFFF:10.1.2.3"} <= set(index.fast)
        assert engine.get_ip_remediation("::ffff:abcd").remediation == "bypass"  # 0:0:0:0:0:0:ffff:abcd
        assert "abcd" not in index.fast and "::ffff:abcd" not in index.fast
        with pytest.raises(InvalidIPError):
            engine.get_ip_remediation("abcd")  # never answered from a memo of the tail above
    finally:
        engine.close()


def test_no_memo_without_a_horizon_and_none_for_address_objects() -> None:
    """Before its horizon is set, ``fast`` *is* ``exact``: a memo there would turn misses into keys of the index."""
    items = [("10.1.0.0/16", "ban", "CAPI", NOW + 3600)]
    clock = Clock()
    engine = _engine(clock)
    try:
        engine._index = index = build_index(make_state(items), engine.policy, "v", NOW)
        assert index.fast is index.exact and index.memo_limit == 0
        for ip in ("10.1.2.3", "10.2.0.1", "::ffff:10.1.2.3", "2001:db8::1"):
            engine.get_ip_remediation(ip)
        assert len(index.exact) == 0  # one range: no exact keys, before and after
        engine._index = index = index.with_horizon(NOW)
        for address in (ipaddress.IPv4Address("10.1.2.3"), ipaddress.IPv6Address("::ffff:10.1.2.3")):
            assert engine.get_ip_remediation(address).remediation == "ban"  # type: ignore[arg-type]
        assert engine.get_ip_remediation(ipaddress.IPv6Address("2001:db8::1")).remediation == "bypass"  # type: ignore[arg-type]

        class Text(str):
            """A str subclass (its hash and equality could be anything: never a key of the memo)."""

        for text, expected in (("10.1.2.3", "ban"), ("::ffff:10.1.2.3", "ban"), ("10.2.0.1", "bypass")):
            assert engine.get_ip_remediation(Text(text)).remediation == expected
        assert len(index.fast) == 1 and index.memo_limit == MEMO_ENTRIES  # the plain "10.1.2.3": a str tail

        class Odd:
            """Sorts before anything and cannot be hashed: still an InvalidIPError, not a TypeError."""

            __hash__ = None  # type: ignore[assignment]

            def __lt__(self, other: object) -> bool:
                return True

        for bad in (Odd(), ["10.1.2.3"], b"::ffff:10.1.2.3", None):
            with pytest.raises(InvalidIPError):
                engine.get_ip_remediation(bad)  # type: ignore[arg-type]
    finally:
        engine.close()


def test_a_memoised_range_answer_is_read_again_past_the_horizon() -> None:
    """A range ban outliving the horizon is memoised bare; once it expires (after the horizon) the answer is clean."""
    items = [("10.1.0.0/16", "ban", "CAPI", NOW + 1000)]
    clock = Clock()
    engine = _engine(clock)
    try:
        engine._index = index = build_index(make_state(items), engine.policy, "v", NOW).with_horizon(NOW)
        assert engine.get_ip_remediation("10.1.2.3").remediation == "ban"
        assert index.fast["10.1.2.3"] is engine.get_ip_remediation("10.1.2.3")  # bare: valid until the horizon
        clock.now = NOW + 900  # past the horizon, before the expiry
        assert engine.get_ip_remediation("10.1.2.3").remediation == "ban"
        clock.now = NOW + 1001
        assert engine.get_ip_remediation("10.1.2.3").remediation == "bypass"
        assert engine.get_ip_remediation("::ffff:10.1.2.3").remediation == "bypass"
    finally:
        engine.close()


def test_a_live_mode_miss_is_never_memoised() -> None:
    """In live mode the source answers misses (its own cache decides how long): a memoised clean answer would stop
    the engine from asking. A dead LAPI answers the fallback each time, and each miss is asked again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LapiClient(f"http://127.0.0.1:{port}/", api_key="k", mode="live", max_retries=0)
    clock = Clock()
    engine = RemediationEngine(client, "memory://", clock=clock, sync_interval_ms=0, fallback_remediation="captcha")
    engine._renewing = True
    try:
        items = [("10.1.0.0/16", "ban", "CAPI", NOW + 3600)]
        engine._index = index = build_index(make_state(items), engine.policy, "v", NOW).with_horizon(NOW)
        for _ in range(2):
            assert engine.get_ip_remediation("10.2.0.1").remediation == "captcha"  # the fallback
            assert engine.get_ip_remediation("10.1.2.3").remediation == "ban"  # a range hit: the index answers
        assert engine.live.failures == 2
        assert "10.2.0.1" not in index.fast and "10.1.2.3" in index.fast
    finally:
        engine.close()
        client.close()


@pytest.mark.parametrize("memo", [0, 2])
def test_lookup_memo_sets_the_room_of_each_renewed_map(memo: int) -> None:
    """``lookup_memo`` reaches the maps the engine derives itself (the background horizon renewal): 0 memoises
    nothing, 2 memoises two answers, whatever the traffic."""
    clock = Clock()
    engine = RemediationEngine(None, "memory://", clock=clock, sync_interval_ms=0, lookup_memo=memo)
    try:
        items = [("10.0.0.1", "ban", "CAPI", NOW + 3600), ("10.1.0.0/16", "captcha", "CAPI", NOW + 3600)]
        engine._index = build_index(make_state(items), engine.policy, "v", NOW)
        assert engine.get_ip_remediation("10.0.0.1").remediation == "ban"  # no horizon yet: a renewal starts
        deadline = time.monotonic() + 10
        while engine.index.horizon == float("-inf") and time.monotonic() < deadline:
            time.sleep(0.01)
        index = engine.index
        assert index.horizon == NOW + 600
        for ip in ("10.1.2.3", "10.2.0.1", "10.3.0.1", "2001:db8::1", "10.1.2.3"):
            engine.get_ip_remediation(ip)
        assert len(index.fast) - len(index.exact) == memo
    finally:
        engine.close()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", None])
def test_lookup_memo_must_be_a_count(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="lookup_memo"):
        RemediationEngine(None, "memory://", lookup_memo=bad)  # type: ignore[arg-type]


def _wait_for_a_new_map(engine: RemediationEngine, old: object) -> None:
    deadline = time.monotonic() + 10
    while (engine.index is old or engine.index.horizon == float("-inf")) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_full_memo_starts_over_after_a_minute_for_the_clients_that_come_back() -> None:
    """A burst of one-off addresses fills the memo; a client that keeps coming back is memoised again once the memo
    is a minute old (a fresh map), not only at the next refresh. Misses alone drive it: no exact hit is needed."""
    clock = Clock()
    engine = RemediationEngine(None, "memory://", clock=clock, sync_interval_ms=0, lookup_memo=3)
    try:
        items = [("10.1.0.0/16", "captcha", "CAPI", NOW + 7200)]  # ranges only: no exact key at all
        engine._index = build_index(make_state(items), engine.policy, "v", NOW)
        assert not engine.index.exact
        engine.get_ip_remediation("10.9.0.1")  # a miss on an index without its own map: one is derived
        _wait_for_a_new_map(engine, None)
        first = engine.index
        assert first.horizon == NOW + 600
        for ip in ("10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"):  # one-off addresses: the memo is full
            engine.get_ip_remediation(ip)
        assert len(first.fast) == 3
        clock.now = NOW + 30  # full, but younger than a minute: kept
        assert engine.get_ip_remediation("10.1.2.3").remediation == "captcha"
        assert engine.index is first and "10.1.2.3" not in first.fast
        clock.now = NOW + 61  # full and a minute old: the next slow path derives a fresh map
        assert engine.get_ip_remediation("10.1.2.3").remediation == "captcha"
        _wait_for_a_new_map(engine, first)
        fresh = engine.index
        assert fresh is not first and fresh.horizon == NOW + 661 and len(fresh.fast) == 0
        assert engine.get_ip_remediation("10.1.2.3").remediation == "captcha"
        assert "10.1.2.3" in fresh.fast  # the client that came back is one probe again
    finally:
        engine.close()


def test_a_userstring_answers_like_its_str_whatever_the_memo_holds() -> None:
    from collections import UserString

    items = [("10.0.0.1", "ban", "CAPI", NOW + 3600), ("10.1.0.0/16", "captcha", "CAPI", NOW + 3600)]
    clock = Clock()
    engine = _engine(clock)
    try:
        engine._index = build_index(make_state(items), engine.policy, "v", NOW).with_horizon(NOW)
        queries = ("10.1.2.3", "::ffff:10.0.0.1", "::ffff:10.1.2.3", "10.2.0.1", "2001:db8::1")
        for now in (NOW, NOW + 700):  # before and past the horizon
            clock.now = now
            for _ in range(2):  # before and after the plain string is memoised
                for ip in queries:
                    expected = engine.get_ip_remediation(ip)
                    assert engine.get_ip_remediation(UserString(ip)) == expected, (ip, now)  # type: ignore[arg-type]
        with pytest.raises(InvalidIPError):
            engine.get_ip_remediation(UserString("10.0.0.256"))  # type: ignore[arg-type]
    finally:
        engine.close()


def test_an_object_whose_comparison_raises_valueerror_is_an_invalid_ip() -> None:
    class ArrayLike:
        """Compares elementwise and has no truth value (as a numpy array): ``ip < ':'`` raises ValueError."""

        __hash__ = None  # type: ignore[assignment]

        def __lt__(self, other: object) -> bool:
            raise ValueError("the truth value of an array with more than one element is ambiguous")

    engine = _engine(Clock())
    try:
        with pytest.raises(InvalidIPError):
            engine.get_ip_remediation(ArrayLike())  # type: ignore[arg-type]
    finally:
        engine.close()
