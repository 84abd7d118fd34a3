"""Code written for the legacy cscapi 0.7.0 runs unchanged: against a mock CAPI, and against the emulator.

The legacy snippets name no server, so the tests point them elsewhere without touching them: the mock run hands the
mock transport to every ``CAPIClientConfig`` the program builds (a subclass replaces the class the program imports);
the emulator runs set ``CSCAPI_BASE_URL`` (documented in docs/client.md). Each runs in a temporary directory, where
``sqlite:///cscapi.db`` lands. The README's migration section snippets are read from README.md itself, so the page
and the test cannot drift apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import cscapi.client
from test_client_support import FakeCAPI

README = Path(__file__).resolve().parent.parent / "README.md"


def migration_blocks() -> list[str]:
    """The Python blocks of the README's section "Migrating from `cscapi` 0.7.0", as written there."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Migrating from `cscapi` 0.7.0")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def migration_block(marker: str) -> str:
    (found,) = [block for block in migration_blocks() if marker in block]
    return found


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

    class ConfigWithMockTransport(cscapi.client.CAPIClientConfig):
        """The program's own config, with the mock transport added (the program itself is not touched)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, transport=fake.transport, **kwargs)

    monkeypatch.setattr(cscapi.client, "CAPIClientConfig", ConfigWithMockTransport)
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

    # the community list is tailored to the scenarios the program declares at login: generate it from those
    scenarios = ["crowdsecurity/ssh-bf", "acme/http-bf"]
    config = EmulatorConfig(
        seed=3, community_size=25, attachment_keys=("myattachmentkey123",), community_scenarios=scenarios
    )
    with EmbeddedEmulator(config) as emu:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("CSCAPI_BASE_URL", emu.base_url)
        out = legacy_program()
        out["client"].close()
        received = emu.admin.signals(machine_id=out["machine_id"])
        machine = emu.admin.machine(out["machine_id"])
    assert out["sent"] == 1
    assert len(received) == 1 and received[0]["signal"]["source"]["value"] == "81.81.81.81"
    # the community list is tailored to the declared scenarios: some of the 25, every one read from the raw JSON
    legacy_values = [d["value"] for group in out["decisions"]["new"] for d in group["decisions"]]
    assert 0 < len(out["decisions"].new) == len(legacy_values) <= 25
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


def test_readme_migration_snippet_runs_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's 0.7.0 snippet: ``n + 1``, ``json.dumps({"sent": n})``, ``json.dumps(get_decisions(...))``..."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    code = migration_block("n = client.send_signals()")
    for legacy_use in ("n + 1", 'json.dumps({"sent": n})', "json.dumps(decisions)", 'decisions["new"]'):
        assert legacy_use in code  # the seed's uses of the two results are in the snippet
    with EmbeddedEmulator(EmulatorConfig(seed=4, community_size=30)) as emu:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("CSCAPI_BASE_URL", emu.base_url)
        namespace: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), namespace)
        namespace["client"].close()
        received = emu.admin.signals()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '1 2 True {"sent": 1} 1' and lines[1] == "True True" and lines[-1] == "0"
    groups = [line.split() for line in lines[2:-1]]
    assert groups and all(int(count) > 0 for _, count in groups)  # the community list, read as the raw dict
    assert len(received) == 1 and received[0]["signal"]["source"]["value"] == "192.0.2.7"
    decisions = namespace["decisions"]
    assert json.loads(json.dumps(decisions)) == dict(decisions) and sum(int(c) for _, c in groups) == len(decisions.new)


def test_readme_legacy_storage_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's adapter snippet, with a real 0.7.0-shaped storage class for ``MyStorage``."""
    from cscapi.client import CAPIClientConfig
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig
    from cscapi.utils import create_signal, generate_machine_id_from_key
    from test_legacy_storage import MemoryLegacyStorage

    code = migration_block("LegacyStorageAdapter(MyStorage())")
    with EmbeddedEmulator(EmulatorConfig(seed=4, community_size=5)) as emu:
        monkeypatch.chdir(tmp_path)
        namespace: dict[str, Any] = {
            "CAPIClient": cscapi.client.CAPIClient,
            "MyStorage": MemoryLegacyStorage,
            "config": CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=emu.base_url),
        }
        exec(compile(code, "README.md", "exec"), namespace)
        client = namespace["client"]
        machine_id = generate_machine_id_from_key("readme-adapter")
        client.add_signals([create_signal("192.0.2.8", "crowdsecurity/ssh-bf", None, machine_id)])
        sent = client.send_signals(prune_after_send=False)
        client.close()
        received = emu.admin.signals(machine_id=machine_id)
    assert sent == 1 and len(received) == 1
    assert [s.sent for s in client.storage.legacy.signals.values()] == [True]  # marked in the 0.7.0 store


def test_legacy_models_keep_their_positional_order() -> None:
    """0.7.0 code (its own tests did) built models positionally: the fields mean what they meant."""
    from cscapi.storage import ContextModel, DecisionModel, MachineModel, SourceModel

    machine = MachineModel("test", "abcd", "secret", "crowdsecurity/ssh-bf", True)
    assert (machine.machine_id, machine.token, machine.password) == ("test", "abcd", "secret")
    assert machine.scenarios == "crowdsecurity/ssh-bf" and machine.is_failing is True
    context = ContextModel("/login", "target_uri")
    assert (context.key, context.value) == ("target_uri", "/login")
    source = SourceModel("192.0.2.1", None, None, 48.8, "64500", "FR", "192.0.2.1", "EXAMPLE", 2.3)
    assert (source.ip, source.scope, source.as_number, source.cn, source.as_name) == (
        "192.0.2.1",
        "ip",  # set from ip, as 0.7.0 did
        "64500",
        "FR",
        "EXAMPLE",
    )
    assert (source.latitude, source.longitude, source.value) == (48.8, 2.3, "192.0.2.1")
    assert SourceModel(range="198.51.100.0/24").scope == "range" and SourceModel(scope="username").scope == "username"
    decision = DecisionModel("4h", "0b1c5a2e-4a3b-4f5e-9d3c-2b1a0f9e8d7c", "crowdsecurity/ssh-bf", "crowdsec", "ip")
    assert (decision.duration, decision.origin, decision.scope) == ("4h", "crowdsec", "ip")


def test_legacy_client_module_names() -> None:
    """0.7.0's module-level names of ``cscapi.client`` import; ``has_valid_token`` uses the corrected rule."""
    import time

    from cscapi.client import (
        CAPI_BASE_DEV_URL,
        CAPI_BASE_URL,
        CAPI_DECISIONS_ENDPOINT,
        CAPI_SIGNALS_ENDPOINT,
        SIGNAL_BATCH_LIMIT,
        __version__,
        has_valid_token,
    )
    from cscapi.storage import MachineModel, ReceivedDecision
    from test_client_support import make_jwt

    assert CAPI_BASE_URL + CAPI_SIGNALS_ENDPOINT == "https://api.crowdsec.net/v3/signals"
    assert CAPI_BASE_DEV_URL + CAPI_DECISIONS_ENDPOINT == "https://api.dev.crowdsec.net/v3/decisions/stream"
    assert SIGNAL_BATCH_LIMIT == 5000 and __version__ and ReceivedDecision("1h", "192.0.2.1", "a/b", "ip").Value
    hour = MachineModel("m", make_jwt({"exp": int(time.time()) + 3600}))
    soon = MachineModel("m", make_jwt({"exp": int(time.time()) + 5}))
    late = MachineModel("m", make_jwt({"exp": int(time.time()) - 5}))
    assert has_valid_token(hour) and has_valid_token(hour, latency_offset=60)
    assert not has_valid_token(soon)  # within latency_offset of its end: 0.7.0 still said True
    assert not has_valid_token(late)  # expired 5 s ago: 0.7.0 said True (up to 10 s after)
    assert not has_valid_token(MachineModel("m")) and not has_valid_token(MachineModel("m", "not-a-jwt"))
