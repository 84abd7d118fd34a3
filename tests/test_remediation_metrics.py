"""Origin counters and usage metrics: the AllMetrics payload (validated against the LAPI swagger), atomic decrement
after a successful push (increments made during the push survive), nothing lost when the push fails; and the async
engine sharing the same core."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cscapi.errors import ServerError
from cscapi.remediation import CLEAN, AsyncRemediationEngine, Remediation, RemediationEngine
from test_remediation_support import AsyncFakeSource, Clock, FakeSource, blocklist, decision, stream


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if request.param == "memory":
        yield "memory://", {}
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'd.db'}", {}
    else:
        yield request.getfixturevalue("redis_url"), {"key_prefix": request.getfixturevalue("redis_prefix")}


def test_counts_payload_and_decrement(store: tuple[str, dict[str, Any]], lapi_spec: Any, validate_against: Any) -> None:
    uri, kw = store
    clock = Clock()
    src = FakeSource()
    src.streams.append(stream([decision("1.2.3.4")]))
    engine = RemediationEngine(src, uri, clock=clock, bouncer_name="my-app", sync_interval_ms=0, **kw)
    engine.refresh_decisions()
    for ip in ("1.2.3.4", "1.2.3.4", "5.5.5.5"):
        r = engine.get_ip_remediation(ip)
        engine.update_metrics_origins_count(r.origin, r.remediation)
    engine.update_metrics_origins_count("lists:tor", "captcha", 4)
    assert engine.get_origins_count() == {"CAPI": {"ban": 2}, "clean": {"bypass": 1}, "lists:tor": {"captcha": 4}}

    clock.advance(1800)

    def push_while_requests_arrive(machine_id: str, payload: dict[str, Any]) -> None:
        engine.update_metrics_origins_count("CAPI", "ban")  # a request counted while the push is in flight
        src.pushed.append((machine_id, payload))

    src.push_usage_metrics = push_while_requests_arrive  # type: ignore[method-assign]
    payload = engine.push_usage_metrics()
    validate_against(lapi_spec, "AllMetrics", payload)
    (component,) = payload["remediation_components"]
    assert component["name"] == "my-app" and component["type"] == "cscapi-remediation-engine"
    assert component["last_pull"] == int(clock.now - 1800)
    (window,) = component["metrics"]
    assert window["meta"]["utc_now_timestamp"] == int(clock.now)
    items = {(i["name"], tuple(sorted(i.get("labels", {}).items()))): i["value"] for i in window["items"]}
    assert items == {
        ("dropped", (("origin", "CAPI"), ("remediation", "ban"))): 2,
        ("dropped", (("origin", "lists:tor"), ("remediation", "captcha"))): 4,
        ("processed", ()): 7,
    }
    assert src.pushed[0][0] == "m" * 48  # the client's default machine
    assert engine.get_origins_count() == {"CAPI": {"ban": 1}}  # exactly what was pushed was subtracted

    del src.push_usage_metrics  # back to the plain scripted push
    clock.advance(600)
    second = engine.push_usage_metrics()
    assert second["remediation_components"][0]["metrics"][0]["meta"]["window_size_seconds"] == 600
    assert engine.get_origins_count() == {}
    engine.close()


def test_a_failed_push_loses_nothing() -> None:
    src = FakeSource()
    engine = RemediationEngine(src)
    engine.update_metrics_origins_count("CAPI", "ban", 5)
    src.push_error = ServerError("CAPI answered 500", status_code=500)
    with pytest.raises(ServerError):
        engine.push_usage_metrics()
    assert engine.get_origins_count() == {"CAPI": {"ban": 5}}
    src.push_error = None
    engine.push_usage_metrics()
    assert engine.get_origins_count() == {}


@pytest.mark.anyio
async def test_async_engine_shares_the_core(tmp_path: Path) -> None:
    clock = Clock()
    src = AsyncFakeSource()
    bl = blocklist("a")
    src.sync.links[bl.url] = "192.0.2.1\n"
    src.sync.streams.append(stream([decision("1.2.3.4", duration=60)], blocklists=[bl]))
    engine = AsyncRemediationEngine(src, f"sqlite:///{tmp_path / 'd.db'}", clock=clock, sync_interval_ms=0)
    report = await engine.refresh_decisions()
    assert report.startup and report.new == 1 and report.lists["lists:a"].ok
    assert engine.get_ip_remediation("1.2.3.4") == Remediation("ban", "CAPI")
    assert engine.get_ip_remediation("::ffff:192.0.2.1").origin == "lists:a"
    src.sync.streams.append(stream([decision("5.6.7.8")], blocklists=[bl]))
    src.sync.links[bl.url] = 304
    delta = await engine.refresh_decisions(force=True)
    assert not delta.startup and delta.lists["lists:a"].status == "not_modified"
    clock.advance(120)
    assert await engine.prune_cache() == 1
    assert engine.get_ip_remediation("1.2.3.4") == CLEAN
    engine.update_metrics_origins_count("CAPI", "ban", 2)
    payload = await engine.push_usage_metrics()
    assert payload["remediation_components"][0]["metrics"][0]["items"][-1] == {
        "name": "processed",
        "value": 2,
        "unit": "request",
    }
    assert engine.get_origins_count() == {}
    await engine.clear_cache()
    assert engine.get_ip_remediation("5.6.7.8") == CLEAN
    await engine.refresh_decisions(force=True)
    assert src.sync.startups() == [True, False, True]
    await engine.aclose()
