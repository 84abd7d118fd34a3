"""Random JSON (and random bytes) sent to every CAPI endpoint never reaches the catch-all 500 handler: the emulator
answers 2xx or a 4xx ErrorResponse, always."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

MID = "q" * 48
POSTS = [
    "/v3/watchers",
    "/v3/watchers/login",
    "/v3/watchers/enroll",
    "/v3/watchers/reset",
    "/v3/signals",
    "/v3/decisions/delete",
    "/v3/decisions/sync",
    "/v3/metrics",
    "/v3/usage-metrics",
    "/v2/signals",
    "/v2/metrics/",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
signal_like = st.fixed_dictionaries(
    {
        "scenario": json_values,
        "scenario_hash": json_values,
        "scenario_version": json_values,
        "message": json_values,
        "source": st.one_of(json_values, st.fixed_dictionaries({"scope": json_values, "value": json_values})),
        "start_at": json_values,
        "stop_at": json_values,
    },
    optional={"decisions": json_values, "uuid": json_values, "context": json_values},
)


@pytest.fixture(scope="module")
def client() -> Any:
    config = EmulatorConfig(community_size=20, attachment_keys=["k"], login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu, httpx.Client(base_url=emu.base_url) as c:
        c.post("/v3/watchers", json={"machine_id": MID, "password": "pw"})
        token = c.post("/v3/watchers/login", json={"machine_id": MID, "password": "pw"}).json()["token"]
        c.headers["Authorization"] = f"Bearer {token}"
        c.app_state = emu.state  # type: ignore[attr-defined]
        yield c


def _check(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body["message"], str) and isinstance(body["errors"], str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(POSTS), body=st.one_of(json_values, st.lists(signal_like, max_size=3), signal_like))
def test_random_json_never_500(client: Any, path: str, body: Any) -> None:
    _check(client.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}))
    assert client.app_state.internal_errors == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(POSTS), raw=st.binary(max_size=64), gz=st.booleans())
def test_random_bytes_never_500(client: Any, path: str, raw: bytes, gz: bool) -> None:
    headers = {"Content-Encoding": "gzip"} if gz else {}
    _check(client.post(path, content=raw, headers=headers))
    assert client.app_state.internal_errors == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=st.dictionaries(
        st.sampled_from(["startup", "community_pull", "additional_pull", "other"]), st.text(max_size=8), max_size=3
    )
)
def test_random_stream_queries_never_500(client: Any, params: dict[str, str]) -> None:
    r = client.get("/v3/decisions/stream", params=params)
    _check(r)
    if r.status_code == 200:
        assert set(r.json()) == {"new", "deleted", "links"}
    assert client.app_state.internal_errors == 0
