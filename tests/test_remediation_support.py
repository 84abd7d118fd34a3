"""Test double of the network boundary for the remediation engine tests: a scripted decision source.

It returns real ``DecisionStream`` / ``LinkDownload`` values (the client's contract) and records every call, so the
engine's own code runs for real. End-to-end tests against the real client and emulator are in
``test_remediation_emulator.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cscapi.errors import TransportError
from cscapi.models import AllowlistLink, BlocklistLink, DecisionStream, DeletedDecision, LinkDownload, StreamDecision


def decision(
    value: str, scenario: str = "crowdsecurity/ssh-bf", duration: float = 3600, scope: str = "ip", type_: str = "ban"
) -> StreamDecision:
    return StreamDecision(value=value, scope=scope, scenario=scenario, duration=duration, type=type_)


def stream(
    new: list[StreamDecision] | None = None,
    deleted: list[str] | None = None,
    blocklists: list[BlocklistLink] | None = None,
    allowlists: list[AllowlistLink] | None = None,
    links: bool = True,
) -> DecisionStream:
    raw: dict[str, Any] = {"new": [], "deleted": []}
    if links:
        raw["links"] = {"blocklists": [], "allowlists": []}
    return DecisionStream(
        new=list(new or []),
        deleted=[DeletedDecision(value=v, scope="range" if "/" in v else "ip") for v in (deleted or [])],
        blocklists=list(blocklists or []),
        allowlists=list(allowlists or []),
        raw=raw,
    )


def blocklist(name: str, remediation: str = "ban", duration: float = 86400) -> BlocklistLink:
    return BlocklistLink(
        name=name,
        url=f"http://127.0.0.1:1/lists/{name}?sig=SECRETSIG",
        remediation=remediation,
        scope="ip",
        duration=duration,
    )


def allowlist(name: str) -> AllowlistLink:
    return AllowlistLink(id=f"id-{name}", name=name, url=f"http://127.0.0.1:1/allow/{name}?sig=SECRETSIG")


class FakeSource:
    """Scripted CAPI: ``streams`` are returned in order; ``links`` maps a list URL to its body, a 304, or an error."""

    def __init__(self) -> None:
        self.streams: list[DecisionStream | Exception] = []
        self.links: dict[str, str | int | Exception | Callable[[str | None], LinkDownload]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.pushed: list[tuple[str, dict[str, Any]]] = []
        self.push_error: Exception | None = None

    def get_decisions(
        self,
        main_machine_id: str,
        scenarios: Any = None,
        *,
        startup: bool = False,
        community_pull: bool = True,
        additional_pull: bool = True,
    ) -> DecisionStream:
        self.calls.append(
            (
                "get_decisions",
                {
                    "machine_id": main_machine_id,
                    "startup": startup,
                    "community_pull": community_pull,
                    "additional_pull": additional_pull,
                },
            )
        )
        if not self.streams:
            return stream()
        item = self.streams.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def download_link(self, url: str, *, if_modified_since: str | None = None) -> LinkDownload:
        self.calls.append(("download_link", {"url": url, "if_modified_since": if_modified_since}))
        body = self.links.get(url)
        if body is None:
            raise TransportError("connection refused")
        if isinstance(body, Exception):
            raise body
        if callable(body):
            return body(if_modified_since)
        if body == 304:
            return LinkDownload(url=url, status_code=304, not_modified=True, last_modified=if_modified_since)
        return LinkDownload(url=url, status_code=200, text=str(body), last_modified="Sat, 21 Nov 2026 22:00:00 GMT")

    def default_machine_id(self) -> str:
        self.calls.append(("default_machine_id", None))
        return "m" * 48

    def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> None:
        self.calls.append(("push_usage_metrics", machine_id))
        if self.push_error is not None:
            raise self.push_error
        self.pushed.append((machine_id, payload))

    def startups(self) -> list[bool]:
        return [c[1]["startup"] for c in self.calls if c[0] == "get_decisions"]


class AsyncFakeSource:
    """The same script, as coroutines (for ``AsyncRemediationEngine``)."""

    def __init__(self, sync: FakeSource | None = None) -> None:
        self.sync = sync or FakeSource()

    async def get_decisions(self, main_machine_id: str, scenarios: Any = None, **kw: Any) -> DecisionStream:
        return self.sync.get_decisions(main_machine_id, scenarios, **kw)

    async def download_link(self, url: str, *, if_modified_since: str | None = None) -> LinkDownload:
        return self.sync.download_link(url, if_modified_since=if_modified_since)

    async def default_machine_id(self) -> str:
        return self.sync.default_machine_id()

    async def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> None:
        self.sync.push_usage_metrics(machine_id, payload)


class Clock:
    """A settable clock (unix seconds) for expiry tests."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
