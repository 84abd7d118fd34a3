"""What the 0.7.0 API returned as builtins still behaves as those builtins, sync and async, against the emulator.

``send_signals()`` returned an ``int`` and ``get_decisions()`` the JSON ``dict``: the ``SendReport`` is an int and the
``DecisionStream`` a dict of the JSON as received, with their details as attributes that survive copy and pickle.
``prune_failing_machines_signals(batch_size=...)`` returns an int, as it did.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient
from cscapi.errors import LoginBannedError, MachineCoolingDownError, ServerError
from cscapi.models import DecisionStream, SendReport
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal, generate_machine_id_from_key
from test_client_support import make_config

M1 = generate_machine_id_from_key("legacy-results-1", prefix="leg")
M2 = generate_machine_id_from_key("legacy-results-2", prefix="leg")
SCENARIO = "crowdsecurity/ssh-bf"


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    config = EmulatorConfig(seed=11, community_size=120, attachment_keys=("legacykey123",))
    with EmbeddedEmulator(config) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_emulator(emu: Any) -> None:
    emu.admin.reset()


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLStorage]:
    store = SQLStorage(f"sqlite:///{tmp_path / 'legacy.db'}")
    yield store
    store.close()


def signals(machine_id: str, count: int, first: int = 1) -> list[Any]:
    return [create_signal(f"192.0.2.{i}", SCENARIO, None, machine_id) for i in range(first, first + count)]


def raw_stream(emu: Any, storage: SQLStorage, machine_id: str) -> dict[str, Any]:
    """The stream as CAPI sends it, fetched with the client's own token (startup: the same full list every time)."""
    machine = storage.get_machine_by_id(machine_id)
    assert machine is not None and machine.token
    url = emu.base_url + "v3/decisions/stream"
    response = httpx.get(url, params={"startup": "true"}, headers={"Authorization": f"Bearer {machine.token}"})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def check_int_report(n: Any, value: int) -> None:
    """Every legacy use of the int that ``send_signals`` returned."""
    assert isinstance(n, int) and isinstance(n, SendReport)
    assert n == value and value == n and not (n != value)  # noqa: SIM202 - __ne__ is defined apart
    assert n + 1 == value + 1 and type(n + 1) is int and 1 + n == value + 1
    assert (n > 0) is (value > 0) and n >= value and n < value + 1
    assert sum([n, n, 1]) == 2 * value + 1
    assert json.dumps({"sent": n}) == json.dumps({"sent": value}) and json.dumps(n) == str(value)
    assert f"{n:d}" == f"{n}" == str(n) == "%d" % n == "%s" % n == str(value)  # noqa: UP031 - legacy formatting
    assert hash(n) == hash(value) and {n: "x"}[value] == "x"
    assert int(n) == n.sent == value and type(n.sent) is int
    assert bool(n) is bool(value)
    assert [0, 1, 2, 3, 4, 5][n] == value  # usable as an index, like any int
    assert repr(n).startswith(f"SendReport(sent={value}, ") and "batches=" in repr(n)


def check_report_details_survive(report: SendReport) -> None:
    for twin in (
        pickle.loads(pickle.dumps(report)),
        pickle.loads(pickle.dumps(report, protocol=2)),
        copy.copy(report),
        copy.deepcopy(report),
    ):
        assert type(twin) is SendReport and twin == report and int(twin) == int(report)
        assert twin.failed_machines == report.failed_machines and twin.batches == report.batches
        assert twin.quarantined == report.quarantined
        assert {m: (type(e), e.message, e.hint) for m, e in twin.errors.items()} == {
            m: (type(e), e.message, e.hint) for m, e in report.errors.items()
        }
        assert repr(twin) == repr(report)


def check_immutable(report: SendReport) -> None:
    for name, value in (("sent", 99), ("batches", 99), ("quarantined", 1), ("failed_machines", {}), ("extra", 1)):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(report, name, value)
    with pytest.raises(AttributeError, match="immutable"):
        del report.batches


def check_dict_stream(stream: Any, raw: dict[str, Any]) -> None:
    """Every legacy use of the dict that ``get_decisions`` returned, and the typed reading beside it."""
    assert isinstance(stream, dict) and isinstance(stream, DecisionStream)
    assert stream == raw and dict(stream) == raw and len(stream) == len(raw)
    assert json.loads(json.dumps(stream)) == raw
    assert dict(stream.items()) == raw and list(stream.keys()) == list(raw) and list(stream) == list(raw)
    assert stream.get("new") == raw.get("new") and stream.get("nope", 7) == 7 and ("new" in stream) is ("new" in raw)
    assert stream.raw is stream
    legacy_values = [d["value"] for group in stream["new"] for d in group["decisions"]]
    assert len(stream.new) == len(legacy_values) > 0  # the emulator's stream is clean: every item read
    assert sorted(d.value for d in stream.new) == sorted(legacy_values) and stream.skipped == 0
    shared = {id(value) for value in legacy_values}
    assert all(id(d.value) in shared for d in stream.new)  # one string per value for both views, not two
    for twin in (pickle.loads(pickle.dumps(stream)), copy.copy(stream), copy.deepcopy(stream)):
        assert type(twin) is DecisionStream and twin == raw
        assert (twin.new, twin.deleted, twin.blocklists, twin.allowlists) == (
            stream.new,
            stream.deleted,
            stream.blocklists,
            stream.allowlists,
        )
        assert (twin.skipped, twin.startup) == (stream.skipped, stream.startup)
    assert type(stream.copy()) is dict and stream.copy() == raw  # dict.copy gives a plain dict, as before


def make_failing(emu: Any, client: CAPIClient, storage: SQLStorage) -> None:
    """M2's next send fails (503 without retries): M2 is marked failing, its signals stay queued."""
    client.login(M2)
    emu.admin.set_fault("signals", error_rate=1.0, error_status=503)
    try:
        report = client.send_signals()
    finally:
        emu.admin.clear_faults()
    check_int_report(report, 0)
    assert isinstance(report.errors[M2], ServerError) and M2 in report.failed_machines
    check_report_details_survive(report)
    assert storage.count_signals(M2).queued == 4


def test_sync_results_are_the_legacy_builtins(emu: Any, storage: SQLStorage, capsys: Any) -> None:
    with CAPIClient(storage, make_config(None, base_url=emu.base_url, max_retries=0)) as client:
        added = client.add_signals(signals(M1, 3))
        assert added == 3 and type(added) is int
        n = client.send_signals()
        check_int_report(n, 3)
        check_report_details_survive(n)
        check_immutable(n)
        print(n)
        assert capsys.readouterr().out == "3\n"  # the number, not the report
        assert client.send_signals() == 0 and not client.send_signals()

        stream = client.get_decisions(M1, [SCENARIO], startup=True)
        check_dict_stream(stream, raw_stream(emu, storage, M1))
        stream["new"] = []  # a dict, mutable as the legacy one was; the typed reading is what arrived
        assert stream["new"] == [] and len(stream.new) > 0

        client.add_signals(signals(M2, 4))
        make_failing(emu, client, storage)
        again = client.send_signals()  # M2 cools down: not tried
        check_int_report(again, 0)
        assert isinstance(again.errors[M2], MachineCoolingDownError) and again.failed_machines == {}
        check_report_details_survive(again)
        pruned = client.prune_failing_machines_signals(batch_size=1)  # the legacy keyword, one signal per read
        assert pruned == 4 and type(pruned) is int
        assert storage.count_signals(M2).queued == 0 and client.prune_failing_machines_signals() == 0

        outcomes = client.enroll_machines([M1], "legacy", "legacykey123", ["t"])
        assert isinstance(outcomes, list) and [o.ok for o in outcomes] == [True]


@pytest.mark.anyio
async def test_async_results_are_the_legacy_builtins(emu: Any, storage: SQLStorage) -> None:
    async with AsyncCAPIClient(storage, make_config(None, base_url=emu.base_url, max_retries=0)) as client:
        assert await client.add_signals(signals(M1, 2)) == 2
        n = await client.send_signals()
        check_int_report(n, 2)
        check_report_details_survive(n)
        check_immutable(n)

        stream = await client.get_decisions(M1, [SCENARIO], startup=True)
        check_dict_stream(stream, raw_stream(emu, storage, M1))

        await client.add_signals(signals(M2, 3))
        await client.login(M2)
        emu.admin.set_fault("signals", error_rate=1.0, error_status=503)
        try:
            failed = await client.send_signals()
        finally:
            emu.admin.clear_faults()
        check_int_report(failed, 0)
        assert isinstance(failed.errors[M2], ServerError)
        check_report_details_survive(failed)
        pruned = await client.prune_failing_machines_signals(batch_size=2)
        assert pruned == 3 and type(pruned) is int


def test_report_with_keyword_only_errors_pickles() -> None:
    """``LoginBannedError`` and ``MachineCoolingDownError`` need keyword arguments: a report holding them pickles."""
    until = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    report = SendReport(
        2,
        1,
        {M1: "CAPI banned logins"},
        3,
        {
            M1: LoginBannedError("banned", until=until),
            M2: MachineCoolingDownError("cooling", until=until + timedelta(minutes=5), reason="503"),
        },
    )
    check_int_report(report, 2)
    check_report_details_survive(report)
    twin = pickle.loads(pickle.dumps(report))
    banned, cooling = twin.errors[M1], twin.errors[M2]
    assert isinstance(banned, LoginBannedError) and banned.until == until
    assert isinstance(cooling, MachineCoolingDownError) and cooling.reason == "503"
    assert report != SendReport(2) and report == 2 and SendReport(2) == 2  # report to report: details count
    with pytest.raises(TypeError):
        SendReport(-1)
    with pytest.raises(TypeError):
        SendReport(True)


def test_stream_shares_the_json_it_was_given() -> None:
    """The dict view holds the parsed JSON's own lists: no second copy of a large stream."""
    new = [{"scenario": SCENARIO, "scope": "Ip", "decisions": [{"value": "192.0.2.1", "duration": "1h"}]}]
    raw = {"new": new, "deleted": None}
    stream = DecisionStream(raw)
    assert stream["new"] is new and stream == raw and stream.new == [] and repr(stream).startswith("DecisionStream(")
    assert DecisionStream() == {} and DecisionStream(new=[]).new == []
