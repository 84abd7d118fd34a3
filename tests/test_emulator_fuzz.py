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


def _nest(depth: int, inner: Any, kinds: list[bool]) -> str:
    """``inner`` wrapped ``depth`` times in arrays or one-member objects (chosen by ``kinds``), as JSON text."""
    text = json.dumps(inner)
    opened, closed = [], []
    for i in range(depth):
        as_object = kinds[i % len(kinds)]
        opened.append('{"k":' if as_object else "[")
        closed.append("}" if as_object else "]")
    return "".join(opened) + text + "".join(reversed(closed))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(POSTS),
    depth=st.integers(0, 3000),
    inner=json_values,
    kinds=st.lists(st.booleans(), min_size=1, max_size=5),
    gz=st.booleans(),
)
def test_any_nesting_depth_never_500(
    client: Any, path: str, depth: int, inner: Any, kinds: list[bool], gz: bool
) -> None:
    import gzip

    from cscapi.emulator.jsonlimits import MAX_JSON_DEPTH

    raw = _nest(depth, inner, kinds).encode()
    headers = {"Content-Type": "application/json"}
    if gz:
        raw = gzip.compress(raw)
        headers["Content-Encoding"] = "gzip"
    r = client.post(path, content=raw, headers=headers)
    _check(r)
    if depth > MAX_JSON_DEPTH:
        assert r.status_code == 400 and "nested too deeply" in r.json()["message"]
    assert client.app_state.internal_errors == 0


ADMIN_WRITES = [
    ("POST", "decisions"),
    ("POST", "decisions/expire"),
    ("POST", "decisions/delete"),
    ("POST", "machines"),
    ("POST", "tokens/expire"),
    ("POST", "attachment-keys"),
    ("PUT", "faults/signals"),
    ("PUT", "faults/*"),
    ("PUT", "blocklists/fuzz"),
    ("PUT", "allowlists/fuzz"),
]
decision_like = st.fixed_dictionaries(
    {"value": st.one_of(json_values, st.sampled_from(["192.0.2.1", "2001:db8::/64", "198.51.100.0/24"]))},
    optional={
        "scenario": json_values,
        "scope": json_values,
        "uuid": json_values,
        "duration": st.one_of(json_values, st.sampled_from(["4h", "99999999999h", "-1s", "0s"])),
    },
)
admin_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"decisions": st.lists(decision_like, max_size=3)}),
    st.fixed_dictionaries({"values": st.one_of(json_values, st.lists(st.text(max_size=12), max_size=3))}),
    st.fixed_dictionaries({}, optional={"content": json_values, "duration": json_values, "items": json_values}),
    st.dictionaries(
        st.sampled_from(["error_rate", "latency", "retry_after", "token_lifetime", "remaining"]), json_values
    ),
)


@pytest.fixture(scope="module")
def admin_client() -> Any:
    config = EmulatorConfig(community_size=5, admin_token="fuzz-admin", login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu, httpx.Client(base_url=emu.base_url + "admin/") as c:
        c.headers["Authorization"] = "Bearer fuzz-admin"
        c.app_state = emu.state  # type: ignore[attr-defined]
        yield c


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(ADMIN_WRITES), body=admin_bodies)
def test_random_admin_bodies_never_500(admin_client: Any, target: tuple[str, str], body: Any) -> None:
    method, path = target
    _check(admin_client.request(method, path, content=json.dumps(body).encode()))
    for read in ("state", "decisions", "blocklists", "allowlists", "faults", "machines"):
        _check(admin_client.get(read))  # whatever was accepted can be shown
    admin_client.delete("faults")  # keep the emulator usable for the next example
    assert admin_client.app_state.internal_errors == 0
