"""Code written for the legacy cscapi 0.7.0 runs unchanged: against a mock CAPI, and against the emulator.

The legacy snippet names no server, so the tests point it elsewhere without touching it: the mock run sets the
transport test hook ``cscapi.transport.DEFAULT_TRANSPORT``; the emulator run sets ``CSCAPI_BASE_URL`` (documented in
docs/client.md). Each runs in a temporary directory, where ``sqlite:///cscapi.db`` lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cscapi.transport
from test_client_support import FakeCAPI


def legacy_program() -> dict[str, Any]:
    """The legacy README's calls, exactly as written for cscapi 0.7.0 (values filled in)."""
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.sql_storage import SQLStorage
    from cscapi.utils import create_signal, generate_machine_id_from_key

    client = CAPIClient(
        storage=SQLStorage(connection_string="sqlite:///cscapi.db"),
        config=CAPIClientConfig(
            scenarios=["crowdsecurity/ssh-bf", "acme/http-bf"],
            user_agent_prefix="mycompany",
        ),
    )
    signals = [
        create_signal(
            attacker_ip="81.81.81.81",
            scenario="crowdsecurity/ssh-bf",
            created_at="2023-11-17 10:20:46 +0000",
            machine_id=generate_machine_id_from_key(key="<key>", prefix="mycompany"),
        )
    ]
    client.add_signals(signals)
    sent = client.send_signals()
    machine_id = generate_machine_id_from_key(key="<key>", prefix="mycompany")
    enrolled = client.enroll_machines(
        machine_ids=[machine_id], attachment_key="myattachmentkey123", name="mymachine", tags=["ssh-honeypot"]
    )
    decisions = client.get_decisions(main_machine_id=machine_id)
    positional = client.enroll_machines([machine_id], "basicName", "myattachmentkey123", ["tag"], True)
    return {
        "sent": sent,
        "machine_id": machine_id,
        "enrolled": enrolled,
        "decisions": decisions,
        "positional": positional,
        "client": client,
    }


def test_legacy_program_against_a_mock_capi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capi_spec: dict[str, Any]
) -> None:
    fake = FakeCAPI(capi_spec=capi_spec)
    fake.stream = {
        "new": [
            {"scenario": "crowdsecurity/ssh-bf", "scope": "ip", "decisions": [{"value": "192.0.2.1", "duration": "1h"}]}
        ]
    }
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSCAPI_BASE_URL", raising=False)
    monkeypatch.setattr(cscapi.transport, "DEFAULT_TRANSPORT", fake.transport)
    out = legacy_program()
    out["client"].close()
    assert (tmp_path / "cscapi.db").exists()
    assert out["sent"] == 1 and int(out["sent"]) == 1
    assert len(out["machine_id"]) == 48 and out["machine_id"].startswith("mycompany")
    (item,) = fake.signals
    assert item["source"]["value"] == "81.81.81.81" and item["created_at"] == "2023-11-17T10:20:46.000000Z"
    assert item["machine_id"] == out["machine_id"]
    assert all(r.headers["user-agent"].startswith("mycompany-capi-py-sdk/") for r in fake.requests)
    assert all(r.path.startswith("/v3/") for r in fake.requests)
    assert [o.ok for o in out["enrolled"] + out["positional"]] == [True, True]
    assert fake.calls("/v3/watchers/enroll")[-1].body["overwrite"] is True
    assert out["decisions"]["new"][0]["decisions"][0]["value"] == "192.0.2.1"  # legacy raw-dict access
    assert out["decisions"].new[0].value == "192.0.2.1"  # typed access
    assert fake.count("/v3/watchers/login") == 1  # one login for the whole program


def test_legacy_program_against_the_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    config = EmulatorConfig(seed=3, community_size=25, attachment_keys=("myattachmentkey123",))
    with EmbeddedEmulator(config) as emu:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("CSCAPI_BASE_URL", emu.base_url)
        out = legacy_program()
        out["client"].close()
        received = emu.admin.signals(machine_id=out["machine_id"])
        machine = emu.admin.machine(out["machine_id"])
    assert out["sent"] == 1
    assert len(received) == 1 and received[0]["signal"]["source"]["value"] == "81.81.81.81"
    assert len(out["decisions"].new) == 25
    assert [o.ok for o in out["enrolled"] + out["positional"]] == [True, True]
    assert len(machine["logins"]) == 1


def test_legacy_storage_names_still_import() -> None:
    from cscapi.storage import (
        ContextModel,
        DecisionModel,
        MachineModel,
        SignalModel,
        SourceModel,
        StorageInterface,
    )
    from cscapi.utils import create_signal

    signal = create_signal("192.0.2.3", "crowdsecurity/ssh-bf", "2023-11-17 10:20:46 +0000", "a" * 48)
    assert isinstance(signal, SignalModel) and isinstance(signal.source, SourceModel)
    assert {ContextModel, DecisionModel, MachineModel, StorageInterface}
