"""``loads_in_pieces`` equals ``json.loads`` on any document (values and failures), and ``gc_paused`` nests safely."""

from __future__ import annotations

import gc
import json
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cscapi.gcpause import gc_paused
from cscapi.protocol.http import PIECEWISE_JSON_BYTES, loads_json
from cscapi.protocol.jsonchunks import loads_in_pieces

# strings full of the separators the batcher looks for, so that batches also cut inside strings and deeper levels
TRICKY = st.sampled_from(["},{", '"},{"', '","', "],[", "\\", '\\"', "é", "\u2028", " , ", "{", "]"])
TEXT = st.lists(st.one_of(TRICKY, st.text(max_size=4)), max_size=4).map("".join)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(TEXT, inner, max_size=5)),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(doc=JSON, budget=st.integers(1, 64), depth=st.integers(0, 6), indent=st.sampled_from([None, 1]))
def test_same_value_as_json_loads(doc: Any, budget: int, depth: int, indent: int | None) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=False)
    assert loads_in_pieces(text, budget=budget, depth=depth) == json.loads(text)
    assert loads_in_pieces(text.encode("utf-8"), budget=budget, depth=depth) == json.loads(text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet='[]{}",:0123456789 tfnulrsae\\x', max_size=40))
def test_same_failures_as_json_loads(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            loads_in_pieces(text, budget=2)
    else:
        assert loads_in_pieces(text, budget=2) == expected


def stream_like(groups: int, per_group: int) -> dict[str, Any]:
    return {
        "new": [
            {
                "scenario": f"crowdsecurity/s{g}",
                "scope": "ip",
                "decisions": [{"value": f"10.{g}.{i // 256}.{i % 256}", "duration": "24h"} for i in range(per_group)],
            }
            for g in range(groups)
        ],
        "deleted": [{"scenario": "x", "scope": "ip", "decisions": [f"192.0.2.{i}" for i in range(200)]}],
        "links": {"blocklists": [], "allowlists": []},
    }


def test_a_large_stream_document_goes_through_loads_json_in_pieces() -> None:
    doc = stream_like(groups=3, per_group=4000)
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) > PIECEWISE_JSON_BYTES  # takes the piecewise path
    assert loads_json(body) == doc
    assert loads_in_pieces(body, budget=512) == doc


def test_hostile_and_malformed_documents_raise_value_error() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError):
        loads_json(deep.encode() + b" " * PIECEWISE_JSON_BYTES)  # large enough for the piecewise path
    for bad in ('{"a": [1, 2,]}', '{"a" 1}', "[1 2]", '{"a": 1} x', "", '{"a": [', "\ufeff{}"):
        with pytest.raises(ValueError):
            loads_in_pieces(bad)
    assert loads_in_pieces(b"\xef\xbb\xbf{}") == json.loads(b"\xef\xbb\xbf{}") == {}  # bytes with a BOM, as json


def test_gc_paused_nests_across_threads_and_restores() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=other)
    with gc_paused():
        worker.start()
        assert inside.wait(5)
    assert not gc.isenabled()  # the other thread still parses: stays paused
    release.set()
    worker.join(5)
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # disabled by the host before: left disabled
    finally:
        gc.enable()
