"""Engine setup: URLs and drivers, the SQLite file's mode, in-memory databases, no global hooks, masked errors."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url

from cscapi._sql.dialects import mask_url, normalize_url
from cscapi.errors import ConfigurationError, StorageError
from cscapi.models import QueueCounts
from cscapi.sql_storage import SQLStorage
from test_storage_support import MACHINE_A, make_signal, make_signals

# ---- URLs and drivers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("mysql://u@h/db", "mysql+pymysql"),
        ("mysql+pymysql://u@h/db", "mysql+pymysql"),
        ("mariadb://u@h/db", "mariadb+pymysql"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_bare_schemes_map_to_the_shipped_drivers(given: str, driver: str) -> None:
    assert normalize_url(given).drivername == driver


def test_mysql_gets_utf8mb4_and_bad_urls_are_configuration_errors() -> None:
    assert normalize_url("mysql://u@h/db").query["charset"] == "utf8mb4"
    assert normalize_url("mysql://u@h/db?charset=latin1").query["charset"] == "latin1"
    for bad in ["", "   ", "not a url", "oracle://u@h/db"]:
        with pytest.raises(ConfigurationError):
            normalize_url(bad)


def test_bare_postgresql_and_mysql_urls_really_connect(postgres_url: str, mysql_url: str) -> None:
    for url in (postgres_url, mysql_url):
        bare = make_url(url).set(drivername=make_url(url).get_backend_name()).render_as_string(hide_password=False)
        assert "+" not in bare.split("://")[0]
        with SQLStorage(bare) as storage:
            assert storage.add_signals([make_signal()]) == 1


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)
    with pytest.raises(ConfigurationError, match=r"cscapi\[mysql\]"):
        SQLStorage("mysql://root@127.0.0.1:1/db")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigurationError, match=r"cscapi\[postgres\]"):
        SQLStorage("postgresql://root@127.0.0.1:1/db")


def test_an_unshipped_driver_points_at_the_shipped_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(ConfigurationError) as info:
        SQLStorage("postgresql+psycopg2://root@127.0.0.1:1/db")
    assert "postgresql+psycopg://" in str(info.value) and "cscapi[postgres]" in str(info.value)


def test_importing_the_storage_loads_no_driver_nor_cryptography() -> None:
    code = (
        "import sys, cscapi.sql_storage;"
        "bad = [m for m in ('psycopg', 'pymysql', 'cryptography') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---- secrets never leak into reprs and errors ------------------------------------------------------------------


def test_repr_and_errors_mask_the_password(free_tcp_port: int) -> None:
    url = f"postgresql://cscapi:hunter2-secret@127.0.0.1:{free_tcp_port}/nowhere"
    assert "hunter2" not in mask_url(url) and "***" in mask_url(url)
    with pytest.raises(StorageError) as info:
        SQLStorage(url, engine_options={"connect_args": {"connect_timeout": 2}})
    text_of_error = f"{info.value} {info.value!r}"
    assert "hunter2" not in text_of_error
    assert "***" in str(info.value) and "opening the storage failed" in str(info.value)
    assert mask_url("::not a url::") == "<unparsable database URL>"


def test_repr_shows_no_password(postgres_url: str) -> None:
    with_password = make_url(postgres_url).set(password="s3cr3t-pw")
    url = with_password.render_as_string(hide_password=False)
    # trust authentication ignores the password: the connection works and the repr must still hide it
    with SQLStorage(url) as storage:
        assert "s3cr3t-pw" not in repr(storage) and "***" in repr(storage)
        assert "s3cr3t-pw" not in storage.url


# ---- SQLite specifics -------------------------------------------------------------------------------------------


def test_new_sqlite_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "new.db"
        with SQLStorage(f"sqlite:///{path}") as storage:
            storage.add_signals(make_signals(3))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for extra in ("-wal", "-shm"):
            side = Path(str(path) + extra)
            if side.exists():
                assert stat.S_IMODE(side.stat().st_mode) & 0o077 == 0
    finally:
        os.umask(old)


def test_existing_sqlite_file_keeps_its_mode_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o640)
    with caplog.at_level("WARNING", logger="cscapi.storage"):
        SQLStorage(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert "chmod 600" in caplog.text and "0640" in caplog.text
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level("WARNING", logger="cscapi.storage"):
        SQLStorage(f"sqlite:///{path}").close()
    assert "chmod" not in caplog.text


def test_missing_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        SQLStorage(f"sqlite:///{tmp_path / 'nope' / 'x.db'}")


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true", "sqlite:///file:q?mode=memory&uri=true"],
)
def test_in_memory_database_is_shared_by_threads(url: str) -> None:
    with SQLStorage(url) as storage:
        worker = threading.Thread(target=storage.add_signals, args=(make_signals(4),))
        worker.start()
        worker.join()
        assert storage.count_signals() == QueueCounts(queued=4)


def test_sqlite_pragmas_on_our_engine_only(tmp_path: Path) -> None:
    from cscapi._sql.dialects import _sqlite_on_begin, _sqlite_on_connect

    with SQLStorage(f"sqlite:///{tmp_path / 'ours.db'}") as storage:
        # our hooks are on our engine, not on the Engine class
        assert event.contains(storage.engine, "connect", _sqlite_on_connect)
        assert event.contains(storage.engine, "begin", _sqlite_on_begin)
        assert not event.contains(Engine, "connect", _sqlite_on_connect)
        assert not event.contains(Engine, "begin", _sqlite_on_begin)
        with storage.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        # the host application's own engine, created afterwards in the same process, is untouched
        theirs = create_engine(f"sqlite:///{tmp_path / 'theirs.db'}")
        with theirs.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            conn.rollback()
            # pysqlite's own default behaviour is kept there: DDL outside the transaction, the INSERT rolled back
            # (our BEGIN hook would have rolled the CREATE TABLE back too)
            assert conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name = 't'").scalar() == "t"
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == 0
        theirs.dispose()


def test_engine_options_are_passed_through(tmp_path: Path) -> None:
    with SQLStorage(f"sqlite:///{tmp_path / 'o.db'}", engine_options={"pool_size": 2, "echo": False}) as storage:
        assert storage.engine.pool.size() == 2  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError):
        SQLStorage(f"sqlite:///{tmp_path / 'p.db'}", engine_options={"no_such_option": 1})


def test_unreadable_row_is_a_storage_error(sqlite_url: str) -> None:
    with SQLStorage(sqlite_url) as storage:
        storage.add_signals([make_signal()])
        with storage.engine.begin() as conn:
            conn.execute(text("UPDATE signals SET payload = 'not json'"))
        with pytest.raises(StorageError, match="alert_id 1"):
            storage.get_signals(limit=1)


def test_asyncio_to_thread_callers(database_url: str) -> None:
    async def main(storage: SQLStorage) -> list[int]:
        batches = [make_signals(5, MACHINE_A, start=i * 5) for i in range(8)]
        return await asyncio.gather(*(asyncio.to_thread(storage.add_signals, b) for b in batches))

    with SQLStorage(database_url) as storage:
        assert asyncio.run(main(storage)) == [5] * 8
        assert storage.count_signals().queued == 40


def test_close_then_reuse_reconnects(sqlite_url: str) -> None:
    storage = SQLStorage(sqlite_url)
    storage.add_signals([make_signal()])
    storage.close()
    assert storage.count_signals().queued == 1
    storage.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_fresh_connections(database_url: str) -> None:
    import multiprocessing

    storage = SQLStorage(database_url)
    storage.add_signals(make_signals(2))  # the pool now holds a connection
    assert storage.engine.pool.checkedin() == 1  # type: ignore[attr-defined]

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()

    def child() -> None:
        try:
            inherited = storage.engine.pool.checkedin()  # type: ignore[attr-defined]
            results.put((inherited, storage.add_signals(make_signals(3, start=10))))
        except BaseException as exc:
            results.put(repr(exc))

    proc = ctx.Process(target=child)
    proc.start()
    outcome = results.get(timeout=30)
    proc.join(timeout=30)
    assert outcome == (0, 3)  # the parent's pooled connection was dropped in the child, not reused
    assert storage.count_signals().queued == 5  # the parent's connections still work
    storage.close()


def test_a_closed_in_memory_storage_says_so() -> None:
    storage = SQLStorage("sqlite://")
    storage.add_signals([make_signal()])
    storage.close()
    with pytest.raises(StorageError, match="in-memory storage was closed"):
        storage.count_signals()


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.register_at_fork")
def test_the_fork_hook_is_registered_once_by_the_first_storage_not_at_import(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "calls = []\n"
        "real = os.register_at_fork\n"
        "def spy(**kw):\n"
        "    if getattr(kw.get('after_in_child'), '__module__', '').startswith('cscapi'):\n"
        "        calls.append(kw)\n"
        "    real(**kw)\n"
        "os.register_at_fork = spy\n"
        "from cscapi.sql_storage import SQLStorage\n"
        "assert calls == [], calls\n"
        f"stores = [SQLStorage('sqlite:///{tmp_path / 'a.db'}') for _ in range(3)]\n"
        "assert len(calls) == 1, calls\n"
        "for s in stores: s.close()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
