"""The LAPI classes judge the options they share with the CAPI client through the same validators
(:mod:`cscapi._validators`): a value CAPIClientConfig refuses is refused by LapiClient and LapiWatcher with the same
message, and one it accepts is accepted (issue 10, "one validator per setting")."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi import CAPIClientConfig
from cscapi.errors import ConfigurationError
from cscapi.lapi import AsyncLapiClient, AsyncLapiWatcher, LapiClient, LapiWatcher
from cscapi.sql_storage import SQLStorage

SCEN = ["crowdsecurity/ssh-bf"]
URL = "http://127.0.0.1:9/"


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLStorage]:
    with SQLStorage(f"sqlite:///{tmp_path / 'queue.db'}") as st:
        yield st


def _builders(storage: SQLStorage) -> list[Callable[..., Any]]:
    return [
        lambda **kw: LapiClient(URL, api_key="k", **kw),
        lambda **kw: AsyncLapiClient(URL, api_key="k", **kw),
        lambda **kw: LapiWatcher(URL, storage, machine_id="m", password="p", **kw),
        lambda **kw: AsyncLapiWatcher(URL, storage, machine_id="m", password="p", **kw),
    ]


@pytest.mark.parametrize(
    "option",
    [
        {"user_agent_prefix": "my+app"},
        {"user_agent_prefix": "a\r\nX-Evil: 1"},
        {"user_agent_prefix": "x" * 65},
        {"timeout": math.inf},
        {"timeout": 0},
        {"timeout": math.nan},
        {"max_retries": 25},
        {"max_retries": -1},
        {"deadline": math.inf},
        {"deadline": 0},
    ],
    ids=repr,
)
def test_a_value_capi_client_config_refuses_is_refused_the_same_way(option: dict[str, Any], storage: Any) -> None:
    with pytest.raises(ConfigurationError) as by_capi:
        CAPIClientConfig(SCEN, **option)
    for build in _builders(storage):
        with pytest.raises(ConfigurationError) as by_lapi:
            build(**option)
        assert by_lapi.value.message == by_capi.value.message


@pytest.mark.parametrize(
    "option",
    [
        {"user_agent_prefix": "my.app_v2-beta"},
        {"timeout": httpx.Timeout(30, connect=5)},
        {"timeout": 0.05},
        {"max_retries": 20},
        {"deadline": 900},
    ],
    ids=repr,
)
def test_a_value_capi_client_config_accepts_is_accepted(option: dict[str, Any], storage: Any) -> None:
    CAPIClientConfig(SCEN, **option)
    for build in _builders(storage):
        made = build(**option)
        if "user_agent_prefix" in option:
            assert made.settings.user_agent.startswith("my.app_v2-beta-cscapi-lapi-")
        if "timeout" in option:
            assert made.settings.timeout == option["timeout"]
        closing = made.close()
        if closing is not None:  # the async classes' close() is a coroutine (an alias of aclose)
            asyncio.run(closing)
