"""docs/client.md stays true: its quick start runs as written, and its fragments run against the emulator."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cscapi.client import CAPIClient
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal, generate_machine_id_from_key
from test_client_support import make_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "client.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def block(marker: str) -> str:
    """The one Python example of docs/client.md containing ``marker``."""
    (found,) = [b for b in BLOCKS if marker in b]
    return found


def test_every_example_compiles() -> None:
    assert len(BLOCKS) >= 8
    for index, text in enumerate(BLOCKS):
        compile(text, f"docs/client.md[{index}]", "exec")


def test_quick_start_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.chdir(tmp_path)  # it writes cscapi.db in the current directory
    exec(compile(block("EmbeddedEmulator(EmulatorConfig(seed=1"), "docs/client.md", "exec"), {})
    out = capsys.readouterr().out
    # the emulator tailors its community list of 50 to the declared scenarios, as CAPI does
    found = re.search(r"^(\d+) community decisions$", out, flags=re.M)
    assert "2 accepted" in out and found is not None and 0 < int(found.group(1)) <= 50
    assert (tmp_path / "cscapi.db").exists()


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

    with EmbeddedEmulator(EmulatorConfig(seed=3, community_size=5)) as server:
        yield server


@pytest.fixture
def namespace(emu: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    emu.admin.reset()
    storage = SQLStorage(f"sqlite:///{tmp_path / 'docs.db'}")
    mid = generate_machine_id_from_key("docs-host")
    with CAPIClient(storage, make_config(None, base_url=emu.base_url)) as client:
        yield {"client": client, "machine_id": mid, "mid": mid, "create_signal": create_signal}
    storage.close()


def test_scenarios_and_logins_example(emu: Any, namespace: dict[str, Any]) -> None:
    namespace["client"].add_signals([create_signal("192.0.2.9", "crowdsecurity/ssh-bf", machine_id=namespace["mid"])])
    exec(compile(block("a subset: same token, no login"), "docs/client.md", "exec"), namespace)
    logins = emu.admin.logins(namespace["mid"])
    assert len(logins) == 2  # the config's scenarios, then once more with http-probing added


def test_method_fragments_run(emu: Any, namespace: dict[str, Any]) -> None:
    emu.admin.publish_blocklist("docs-list", ["198.51.100.1"], duration="1h")
    for marker in (
        "added = client.add_signals",
        "stream = client.get_decisions(machine_id, startup=True)",
        "link = stream.blocklists[0]",
        "if client.clear_login_ban(machine_id):",
        "whisper = create_signal(",
    ):
        exec(compile(block(marker), "docs/client.md", "exec"), namespace)
    assert namespace["added"] == 1 and namespace["later"].not_modified
    assert namespace["ranged"].source.scope == "range" and namespace["ban"].decisions


def test_legacy_and_typed_results_example(emu: Any, namespace: dict[str, Any], capsys: Any) -> None:
    """The results are the 0.7.0 int and dict, with the typed details beside them."""
    namespace["client"].add_signals([create_signal("192.0.2.11", "crowdsecurity/ssh-bf", machine_id=namespace["mid"])])
    emu.admin.add_decisions([{"value": f"198.51.100.{i}", "scenario": "crowdsecurity/ssh-bf"} for i in (1, 2, 3)])
    exec(compile(block('json.dumps({"sent": report})'), "docs/client.md", "exec"), namespace)
    first, second = capsys.readouterr().out.splitlines()
    assert first == '1 accepted in 1 POSTs {"sent": 1}'
    assert second == "True 3 decisions"  # the 3 added (the 5 seeded ones are of scenarios the client did not declare)


def test_send_report_errors_example(emu: Any, namespace: dict[str, Any], capsys: Any) -> None:
    client, mid = namespace["client"], namespace["mid"]
    client.add_signals([create_signal("192.0.2.10", "crowdsecurity/ssh-bf", machine_id=mid)])
    client.login(mid)
    emu.admin.set_fault("signals", error_rate=1.0, error_status=503)
    try:
        exec(compile(block("for failed_id, error in report.errors.items():"), "docs/client.md", "exec"), namespace)
    finally:
        emu.admin.clear_faults()
    assert f"{mid}: CAPI unreachable or failing" in capsys.readouterr().out
    exec(compile(block("for failed_id, error in report.errors.items():"), "docs/client.md", "exec"), namespace)
    assert f"{mid}: not tried, waits until" in capsys.readouterr().out
