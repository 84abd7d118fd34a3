"""Country-scoped LAPI decisions with a MaxMind-format country database the tests write themselves
(``lapi_support.write_country_mmdb``): the reader, stream mode (a country decision becomes its networks' ranges,
deletions included) and live mode (the IP's country is asked too), against the real CrowdSec LAPI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cscapi.errors import ConfigurationError
from cscapi.lapi import LapiClient
from cscapi.lapi.geoip import CountryDatabase
from cscapi.remediation import RemediationEngine
from lapi_support import write_country_mmdb

NETWORKS = {
    "192.0.2.0/24": "FR",
    "203.0.113.0/25": "FR",
    "2001:db8:f::/48": "FR",
    "198.51.100.0/24": "DE",
    "10.0.0.0/8": "US",
}


@pytest.fixture
def country_db(tmp_path: Path) -> Path:
    return write_country_mmdb(tmp_path / "countries.mmdb", NETWORKS)


@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_reader_finds_countries_and_networks(tmp_path: Path, record_size: int) -> None:
    db = CountryDatabase(write_country_mmdb(tmp_path / "c.mmdb", NETWORKS, record_size=record_size))
    assert db.country("192.0.2.77") == "FR" and db.country("203.0.113.127") == "FR"
    assert db.country("203.0.113.128") is None and db.country("8.8.8.8") is None
    assert db.country("::ffff:198.51.100.9") == "DE" and db.country("2001:db8:f:1::5") == "FR"
    assert db.country("10.255.0.1") == "US"
    assert db.networks("fr") == ["192.0.2.0/24", "2001:db8:f::/48", "203.0.113.0/25"]  # aliases walked once
    assert db.networks("IT") == []


def test_reader_refuses_what_is_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(ConfigurationError, match="not a readable MaxMind DB"):
        CountryDatabase(bad)
    truncated = tmp_path / "truncated.mmdb"
    good = write_country_mmdb(tmp_path / "good.mmdb", NETWORKS).read_bytes()
    truncated.write_bytes(good[: len(good) // 3] + good[-200:])  # metadata kept, tree cut
    with pytest.raises(ConfigurationError):
        CountryDatabase(truncated)
    with pytest.raises(ConfigurationError, match="Cannot read"):
        CountryDatabase(tmp_path / "missing.mmdb")
    with pytest.raises(ConfigurationError, match="over the"):
        CountryDatabase(tmp_path / "good.mmdb", max_bytes=100)


def test_country_scope_needs_a_database() -> None:
    with pytest.raises(ConfigurationError, match="country_db"):
        LapiClient("http://127.0.0.1:8080/", api_key="k", scopes=["ip", "country"])


def test_stream_mode_honours_country_decisions(lapi: Any, lapi_bouncer_key: str, country_db: Path) -> None:
    lapi.add_decision(scope="Country", value="FR", type="captcha", duration="1h")
    lapi.add_decision(ip="192.0.2.5", duration="1h")  # an IP ban inside a captcha'd country: the ban wins
    with LapiClient(lapi.base_url, api_key=lapi_bouncer_key, country_db=country_db) as client:
        assert "country" in client.scopes
        engine = RemediationEngine(client, "memory://")
        try:
            report = engine.refresh_decisions()
            assert report.skipped == 0
            fr = engine.get_ip_remediation("203.0.113.9")
            assert (fr.remediation, fr.origin) == ("captcha", "cscli")
            assert engine.get_ip_remediation("2001:db8:f::1").remediation == "captcha"
            assert engine.get_ip_remediation("192.0.2.5").remediation == "ban"
            assert engine.get_ip_remediation("198.51.100.1").remediation == "bypass"  # DE
            lapi.add_decision(scope="Country", value="DE", duration="1h")
            lapi.delete_decisions(ip="192.0.2.5")
            lapi.add_decision(ip="192.0.2.6", type="captcha", duration="1h")
            engine.refresh_decisions()
            assert engine.get_ip_remediation("198.51.100.1").remediation == "ban"
            assert engine.get_ip_remediation("192.0.2.5").remediation == "captcha"  # the country's captcha is left
            # deleting the FR decision removes its ranges, not the IP decision inside them
            (fr_id,) = [
                d["id"] for alert in lapi.decisions() for d in alert["decisions"] if d["scope"].lower() == "country"
                and d["value"] == "FR"
            ]  # fmt: skip
            lapi.delete_decisions(decision_id=fr_id)
            engine.refresh_decisions()
            assert engine.get_ip_remediation("203.0.113.9").remediation == "bypass"
            assert engine.get_ip_remediation("192.0.2.6").remediation == "captcha"
            assert engine.get_ip_remediation("198.51.100.1").remediation == "ban"
        finally:
            engine.close()


def test_live_mode_asks_for_the_ip_country(lapi: Any, lapi_bouncer_key: str, country_db: Path) -> None:
    lapi.add_decision(scope="Country", value="US", duration="1h")
    client = LapiClient(lapi.base_url, api_key=lapi_bouncer_key, mode="live", country_db=country_db)
    engine = RemediationEngine(client, "memory://")
    try:
        us = engine.get_ip_remediation("10.1.2.3")
        assert (us.remediation, us.origin) == ("ban", "cscli")
        assert engine.get_ip_remediation("192.0.2.1").remediation == "bypass"  # FR: no decision
        assert engine.get_ip_remediation("8.8.4.4").remediation == "bypass"  # no country known
    finally:
        engine.close()
        client.close()
