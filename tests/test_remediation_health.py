"""The engine's health: a store that cannot be read is observable (``healthy``, ``last_sync_error``, ``version``),
``strict=True`` and ``require_ready()`` turn it into a ``DecisionStoreError``, and no password reaches a message."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from cscapi.errors import DecisionStoreError
from cscapi.remediation import CLEAN, AsyncRemediationEngine, RemediationEngine
from cscapi.remediation.state import State
from cscapi.remediation.stores.sqlite import SQLiteStore
from test_remediation_support import FakeSource, decision, stream

DOWN = "redis://127.0.0.1:1/0"
SECRET = "PWSECRET55"


class FlakySQLiteStore(SQLiteStore):
    """A real SQLite store whose reads fail while ``down`` is set (scripts an outage of the back end)."""

    down = False

    def version(self) -> str | None:
        if self.down:
            raise DecisionStoreError(f"SQLite decision store {self.path!r} failed: disk I/O error")
        return super().version()

    def load(self) -> tuple[str | None, State | None]:
        if self.down:
            raise DecisionStoreError(f"SQLite decision store {self.path!r} failed: disk I/O error")
        return super().load()


def test_a_store_down_at_start_leaves_an_unhealthy_engine_that_still_answers() -> None:
    engine = RemediationEngine(None, DOWN, sync_interval_ms=0)
    try:
        assert engine.healthy is False
        assert engine.version is None
        assert isinstance(engine.last_sync_error, DecisionStoreError)
        assert "127.0.0.1:1" in str(engine.last_sync_error) and "Nothing is loaded yet" in str(engine.last_sync_error)
        assert engine.last_synced_at is None
        assert engine.get_ip_remediation("1.2.3.4") == CLEAN  # serves (nothing), never raises on the lookup path
        assert "unhealthy" in repr(engine)
        with pytest.raises(DecisionStoreError, match=r"127\.0\.0\.1:1"):
            engine.require_ready()
        assert engine.healthy is False
    finally:
        engine.close()


def test_strict_raises_when_the_store_cannot_be_read_at_start() -> None:
    with pytest.raises(DecisionStoreError, match=r"127\.0\.0\.1:1"):
        RemediationEngine(None, DOWN, strict=True)


async def _async_down() -> None:
    engine = AsyncRemediationEngine(None, DOWN, sync_interval_ms=0)
    assert engine.healthy is False and engine.version is None
    with pytest.raises(DecisionStoreError):
        engine.require_ready()
    await engine.aclose()
    with pytest.raises(DecisionStoreError):
        AsyncRemediationEngine(None, DOWN, strict=True)


@pytest.mark.anyio
async def test_the_async_engine_reports_the_same_state() -> None:
    await _async_down()


@pytest.mark.parametrize("uri", ["memory://", "sqlite"])
def test_a_readable_store_is_healthy_even_when_empty(uri: str, tmp_path: Path) -> None:
    if uri == "sqlite":
        uri = f"sqlite:///{tmp_path / 'd.db'}"
    engine = RemediationEngine(None, uri, sync_interval_ms=0, strict=True)
    assert engine.healthy is True and engine.last_sync_error is None
    assert engine.version is None  # empty store: None too, but healthy tells the two apart
    assert engine.last_synced_at is not None
    engine.require_ready()
    engine.close()


def test_an_outage_after_a_good_load_keeps_serving_and_recovers(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'd.db'}"
    writer = RemediationEngine(FakeSource(), uri, sync_interval_ms=0)
    writer.client.streams.append(stream([decision("1.2.3.4")]))  # type: ignore[attr-defined]
    writer.refresh_decisions()
    store = FlakySQLiteStore(uri)
    store.down = True
    reader = RemediationEngine(None, store, sync_interval_ms=0)
    assert not reader.healthy and reader.version is None
    with pytest.raises(DecisionStoreError, match="disk I/O"):
        reader.require_ready()
    store.down = False
    reader.require_ready()  # retries one sync, which now succeeds
    assert reader.healthy and reader.version == writer.version
    assert reader.get_ip_remediation("1.2.3.4").remediation == "ban"
    store.down = True
    with pytest.raises(DecisionStoreError):
        reader.sync()
    assert not reader.healthy and "disk I/O" in str(reader.last_sync_error)
    assert reader.get_ip_remediation("1.2.3.4").remediation == "ban"  # stale but served
    store.down = False
    assert reader.sync() is False  # same version: nothing to rebuild, but healthy again
    assert reader.healthy and reader.last_sync_error is None
    reader.close()
    writer.close()


def test_the_sync_thread_heals_the_engine_when_the_store_comes_back(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'd.db'}"
    writer = RemediationEngine(FakeSource(), uri, sync_interval_ms=0)
    writer.client.streams.append(stream([decision("5.6.7.8")]))  # type: ignore[attr-defined]
    writer.refresh_decisions()
    store = FlakySQLiteStore(uri)
    store.down = True
    reader = RemediationEngine(None, store, sync_interval_ms=10)
    assert not reader.healthy
    store.down = False
    deadline = time.monotonic() + 10
    while not reader.healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader.healthy
    assert reader.get_ip_remediation("5.6.7.8").remediation == "ban"
    reader.close()
    writer.close()


def test_no_password_of_the_store_uri_in_logs_errors_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    uri = f"redis://user:{SECRET}@127.0.0.1:1/0?password={SECRET}&socket_timeout=1"
    with caplog.at_level(logging.DEBUG, logger="cscapi"):
        engine = RemediationEngine(None, uri, sync_interval_ms=0)
        with pytest.raises(DecisionStoreError) as info:
            engine.require_ready()
        with pytest.raises(DecisionStoreError) as strict:
            RemediationEngine(None, f"redis://127.0.0.1:1/0?password={SECRET}", strict=True)
    texts = [caplog.text, repr(engine), repr(engine.store), engine.store.uri, str(engine.last_sync_error)]
    texts += [str(info.value), repr(info.value), str(strict.value), repr(strict.value)]
    assert any("warning" in r.levelname.lower() for r in caplog.records)
    assert all(SECRET not in t for t in texts), [t for t in texts if SECRET in t]
    assert "password=***" in engine.store.uri
    engine.close()


def test_sqlite_uri_query_secrets_are_masked(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'd.db'}?password={SECRET}")
    assert SECRET not in repr(store) and SECRET not in store.uri
    store.close()


def test_a_query_string_password_never_reaches_the_start_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cscapi"):
        engine = RemediationEngine(None, f"redis://127.0.0.1:1/0?password={SECRET}", sync_interval_ms=0)
    assert "could not load the decisions" in caplog.text
    assert SECRET not in caplog.text and SECRET not in repr(engine)
    engine.close()


@pytest.mark.parametrize(
    "uri",
    [f"redis://:{SECRET}@127.0.0.1:notaport/0", f"redis://127.0.0.1:6379/0?password={SECRET}&socket_timeout=abc"],
)
def test_a_bad_redis_uri_is_a_configuration_error_without_the_password(uri: str) -> None:
    from cscapi.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        RemediationEngine(None, uri)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_decisions_check_fails_on_a_lost_redis_store(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    """Redis lost the state while a worker ran: `cscapi decisions check` exits 6 saying so, never "bypass/clean"."""
    import redis
    from click.testing import CliRunner

    from cscapi.cli import cli

    src = FakeSource()
    src.streams.append(stream([decision("1.2.3.4")]))
    writer = RemediationEngine(src, redis_url, key_prefix=redis_prefix, sync_interval_ms=0)
    worker = RemediationEngine(None, redis_url, key_prefix=redis_prefix, sync_interval_ms=50)
    r = redis.Redis.from_url(redis_url)
    env = {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "CSCAPI_DECISION_STORE": redis_url,
        "CSCAPI_DECISION_KEY_PREFIX": redis_prefix,
    }
    try:
        writer.refresh_decisions()
        ok = CliRunner().invoke(cli, ["decisions", "check", "1.2.3.4"], env=env, prog_name="cscapi")
        assert ok.exit_code == 0 and "ban" in ok.output, ok.output
        r.delete(*r.scan_iter(match=redis_prefix + "*"))  # a restart without data (only this test's keys)
        deadline = time.monotonic() + 10
        while worker.healthy and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.store_lost and worker.get_ip_remediation("1.2.3.4").remediation == "ban"
        lost = CliRunner().invoke(cli, ["decisions", "check", "1.2.3.4"], env=env, prog_name="cscapi")
        assert lost.exit_code == 6, lost.output
        assert "lost its decisions" in lost.output
    finally:
        r.close()
        worker.close()
        writer.close()
