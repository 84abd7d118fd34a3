"""The user pages hold together: links resolve, the README's first screen has its picture, the troubleshooting
snippet runs as written, and every figure on docs/benchmarks.md says how it was measured and when."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(m) for m in re.findall(r"^#+ (.*)$", page.read_text(), flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        missing_anchor = bool(anchor) and dest.suffix == ".md" and dest.exists() and anchor not in _anchors(dest)
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert broken == [], f"{page.name}: broken links {broken}"


def test_the_first_screen_has_the_two_commands_and_the_picture() -> None:
    first_screen = "\n".join(ROOT.joinpath("README.md").read_text().splitlines()[:45])
    assert ".venv/bin/cscapi demo" in first_screen
    assert ".venv/bin/python -m pytest" in first_screen
    assert "```mermaid" in first_screen and "RemediationEngine" in first_screen and "signal queue" in first_screen


def test_benchmark_sections_say_how_and_when() -> None:
    text = ROOT.joinpath("docs", "benchmarks.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) >= 6
    for section in sections:
        title = section.splitlines()[0]
        assert re.search(r"bench/\w+\.py|pytest", section), f"{title}: no command"
        assert re.search(r"20\d\d-\d\d-\d\d", section), f"{title}: no date"


def test_user_pages_carry_no_benchmark_tables() -> None:
    for page in PAGES:
        if page.name == "benchmarks.md":
            continue
        text = page.read_text()
        assert "ratio to `python -c pass`" not in text and "pycrowdsec 0.0.5 `Cache.get`" not in text, page.name
        assert not re.search(r"^\| .*(signals/s|responses/s)", text, flags=re.M), page.name


def test_the_refresh_too_soon_snippet_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig
    from cscapi.remediation import RemediationEngine
    from cscapi.sql_storage import SQLStorage

    page = ROOT.joinpath("docs", "troubleshooting.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "RefreshTooSoonError" in b)
    with (
        EmbeddedEmulator(EmulatorConfig(seed=1)) as emu,
        SQLStorage(f"sqlite:///{tmp_path / 'q.db'}") as storage,
        CAPIClient(storage, CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=emu.base_url)) as client,
    ):
        engine = RemediationEngine(client)
        engine.refresh_decisions()
        namespace: dict[str, Any] = {"engine": engine}
        exec(compile(code, "docs/troubleshooting.md", "exec"), namespace)
        engine.close()
    assert "keeping the current decisions; next pull allowed at" in capsys.readouterr().out


def test_no_page_promises_exactly_once_delivery() -> None:
    """Delivery is at least once (a lost answer means a re-send): no page may say a signal is never sent twice."""
    promise = re.compile(r"never (re-?)?sen(d|ds|t)( a signal| signals)? twice|never sent twice|exactly once", re.I)
    for page in PAGES:
        assert not promise.search(page.read_text().replace("\n", " ")), page.name
