"""What the engine needs from a CAPI client: four methods, as a ``typing.Protocol`` (behaviour, not a class).

Named ``contracts`` (not ``protocol``) so it is not mistaken for the wire package :mod:`cscapi.protocol`.

``cscapi.client.CAPIClient`` satisfies :class:`DecisionSource` and ``cscapi.aio.AsyncCAPIClient`` satisfies
:class:`AsyncDecisionSource`; a test double or another transport can too.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from cscapi.models import DecisionStream, LinkDownload

__all__ = ["AsyncDecisionSource", "DecisionSource"]


@runtime_checkable
class DecisionSource(Protocol):
    """The blocking client methods the engine calls."""

    def get_decisions(
        self, main_machine_id: str, *, startup: bool = ..., community_pull: bool = ..., additional_pull: bool = ...
    ) -> DecisionStream: ...

    def download_link(self, url: str, *, if_modified_since: str | None = ...) -> LinkDownload: ...

    def default_machine_id(self) -> str: ...

    def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> None: ...


@runtime_checkable
class AsyncDecisionSource(Protocol):
    """The same methods as coroutines."""

    async def get_decisions(
        self, main_machine_id: str, *, startup: bool = ..., community_pull: bool = ..., additional_pull: bool = ...
    ) -> DecisionStream: ...

    async def download_link(self, url: str, *, if_modified_since: str | None = ...) -> LinkDownload: ...

    async def default_machine_id(self) -> str: ...

    async def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> None: ...
