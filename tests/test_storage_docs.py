"""Every Python example of docs/storage.md runs as written (in a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import require_module

DOC = Path(__file__).resolve().parent.parent / "docs" / "storage.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("cryptography")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSCAPI_STORAGE_KEY", raising=False)
    exec(compile(BLOCKS[index], f"docs/storage.md[{index}]", "exec"), {"__name__": "__doc_example__"})
