"""The async engine keeps the event loop free: the heavy work of a refresh runs in worker threads, and the state
codec works in slices (so no single call holds the GIL for long). Loop lag itself is measured by bench/remediation.py.
"""

from __future__ import annotations

import json
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest

import cscapi.remediation.core as core
import cscapi.remediation.stores.sqlite as sqlite_store
from cscapi.remediation import AsyncRemediationEngine, Remediation
from cscapi.remediation._chunks import CHUNK
from cscapi.remediation.state import (
    AllowlistState,
    BlocklistState,
    State,
    StateFormatError,
    decode_state,
    encode_state,
)
from test_remediation_support import AsyncFakeSource, FakeSource, blocklist, decision, stream


def big_state(n: int) -> State:
    values = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n)]
    return State(
        capi={("a/b", "ban", "ip"): {v: 2e9 + i for i, v in enumerate(values)}, ("a/c", "captcha", "ip"): {}},
        blocklists={"x": BlocklistState("x", "http://h/x", "ban", "ip", 3600.0, tuple(values[::-1]), 1.0, 2e9, "lm")},
        allowlists={"y": AllowlistState("y", "id", "http://h/y", {v: None for v in values[: CHUNK + 3]}, 1.0, None)},
        last_pull=1.5e9,
    )


def test_the_codec_slices_large_arrays_and_round_trips() -> None:
    state = big_state(3 * CHUNK + 17)
    blob = encode_state(state)
    lines = zlib.decompress(blob).split(b"\n")
    slices = [json.loads(line) for line in lines[1:]]
    assert all(len(s[0]) <= CHUNK if isinstance(s[0], list) else len(s) <= CHUNK for s in slices)
    assert len(lines) == 1 + 4 + 4 + 2  # header + capi slices + blocklist slices + allowlist slices
    decoded = decode_state(blob)
    assert decoded.capi[("a/b", "ban", "ip")] == state.capi[("a/b", "ban", "ip")]
    assert decoded.blocklists == state.blocklists and decoded.allowlists == state.allowlists
    assert decoded.last_pull == state.last_pull


def test_a_format_1_blob_is_still_read() -> None:
    doc = {
        "format": 1,
        "last_pull": 7.0,
        "capi": [["a/b", "ban", "ip", ["1.2.3.4"], [2e9]]],
        "blocklists": [
            {"name": "x", "url": "u", "remediation": "ban", "scope": "ip", "duration": 60, "values": ["5.6.7.8"],
             "pulled_at": 1, "expires_at": 2e9, "last_modified": None}
        ],
        "allowlists": [{"name": "y", "id": "i", "url": "u", "values": ["::1"], "expiries": [None], "pulled_at": 1,
                        "last_modified": None}],
    }  # fmt: skip
    state = decode_state(zlib.compress(json.dumps(doc, separators=(",", ":")).encode()))
    assert state.capi == {("a/b", "ban", "ip"): {"1.2.3.4": 2e9}}
    assert state.blocklists["x"].values == ("5.6.7.8",) and state.allowlists["y"].entries == {"::1": None}


@pytest.mark.parametrize("cut", ["drop_last_line", "extra_line", "bad_pair"])
def test_a_sliced_blob_that_does_not_add_up_is_refused(cut: str) -> None:
    lines = zlib.decompress(encode_state(big_state(CHUNK + 1))).split(b"\n")
    if cut == "drop_last_line":
        lines = lines[:-1]
    elif cut == "extra_line":
        lines.append(b"[]")
    else:
        lines[1] = b'[["1.2.3.4"],[]]'
    with pytest.raises(StateFormatError):
        decode_state(zlib.compress(b"\n".join(lines)))


@pytest.mark.anyio
async def test_the_heavy_work_of_an_async_refresh_runs_off_the_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, set[int]] = {}

    def spy(module: Any, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen.setdefault(name, set()).add(threading.get_ident())
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for name in ("apply_stream", "build_index", "parse_blocklist", "prune_state"):
        spy(core, name)
    for name in ("encode_state", "decode_state"):
        spy(sqlite_store, name)
    src = FakeSource()
    link = blocklist("l")
    src.streams.append(stream([decision(f"1.2.3.{i}") for i in range(50)], blocklists=[link]))
    src.links[link.url] = "\n".join(f"5.6.7.{i}" for i in range(50))
    engine = AsyncRemediationEngine(AsyncFakeSource(src), f"sqlite:///{tmp_path / 'd.db'}", sync_interval_ms=0)
    report = await engine.refresh_decisions()
    await engine.prune_cache()
    assert report.decisions == 100 and engine.get_ip_remediation("5.6.7.8").origin == "lists:l"
    assert set(seen) == {
        "apply_stream",
        "build_index",
        "parse_blocklist",
        "prune_state",
        "encode_state",
        "decode_state",
    }
    assert all(loop_thread not in threads for threads in seen.values()), seen
    await engine.aclose()


def test_the_index_build_hands_the_gil_over_between_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    import cscapi.remediation._chunks as chunks
    import cscapi.remediation.index as index

    handed = [0]

    def counting() -> None:
        handed[0] += 1

    monkeypatch.setattr(index, "yield_gil", counting)
    monkeypatch.setattr(chunks, "yield_gil", counting)
    state = big_state(3 * CHUNK)
    others = tuple(f"11.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(2 * CHUNK))
    extra = BlocklistState("z", "http://h/z", "captcha", "ip", 3600.0, others, 1.0, 2e9, None)
    state = state.evolve(blocklists={**state.blocklists, "z": extra})
    built = index.build_index(state, index.Policy(), "v", 1.6e9)
    # before each of the 3 slices of the CAPI group, between the 2 of the new list (x clashes: merged one by one)
    assert handed[0] >= 4
    assert built.decisions == 3 * CHUNK * 2 + 2 * CHUNK + CHUNK + 3
    assert built.lookup("11.0.0.1", 1.6e9) == Remediation("captcha", "lists:z")
    assert built.lookup("10.0.0.1", 1.6e9) == Remediation("bypass", "allowlist:y")
