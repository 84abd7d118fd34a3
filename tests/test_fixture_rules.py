"""The rules the test suite relies on: what CI=true turns from a skip into a failure, and the bundled swagger copies
pinned to the official ones in ``../shared/specs``."""

from __future__ import annotations

import json

import pytest

import conftest


def test_a_missing_optional_dependency_fails_in_ci_and_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    assert conftest.require_module("json") is json
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.require_module("cscapi_no_such_module")
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="cscapi_no_such_module"):
        conftest.require_module("cscapi_no_such_module")


def test_a_missing_service_fails_in_ci_and_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.service_unavailable("a service", "connection refused")
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="a service"):
        conftest.service_unavailable("a service", "connection refused")


@pytest.mark.parametrize(
    ("bundled", "official"), [("capi_v3.json", "capi-v3-swagger.yaml"), ("lapi.json", "lapi-swagger.yaml")]
)
def test_the_bundled_swagger_equals_the_official_one(bundled: str, official: str) -> None:
    """The emulator validates and the client's tests check against the JSON copies shipped in ``cscapi._spec``:
    they must say exactly what ``../shared/specs`` says."""
    from importlib import resources

    path = conftest.SHARED / "specs" / official
    if not path.exists():
        conftest.service_unavailable(f"the official swagger {path}", "file absent")
    shipped = json.loads(resources.files("cscapi._spec").joinpath(bundled).read_text("utf-8"))
    assert shipped == conftest._load_yaml(path)
