"""Semantics of the remediation engine (issue 4), each one a test, on the memory store with a scripted source.

The source is a test double of the network boundary only (it returns the client's real ``DecisionStream`` and
``LinkDownload`` values); everything from the stream to the lookup is the engine's real code.
"""

from __future__ import annotations

import logging
from datetime import timezone
from ipaddress import ip_address

import pytest

from cscapi.errors import (
    ConfigurationError,
    InvalidIPError,
    RefreshInProgressError,
    RefreshTooSoonError,
    ServerError,
    TransportError,
)
from cscapi.remediation import CLEAN, ListStatus, Remediation, RemediationEngine
from test_remediation_support import Clock, FakeSource, allowlist, blocklist, decision, stream


def make(src: FakeSource | None = None, clock: Clock | None = None, **options: object) -> RemediationEngine:
    return RemediationEngine(src or FakeSource(), "memory://", clock=clock or Clock(), **options)  # type: ignore[arg-type]


def refresh(engine: RemediationEngine, *items: object, **kw: object) -> object:
    src: FakeSource = engine.client
    src.streams.append(stream(*items, **kw))  # type: ignore[arg-type]
    return engine.refresh_decisions(force=True)


# ---- the result object ---------------------------------------------------------------------------------------


def test_remediation_is_a_frozen_object_and_a_php_like_mapping() -> None:
    engine = make()
    refresh(engine, [decision("203.0.113.7")])
    r = engine.get_ip_remediation("203.0.113.7")
    assert (r.remediation, r.origin) == ("ban", "CAPI")
    assert r["remediation"] == "ban" and r["origin"] == "CAPI"
    assert dict(r) == {"remediation": "ban", "origin": "CAPI"}
    assert r == {"remediation": "ban", "origin": "CAPI"}
    with pytest.raises(AttributeError):
        r.remediation = "bypass"  # type: ignore[misc]
    with pytest.raises(KeyError):
        r["other"]
    assert engine.get_ip_remediation("198.51.100.1") == Remediation("bypass", "clean") == CLEAN


# ---- addresses, ranges, canonical forms ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [0, 1, 7, 8, 15, 16, 17, 23, 24, 25, 30, 31, 32])
def test_ipv4_ranges_of_every_prefix_length(prefix: int) -> None:
    engine = make()
    refresh(engine, [decision(f"10.20.30.40/{prefix}", scope="range")])
    network = __import__("ipaddress").ip_network(f"10.20.30.40/{prefix}", strict=False)
    inside = [network.network_address, network.broadcast_address]
    for ip in inside:
        assert engine.get_ip_remediation(str(ip)).remediation == "ban", (prefix, ip)
    below = int(network.network_address) - 1
    above = int(network.broadcast_address) + 1
    for n in (below, above):
        if 0 <= n < 2**32:
            assert engine.get_ip_remediation(str(ip_address(n))) == CLEAN, (prefix, n)


@pytest.mark.parametrize("prefix", [0, 1, 16, 31, 32, 33, 47, 48, 63, 64, 65, 96, 97, 120, 127, 128])
def test_ipv6_ranges_of_every_prefix_length(prefix: int) -> None:
    engine = make()
    refresh(engine, [decision(f"2001:db8:1234:5678:9abc:def0:1234:5678/{prefix}", scope="range")])
    network = __import__("ipaddress").ip_network(f"2001:db8:1234:5678:9abc:def0:1234:5678/{prefix}", strict=False)
    for ip in (network.network_address, network.broadcast_address):
        assert engine.get_ip_remediation(str(ip)).remediation == "ban", (prefix, ip)
    for n in (int(network.network_address) - 1, int(network.broadcast_address) + 1):
        if 0 <= n < 2**128 and not (ip_address(n).ipv4_mapped and prefix <= 96):
            assert engine.get_ip_remediation(str(ip_address(n))) == CLEAN, (prefix, n)


def test_ipv4_mapped_ipv6_and_ipv6_spellings_are_one_address() -> None:
    engine = make()
    refresh(engine, [decision("1.2.3.4"), decision("2001:db8::1")])
    for spelling in ("1.2.3.4", "::ffff:1.2.3.4", "::FFFF:1.2.3.4", "::ffff:102:304", "0:0:0:0:0:ffff:0102:0304"):
        assert engine.get_ip_remediation(spelling).remediation == "ban", spelling
    for spelling in ("2001:db8::1", "2001:0db8:0000:0000:0000:0000:0000:0001", "2001:DB8::1", "2001:db8:0::0:1"):
        assert engine.get_ip_remediation(spelling).remediation == "ban", spelling
    assert engine.get_ip_remediation(ip_address("1.2.3.4")).remediation == "ban"  # type: ignore[arg-type]
    assert engine.get_ip_remediation(ip_address("2001:db8::1")).remediation == "ban"  # type: ignore[arg-type]


def test_decisions_given_in_non_canonical_forms_match_every_spelling() -> None:
    engine = make()
    refresh(
        engine,
        [
            decision("::ffff:5.6.7.8"),
            decision("2001:0DB8:0000::0002"),
            decision("::ffff:9.9.9.0/120", scope="range"),
            decision("10.1.2.3/8", scope="range"),
            decision("192.0.2.9/32", scope="range"),
        ],
    )
    assert engine.get_ip_remediation("5.6.7.8").remediation == "ban"
    assert engine.get_ip_remediation("2001:db8::2").remediation == "ban"
    assert engine.get_ip_remediation("9.9.9.77").remediation == "ban"
    assert engine.get_ip_remediation("::ffff:9.9.9.77").remediation == "ban"
    assert engine.get_ip_remediation("10.200.0.1").remediation == "ban"
    assert engine.get_ip_remediation("192.0.2.9").remediation == "ban"
    assert engine.get_ip_remediation("192.0.2.10") == CLEAN


def test_ipv4_mapped_addresses_hit_ipv4_ranges_and_ipv6_ranges_covering_the_mapped_space() -> None:
    engine = make()
    refresh(engine, [decision("198.51.100.0/24", scope="range")])
    assert engine.get_ip_remediation("::ffff:198.51.100.200").remediation == "ban"
    assert engine.get_ip_remediation("::ffff:198.51.101.1") == CLEAN
    refresh(engine, [decision("::/64", scope="range", type_="captcha")])
    assert engine.get_ip_remediation("8.8.8.8").remediation == "captcha"  # ::ffff:8.8.8.8 is inside ::/64
    assert engine.get_ip_remediation("::1").remediation == "captcha"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "nope",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3.4/24",
        "fe80::1%eth0",
        " 1.2.3.4",
        "::g",
        None,
        12,
        b"1.2.3.4",
        ["1.2.3.4"],
    ],
)
def test_invalid_input_raises_invalid_ip_error(bad: object) -> None:
    engine = make()
    refresh(engine, [decision("1.2.3.4"), decision("10.0.0.0/8", scope="range")])
    with pytest.raises(InvalidIPError) as info:
        engine.get_ip_remediation(bad)  # type: ignore[arg-type]
    assert "not an IP address" in str(info.value)


def test_bad_stream_values_are_skipped_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    engine = make()
    with caplog.at_level(logging.WARNING, logger="cscapi.remediation"):
        report = refresh(
            engine,
            [
                decision("1.2.3.4"),
                decision("not-an-ip"),
                decision("10.0.0.0/33", scope="range"),
                decision("FR", scope="country"),
                decision("5.5.5.5", duration=0),
            ],
        )
    assert report.new == 1  # type: ignore[attr-defined]
    assert report.skipped == 4  # type: ignore[attr-defined]
    assert sum(report.skipped_reasons.values()) == 4  # type: ignore[attr-defined]
    assert "not-an-ip" in caplog.text and "country" in caplog.text
    assert engine.get_ip_remediation("1.2.3.4").remediation == "ban"
    assert engine.get_ip_remediation("5.5.5.5") == CLEAN


# ---- several decisions, identity, expiry ---------------------------------------------------------------------


def test_several_decisions_on_one_address_and_overlapping_ranges_all_count() -> None:
    clock = Clock()
    engine = make(clock=clock)
    refresh(
        engine,
        [
            decision("10.0.0.0/8", scope="range", type_="captcha", duration=7200),
            decision("10.1.0.0/16", scope="range", type_="ban", duration=3600),
            decision("10.1.2.3", type_="captcha", duration=10800),
        ],
    )
    assert engine.get_ip_remediation("10.1.2.3") == Remediation("ban", "CAPI")  # the /16 ban beats the exact captcha
    assert engine.get_ip_remediation("10.1.9.9").remediation == "ban"
    assert engine.get_ip_remediation("10.2.0.1").remediation == "captcha"
    clock.advance(3601)  # the ban is over: the best live decision is a captcha
    assert engine.get_ip_remediation("10.1.2.3").remediation == "captcha"
    assert engine.get_ip_remediation("10.1.9.9").remediation == "captcha"
    clock.advance(3600)  # the /8 captcha is over too; the exact captcha lives 3 h
    assert engine.get_ip_remediation("10.1.2.3").remediation == "captcha"
    assert engine.get_ip_remediation("10.1.9.9") == CLEAN
    clock.advance(3600)
    assert engine.get_ip_remediation("10.1.2.3") == CLEAN


def test_priority_picks_the_origin_of_the_winning_decision() -> None:
    src = FakeSource()
    engine = make(src)
    bl = blocklist("firehol", remediation="captcha")
    src.links[bl.url] = "192.0.2.1\n"
    refresh(engine, [decision("192.0.2.1", type_="ban")], blocklists=[bl])
    assert engine.get_ip_remediation("192.0.2.1") == Remediation("ban", "CAPI")
    bl2 = blocklist("strict", remediation="ban")
    src.links[bl2.url] = "192.0.2.2\n"
    refresh(engine, [decision("192.0.2.2", type_="captcha")], blocklists=[bl, bl2])
    assert engine.get_ip_remediation("192.0.2.2") == Remediation("ban", "lists:strict")


def test_deleting_one_of_two_bans_keeps_the_other() -> None:
    clock = Clock()
    engine = make(clock=clock)
    refresh(
        engine,
        [
            decision("1.2.3.4", scenario="crowdsecurity/ssh-bf", duration=600),
            decision("1.2.3.4", scenario="crowdsecurity/http-probing", duration=7200),
        ],
    )
    clock.advance(601)  # one of the two bans is gone: the other still holds
    assert engine.get_ip_remediation("1.2.3.4") == Remediation("ban", "CAPI")
    assert engine.prune_cache() == 1
    assert engine.get_ip_remediation("1.2.3.4") == Remediation("ban", "CAPI")
    # a stream ``deleted`` entry removes every CAPI decision on the value, but not a list's decision on it
    src: FakeSource = engine.client
    bl = blocklist("mylist")
    src.links[bl.url] = "1.2.3.4\n"
    refresh(engine, blocklists=[bl])
    report = refresh(engine, deleted=["1.2.3.4"], blocklists=[bl])
    assert report.deleted == 1  # type: ignore[attr-defined]
    assert engine.get_ip_remediation("1.2.3.4") == Remediation("ban", "lists:mylist")


def test_identity_includes_scenario_type_and_scope() -> None:
    clock = Clock()
    engine = make(clock=clock)
    refresh(
        engine,
        [decision("1.2.3.4", scenario="a/one", duration=100), decision("1.2.3.4", scenario="a/two", duration=1000)],
    )
    clock.advance(500)  # the first expired, the second (another identity) still holds
    assert engine.get_ip_remediation("1.2.3.4").remediation == "ban"


def test_a_repeated_decision_extends_its_expiry() -> None:
    clock = Clock()
    engine = make(clock=clock)
    refresh(engine, [decision("1.2.3.4", duration=3600)])
    clock.advance(3000)
    refresh(engine, [decision("1.2.3.4", duration=3600)])  # CAPI sends it again with a fresh duration
    clock.advance(3000)
    assert engine.get_ip_remediation("1.2.3.4").remediation == "ban"
    clock.advance(700)
    assert engine.get_ip_remediation("1.2.3.4") == CLEAN


def test_expiry_is_checked_at_lookup_time_without_a_refresh() -> None:
    clock = Clock()
    engine = make(clock=clock)
    refresh(engine, [decision("1.2.3.4", duration=60), decision("10.0.0.0/8", scope="range", duration=60)])
    assert engine.get_ip_remediation("1.2.3.4").remediation == "ban"
    clock.advance(61)
    assert engine.get_ip_remediation("1.2.3.4") == CLEAN
    assert engine.get_ip_remediation("10.9.9.9") == CLEAN


def test_prune_removes_expired_decisions() -> None:
    clock = Clock()
    engine = make(clock=clock)
    refresh(engine, [decision("1.2.3.4", duration=60), decision("5.6.7.8", duration=6000)])
    clock.advance(120)
    assert engine.prune_cache() == 1
    assert engine.index.decisions == 1
    assert engine.get_ip_remediation("5.6.7.8").remediation == "ban"


# ---- the stream: startup and deltas --------------------------------------------------------------------------


def test_startup_pull_first_then_deltas_and_startup_again_after_clear() -> None:
    src = FakeSource()
    engine = make(src)
    refresh(engine, [decision("1.2.3.4")])
    refresh(engine, [decision("5.6.7.8")])
    assert src.startups() == [True, False]
    assert engine.get_ip_remediation("1.2.3.4").remediation == "ban"  # a delta adds, it does not replace
    engine.clear_cache()
    assert engine.get_ip_remediation("1.2.3.4") == CLEAN
    refresh(engine, [decision("9.9.9.9")])
    assert src.startups() == [True, False, True]


def test_a_startup_pull_replaces_the_community_decisions() -> None:
    src = FakeSource()
    engine = make(src)
    refresh(engine, [decision("1.2.3.4")])
    src.streams.append(TransportError("connection reset"))
    with pytest.raises(TransportError):
        engine.refresh_decisions(force=True)
    refresh(engine, [decision("5.6.7.8")])  # the state could not be trusted: a startup pull, a full snapshot
    assert src.startups() == [True, False, True]  # the failed delta pull makes the next one a startup pull
    assert engine.get_ip_remediation("1.2.3.4") == CLEAN
    assert engine.get_ip_remediation("5.6.7.8").remediation == "ban"


def test_a_failed_refresh_leaves_the_previous_state_and_the_next_pull_is_a_startup() -> None:
    src = FakeSource()
    engine = make(src)
    refresh(engine, [decision("1.2.3.4")])
    version = engine.version
    src.streams.append(ServerError("CAPI answered 500", status_code=500))
    with pytest.raises(ServerError):
        engine.refresh_decisions(force=True)
    assert engine.version == version
    assert engine.get_ip_remediation("1.2.3.4").remediation == "ban"
    refresh(engine, [decision("1.2.3.4")])
    assert src.startups()[-1] is True


def test_a_store_failure_at_commit_keeps_the_previous_state(monkeypatch: pytest.MonkeyPatch) -> None:
    from cscapi.errors import DecisionStoreError

    src = FakeSource()
    engine = make(src)
    refresh(engine, [decision("1.2.3.4")])

    def broken(*a: object) -> None:
        raise DecisionStoreError("disk full")

    monkeypatch.setattr(engine.store, "commit", broken)
    src.streams.append(stream([decision("5.6.7.8")], deleted=["1.2.3.4"]))
    with pytest.raises(DecisionStoreError):
        engine.refresh_decisions(force=True)
    assert engine.get_ip_remediation("1.2.3.4").remediation == "ban"
    assert engine.get_ip_remediation("5.6.7.8") == CLEAN
    monkeypatch.undo()
    refresh(engine, [decision("5.6.7.8")])
    assert src.startups()[-1] is True  # CAPI may have moved on: do not trust a delta


def test_machine_id_and_pull_options_reach_the_client() -> None:
    src = FakeSource()
    engine = make(src, machine_id="x" * 48, community_pull=False, additional_pull=False)
    refresh(engine)
    call = next(c for c in src.calls if c[0] == "get_decisions")[1]
    assert call == {"machine_id": "x" * 48, "startup": True, "community_pull": False, "additional_pull": False}
    engine2 = make(FakeSource())
    refresh(engine2)
    assert ("default_machine_id", None) in engine2.client.calls  # type: ignore[attr-defined]


# ---- cadence guard and lock ----------------------------------------------------------------------------------


def test_refresh_cadence_guard_refuses_and_says_when() -> None:
    clock = Clock()
    src = FakeSource()
    engine = make(src, clock=clock)
    engine.refresh_decisions()
    clock.advance(60)
    with pytest.raises(RefreshTooSoonError) as info:
        engine.refresh_decisions()
    assert info.value.next_allowed_at.timestamp() == pytest.approx(clock.now - 60 + 5400)
    assert info.value.next_allowed_at.tzinfo == timezone.utc
    assert "force=True" in str(info.value)
    assert len(src.startups()) == 1
    engine.refresh_decisions(force=True)
    clock.advance(5401)
    engine.refresh_decisions()
    assert len(src.startups()) == 3


def test_only_one_refresh_at_a_time() -> None:
    engine = make()
    assert engine.store.acquire_lock("someone-else", 60)
    with pytest.raises(RefreshInProgressError):
        engine.refresh_decisions(force=True)
    engine.store.release_lock("someone-else")
    engine.refresh_decisions(force=True)


# ---- blocklists ----------------------------------------------------------------------------------------------


def test_every_blocklist_of_a_refresh_is_stored_and_a_200_replaces_its_membership() -> None:
    src = FakeSource()
    engine = make(src)
    a, b = blocklist("a"), blocklist("b", remediation="captcha")
    src.links[a.url] = "192.0.2.1\n192.0.2.2\n"
    src.links[b.url] = "198.51.100.1\n# comment\n\n198.51.100.0/30\n"
    report = refresh(engine, blocklists=[a, b])
    assert {k: v.status for k, v in report.lists.items()} == {"lists:a": "downloaded", "lists:b": "downloaded"}  # type: ignore[attr-defined]
    assert engine.get_ip_remediation("192.0.2.2") == Remediation("ban", "lists:a")
    assert engine.get_ip_remediation("198.51.100.3") == Remediation("captcha", "lists:b")
    src.links[a.url] = "192.0.2.1\n192.0.2.3\n"
    refresh(engine, blocklists=[a, b])
    assert engine.get_ip_remediation("192.0.2.2") == CLEAN  # removed from the list: stops matching
    assert engine.get_ip_remediation("192.0.2.3").remediation == "ban"
    assert engine.get_ip_remediation("198.51.100.1").origin == "lists:b"


def test_a_304_keeps_the_list_and_extends_it_and_if_modified_since_is_sent() -> None:
    clock = Clock()
    src = FakeSource()
    engine = make(src, clock=clock)
    a = blocklist("a", duration=7200)
    src.links[a.url] = "192.0.2.1\n"
    refresh(engine, blocklists=[a])
    assert src.calls[-1][1]["if_modified_since"] is None
    clock.advance(7000)
    src.links[a.url] = 304
    report = refresh(engine, blocklists=[a])
    assert report.lists["lists:a"].status == ListStatus.NOT_MODIFIED  # type: ignore[attr-defined]
    assert src.calls[-1][1]["if_modified_since"] == "Sat, 21 Nov 2026 22:00:00 GMT"
    clock.advance(7000)  # 14000 s after the first pull, 7000 s after the 304: still enforced
    assert engine.get_ip_remediation("192.0.2.1").remediation == "ban"
    clock.advance(300)
    assert engine.get_ip_remediation("192.0.2.1") == CLEAN  # the last successful pull said 2 h


def test_an_expired_list_is_downloaded_again_without_if_modified_since() -> None:
    clock = Clock()
    src = FakeSource()
    engine = make(src, clock=clock)
    a = blocklist("a", duration=60)
    src.links[a.url] = "192.0.2.1\n"
    refresh(engine, blocklists=[a])
    clock.advance(120)
    refresh(engine, blocklists=[a])
    assert src.calls[-1][1]["if_modified_since"] is None
    assert engine.get_ip_remediation("192.0.2.1").remediation == "ban"


def test_one_list_failing_leaves_the_others_and_its_own_previous_content() -> None:
    src = FakeSource()
    engine = make(src)
    a, b = blocklist("a"), blocklist("b")
    src.links[a.url] = "192.0.2.1\n"
    src.links[b.url] = "192.0.2.2\n"
    refresh(engine, blocklists=[a, b])
    src.links[a.url] = ServerError(f"GET {a.url} answered 503", status_code=503)
    src.links[b.url] = "192.0.2.3\n"
    report = refresh(engine, blocklists=[a, b])
    failed = report.lists["lists:a"]  # type: ignore[attr-defined]
    assert failed.status == ListStatus.FAILED and not failed.ok and "503" in failed.reason
    assert "SECRETSIG" not in failed.reason  # the signed URL's signature never shows
    assert report.failed_lists == {"lists:a": failed}  # type: ignore[attr-defined]
    assert engine.get_ip_remediation("192.0.2.1").origin == "lists:a"  # previous content kept
    assert engine.get_ip_remediation("192.0.2.2") == CLEAN  # b was replaced
    assert engine.get_ip_remediation("192.0.2.3").origin == "lists:b"
    # and the next successful pull sends If-Modified-Since from the last successful one
    src.links[a.url] = 304
    refresh(engine, blocklists=[a, b])
    assert engine.get_ip_remediation("192.0.2.1").origin == "lists:a"


def test_a_list_no_longer_offered_is_dropped() -> None:
    src = FakeSource()
    engine = make(src)
    a = blocklist("a")
    src.links[a.url] = "192.0.2.1\n"
    refresh(engine, blocklists=[a])
    report = refresh(engine, blocklists=[])
    assert report.removed_lists == ("lists:a",)  # type: ignore[attr-defined]
    assert engine.get_ip_remediation("192.0.2.1") == CLEAN


def test_bad_blocklist_lines_are_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    src = FakeSource()
    engine = make(src)
    a = blocklist("a")
    src.links[a.url] = "192.0.2.1\nbogus\n300.1.1.1\n  192.0.2.5  \n"
    with caplog.at_level(logging.WARNING, logger="cscapi.remediation"):
        report = refresh(engine, blocklists=[a])
    assert report.lists["lists:a"].entries == 2 and report.lists["lists:a"].skipped == 2  # type: ignore[attr-defined]
    assert report.skipped == 2  # type: ignore[attr-defined]
    assert "bogus" in caplog.text
    assert engine.get_ip_remediation("192.0.2.5").remediation == "ban"


# ---- allowlists ----------------------------------------------------------------------------------------------


def test_allowlist_beats_every_decision_and_removed_entries_stop_applying() -> None:
    clock = Clock()
    src = FakeSource()
    engine = make(src, clock=clock)
    al = allowlist("office")
    bl = blocklist("a")
    src.links[bl.url] = "192.0.2.1\n"
    src.links[al.url] = (
        '{"value": "192.0.2.1"}\n'
        '{"value": "10.0.0.0/8", "expiration": "2027-01-15T10:00:00Z"}\n'
        '{"value": "2001:db8::/32", "expiration": "0001-01-01T00:00:00Z"}\n'
        '{"value": "198.51.100.1", "expiration": "2020-01-01T00:00:00Z"}\n'
        "not json\n"
    )
    report = refresh(
        engine,
        [
            decision("10.1.2.3", duration=86400),
            decision("0.0.0.0/0", scope="range"),
            decision("2001:db8::1"),
            decision("198.51.100.1"),
        ],
        blocklists=[bl],
        allowlists=[al],
    )
    assert report.lists["allowlist:office"].entries == 3 and report.lists["allowlist:office"].skipped == 1  # type: ignore[attr-defined]
    assert engine.get_ip_remediation("192.0.2.1") == Remediation("bypass", "allowlist:office")
    assert engine.get_ip_remediation("10.1.2.3") == Remediation("bypass", "allowlist:office")
    assert engine.get_ip_remediation("2001:db8::1").origin == "allowlist:office"
    assert engine.get_ip_remediation("198.51.100.1") == Remediation("ban", "CAPI")  # that entry had expired
    assert engine.get_ip_remediation("8.8.8.8") == Remediation("ban", "CAPI")
    clock.now = 1_800_000_000 + 7300  # past the 10.0.0.0/8 entry's expiration (2027-01-15T10:00:00Z)
    assert engine.get_ip_remediation("10.1.2.3").origin == "CAPI"
    clock.now = 1_800_000_000
    src.links[al.url] = '{"value": "192.0.2.1"}\n'
    refresh(engine, allowlists=[al], blocklists=[bl])
    assert engine.get_ip_remediation("10.1.2.3") == Remediation("ban", "CAPI")  # removed from the allowlist
    assert engine.get_ip_remediation("192.0.2.1").origin == "allowlist:office"


# ---- policy: priority, fallback, bouncing levels -------------------------------------------------------------


def test_unknown_types_map_to_the_fallback_and_custom_priorities_apply() -> None:
    engine = make()
    refresh(engine, [decision("1.1.1.1", type_="mfa"), decision("2.2.2.2", type_="captcha")])
    assert engine.get_ip_remediation("1.1.1.1") == Remediation("bypass", "CAPI")
    engine2 = make(ordered_remediations=("captcha", "mfa", "ban"), fallback_remediation="captcha")
    refresh(
        engine2,
        [
            decision("1.1.1.1", type_="mfa"),
            decision("1.1.1.1", type_="ban", scenario="x/y"),
            decision("3.3.3.3", type_="weird"),
        ],
    )
    assert engine2.policy.ordered == ("captcha", "mfa", "ban", "bypass")
    assert engine2.get_ip_remediation("1.1.1.1").remediation == "mfa"
    assert engine2.get_ip_remediation("3.3.3.3").remediation == "captcha"


@pytest.mark.parametrize(
    ("level", "ban", "captcha"),
    [
        ("normal_bouncing", "ban", "captcha"),
        ("flex_bouncing", "captcha", "captcha"),
        ("bouncing_disabled", "bypass", "bypass"),
    ],
)
def test_bouncing_levels_work_with_the_defaults(level: str, ban: str, captcha: str) -> None:
    src = FakeSource()
    engine = make(src, bouncing_level=level)
    bl = blocklist("captchas", remediation="captcha")
    src.links[bl.url] = "192.0.2.9\n"
    refresh(engine, [decision("1.1.1.1"), decision("10.0.0.0/8", scope="range")], blocklists=[bl])
    assert engine.get_ip_remediation("1.1.1.1") == Remediation(ban, "CAPI")
    assert engine.get_ip_remediation("10.0.0.1").remediation == ban
    assert engine.get_ip_remediation("192.0.2.9") == Remediation(captcha, "lists:captchas")


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="bouncing_level"):
        make(bouncing_level="strict")
    with pytest.raises(ConfigurationError, match="fallback"):
        make(fallback_remediation="mfa")
    with pytest.raises(ConfigurationError, match="captcha"):
        make(ordered_remediations=("ban",), bouncing_level="flex_bouncing")
    with pytest.raises(ConfigurationError):
        make(ordered_remediations="ban")
    with pytest.raises(ConfigurationError, match="scheme"):
        RemediationEngine(FakeSource(), "mongodb://x")
    assert make(ordered_remediations=("bypass", "ban")).policy.ordered == ("ban", "bypass")


# ---- atomic refresh ------------------------------------------------------------------------------------------


def test_readers_see_the_whole_old_or_the_whole_new_state() -> None:
    import threading

    src = FakeSource()
    engine = make(src)
    old = [f"10.0.{i // 256}.{i % 256}" for i in range(2000)]
    new = [f"10.1.{i // 256}.{i % 256}" for i in range(2000)]
    refresh(engine, [decision(ip) for ip in old])
    mixes: list[tuple[int, int]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            index = engine.index  # what a lookup sees is one index: count both sets in it
            a = sum(1 for ip in old[::50] if ip in index.exact)
            b = sum(1 for ip in new[::50] if ip in index.exact)
            if (a, b) not in ((40, 0), (0, 40)):
                mixes.append((a, b))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(6):
            add, remove = (new, old) if i % 2 == 0 else (old, new)
            refresh(engine, [decision(ip) for ip in add], deleted=remove)
    finally:
        stop.set()
        thread.join()
    assert mixes == []
    # and the lookups agree with the final index
    assert all(engine.get_ip_remediation(ip).remediation == "ban" for ip in old[:100])
    assert all(engine.get_ip_remediation(ip) == CLEAN for ip in new[:100])


def test_answers_stay_right_across_the_fast_map_horizon() -> None:
    import time as _time

    from cscapi.remediation.index import HORIZON

    clock = Clock()
    engine = make(clock=clock)
    refresh(
        engine,
        [
            decision("1.2.3.4", duration=HORIZON * 3),
            decision("1.2.3.4", type_="captcha", scenario="x/y", duration=HORIZON * 10),
            decision("5.6.7.8", duration=HORIZON / 2),
        ],
    )
    deadline = _time.monotonic() + 5
    while engine.index.horizon < clock.now and _time.monotonic() < deadline:
        _time.sleep(0.01)  # the fast map is derived in the background right after the refresh
    first = engine.index
    assert first.fast["1.2.3.4"] is engine.get_ip_remediation("1.2.3.4")  # bare: no expiry read before the horizon
    assert isinstance(first.fast["5.6.7.8"], tuple)  # expires before the horizon: checked at each lookup
    clock.advance(HORIZON / 2 + 1)
    assert engine.get_ip_remediation("5.6.7.8") == CLEAN
    clock.advance(HORIZON)  # past the horizon: answers come from the full entries, a new fast map is derived
    assert engine.get_ip_remediation("1.2.3.4") == Remediation("ban", "CAPI")
    deadline = _time.monotonic() + 5
    while engine.index is first and _time.monotonic() < deadline:
        _time.sleep(0.01)
    assert engine.index is not first and engine.index.horizon > clock.now
    assert engine.index.version == first.version
    clock.advance(HORIZON * 2)  # the ban is over, the captcha remains
    assert engine.get_ip_remediation("1.2.3.4") == Remediation("captcha", "CAPI")
