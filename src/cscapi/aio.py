"""``AsyncCAPIClient``: the same methods as ``CAPIClient``, as coroutines, driving the same flows.

HTTP goes through ``httpx.AsyncClient``, every storage call runs in a worker thread (``asyncio.to_thread``) and
pauses use ``asyncio.sleep``: nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from cscapi._config import SIGNAL_BATCH_LIMIT, CAPIClientConfig
from cscapi._core import Core, T
from cscapi.models import DecisionStream, EnrollOutcome, LinkDownload, Machine, SendReport, Signal
from cscapi.runtime import Clocks, Flow, run_async
from cscapi.storage import StorageInterface
from cscapi.timeutil import utcnow
from cscapi.transport import AsyncTransport

__all__ = ["AsyncCAPIClient"]


class AsyncCAPIClient:
    """Share signals with CAPI and pull its decisions from asyncio code. See ``CAPIClient`` for each method."""

    def __init__(self, storage: StorageInterface, config: CAPIClientConfig) -> None:
        self._core = Core(storage, config)  # validates both arguments
        self.storage = storage
        self.config = config
        self.logger = config.logger
        self._transport = AsyncTransport(config.transport_settings())
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._clock: Callable[[], datetime] = utcnow

    async def _run(self, flow: Flow[T]) -> T:
        return await run_async(flow, self._transport, sleep=self._sleep, clocks=Clocks(utc=self._clock))

    async def add_signals(self, signals: Iterable[Signal], destinations: Sequence[str] | str = ("capi",)) -> int:
        """Validate and queue signals (the storage call runs in a worker thread); ``destinations`` as in the sync
        client."""
        return await self._run(self._core.add_signals(signals, destinations))

    async def send_signals(self, prune_after_send: bool = True, batch_size: int | None = None) -> SendReport:
        """Send every queued signal; the report is an ``int`` (the number accepted) with details as attributes."""
        return await self._run(self._core.send_signals(prune_after_send, batch_size))

    async def prune_failing_machines_signals(self, batch_size: int = SIGNAL_BATCH_LIMIT) -> int:
        """Delete the queued signals of machines that are failing right now; returns how many."""
        return await self._run(self._core.prune_failing_machines_signals(batch_size))

    async def get_decisions(
        self,
        main_machine_id: str,
        scenarios: Sequence[str] | None = None,
        *,
        startup: bool = False,
        community_pull: bool = True,
        additional_pull: bool = True,
    ) -> DecisionStream:
        """Pull the decisions stream as ``main_machine_id``: a ``dict`` of the JSON, typed parts as attributes."""
        return await self._run(
            self._core.get_decisions(
                main_machine_id,
                scenarios,
                startup=startup,
                community_pull=community_pull,
                additional_pull=additional_pull,
            )
        )

    async def download_link(self, url: str, *, if_modified_since: datetime | str | None = None) -> LinkDownload:
        """Download a blocklist or allowlist link (no Authorization header)."""
        return await self._run(self._core.download_link(url, if_modified_since))

    async def delete_decisions(self, machine_id: str, uuids: Sequence[str]) -> None:
        """Tell CAPI these decisions were deleted locally."""
        await self._run(self._core.delete_decisions(machine_id, uuids))

    async def enroll_machines(
        self,
        machine_ids: Sequence[str],
        name: str | None,
        attachment_key: str,
        tags: Sequence[str] | None,
        overwrite: bool = False,
    ) -> list[EnrollOutcome]:
        """Enroll machines into the CrowdSec console; one outcome per machine."""
        return await self._run(self._core.enroll_machines(machine_ids, name, attachment_key, tags, overwrite))

    async def register_machine(self, machine_id: str | None = None, password: str | None = None) -> Machine:
        """Register a machine (id and password generated when absent)."""
        return await self._run(self._core.register_machine(machine_id, password))

    async def login(self, machine_id: str, *, force: bool = False) -> Machine:
        """A machine with a valid token (reused until ``exp - latency_offset``)."""
        return await self._run(self._core.login(machine_id, force=force))

    async def default_machine_id(self) -> str:
        """The first stored machine's id, or a newly registered machine's."""
        return await self._run(self._core.default_machine_id())

    async def clear_login_ban(self, machine_id: str) -> bool:
        """Forget the machine's stored login ban (and a refused login's cool-down); True if there was one."""
        return await self._run(self._core.clear_login_ban(machine_id))

    async def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> None:
        """``POST /v3/usage-metrics`` with an ``AllMetrics`` dict."""
        await self._run(self._core.push_usage_metrics(machine_id, payload))

    async def send_metrics(self, machine_id: str) -> None:
        """``POST /v3/metrics`` describing this SDK."""
        await self._run(self._core.send_metrics(machine_id))

    async def release_locks(self) -> int:
        """Give back the login locks and the claimed signals that calls in flight hold (see
        ``CAPIClient.release_locks``); the storage calls run in a worker thread."""
        calls = self._core.auth.held.take()
        for call in calls:
            await asyncio.to_thread(self._core.auth._release_now, call)
        return len(calls)

    async def aclose(self) -> None:
        """Close the HTTP connection pool (the storage stays open)."""
        await self._transport.aclose()

    async def close(self) -> None:
        """Alias of :meth:`aclose` (redis-py's convention: ``aclose`` on async classes, ``close`` kept)."""
        await self.aclose()

    async def __aenter__(self) -> AsyncCAPIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncCAPIClient(base_url={self.config.api_root!r}, storage={type(self.storage).__name__})"
