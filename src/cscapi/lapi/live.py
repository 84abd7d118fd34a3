"""Live mode: the engine asks LAPI about an IP on an index miss, and caches the answer.

A lookup first reads this process's cache (no I/O), then the engine's shared store (so every worker shares one cache),
then ``GET /v1/decisions?ip=`` (the IP and the ranges containing it). A bad answer is cached for
``bad_ip_cache_duration`` or the decision's remaining time if shorter, a clean one for ``clean_ip_cache_duration``. A
LAPI failure answers the engine's fallback remediation (origin ``lapi-unavailable``), is counted and is not cached.
The miss is a flow on :mod:`cscapi.runtime`: the sync engine runs it inline, the async engine in its own task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from cscapi.errors import CAPIError, InvalidIPError
from cscapi.iputil import canonical_address
from cscapi.lapi.protocol import LapiDecision
from cscapi.remediation.models import CLEAN, Remediation
from cscapi.runtime import EPOCH, Blocking, Delegate, Flow

__all__ = ["UNAVAILABLE_ORIGIN", "LiveCache"]

UNAVAILABLE_ORIGIN = "lapi-unavailable"
"""Origin of the fallback answer given when LAPI could not be asked (counted in ``LiveCache.failures``)."""
_KEY = "live:"
_SEP = "\t"


class LiveCache:
    """The live-mode answers of one engine: a bounded in-process map in front of the store's shared cache."""

    def __init__(
        self,
        client: Any,
        store: Any,
        policy: Any,
        logger: logging.Logger,
        *,
        bad_ttl: float,
        clean_ttl: float,
        max_entries: int = 100_000,
    ) -> None:
        self.client = client
        self.store = store
        self.policy = policy
        self.logger = logger
        self.bad_ttl = float(bad_ttl)
        self.clean_ttl = float(clean_ttl)
        self.max_entries = max_entries
        self.fallback = Remediation(policy.fallback, UNAVAILABLE_ORIGIN)
        self._local: dict[str, tuple[float, Remediation]] = {}
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.failures = 0
        """LAPI lookups that failed (each answered ``fallback``)."""
        self.lookups = 0
        """LAPI lookups made (cache misses in this process and in the shared store)."""

    # ---- the I/O-free part -------------------------------------------------------------------------------------

    def cached(self, ip: str, now: float) -> Remediation | None:
        """This process's cached answer for ``ip`` while it is fresh (no I/O)."""
        found = self._local.get(ip)
        if found is not None and found[0] > now:
            return found[1]
        return None

    def _remember(self, ip: str, remediation: Remediation, expires_at: float, now: float) -> None:
        local = self._local
        if len(local) >= self.max_entries:
            with self._lock:
                for key in [k for k, (e, _r) in local.items() if e <= now]:
                    local.pop(key, None)
                if len(local) >= self.max_entries:  # still full of live answers: forget the older half
                    for key in list(local)[: len(local) // 2]:
                        local.pop(key, None)
        local[ip] = (expires_at, remediation)

    def answer(self, decisions: list[LapiDecision], now: float) -> tuple[Remediation, float]:
        """The remediation the decisions call for (the policy's highest-ranked) and until when it may be cached."""
        best: tuple[int, Remediation, float] | None = None
        for d in decisions:
            if d.duration <= 0:
                continue
            rank, name = self.policy.resolve(d.type)
            if best is None or rank < best[0]:
                best = (rank, Remediation(name, d.origin), d.duration)
        if best is None:
            return CLEAN, now + self.clean_ttl
        return best[1], now + min(self.bad_ttl, best[2])

    # ---- the miss ----------------------------------------------------------------------------------------------

    def flow(self, ip: str) -> Flow[Remediation]:
        """Shared store, then LAPI; the answer cached in both (a LAPI failure answers ``fallback``, uncached)."""
        try:
            key = canonical_address(ip)
        except (TypeError, ValueError):
            raise InvalidIPError(f"not an IP address: {str(ip)[:60]!r}", field="ip") from None
        now: float = yield EPOCH
        try:
            raw = yield Blocking(self.store.cache_get, (_KEY + key, now))
        except Exception as exc:
            self.logger.warning("live mode: the shared cache could not be read, asking LAPI: %s", exc)
            raw = None
        shared = _decode(raw, now)
        if shared is not None:
            self._remember(key, shared[0], shared[1], now)
            if key != ip:
                self._remember(ip, shared[0], shared[1], now)
            return shared[0]
        self.lookups += 1
        try:
            decisions: list[LapiDecision] = yield Delegate(self.client.get_ip_decisions, (key,))
        except CAPIError as exc:
            self.failures += 1
            if self.failures in (1, 10) or self.failures % 1000 == 0:
                self.logger.warning(
                    "live mode: LAPI lookup failed (%d so far), answering %r: %s", self.failures, self.fallback, exc
                )
            return self.fallback
        remediation, expires_at = self.answer(decisions, now)
        self._remember(key, remediation, expires_at, now)
        if key != ip:  # the caller's spelling too, so its next lookup is a local hit
            self._remember(ip, remediation, expires_at, now)
        try:
            yield Blocking(self.store.cache_put, (_KEY + key, _encode(remediation, expires_at), expires_at, now))
        except Exception as exc:
            self.logger.warning("live mode: the shared cache could not be written: %s", exc)
        return remediation

    async def fetch(self, ip: str, run: Callable[[], Awaitable[Remediation]]) -> Remediation:
        """Await the miss for ``ip``, sharing one lookup among concurrent callers (async engine)."""
        import asyncio

        task = self._pending.get(ip)
        if task is None:
            task = asyncio.ensure_future(run())
            self._pending[ip] = task
            task.add_done_callback(lambda _t: self._pending.pop(ip, None))
        result: Remediation = await asyncio.shield(task)
        return result

    def start(self, ip: str, run: Callable[[], Awaitable[Remediation]]) -> None:
        """Start the miss for ``ip`` in the background on the running loop (async engine, synchronous lookup)."""
        import asyncio

        if ip in self._pending:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop in this thread: nothing to schedule on, the next awaited lookup asks LAPI
        task = asyncio.ensure_future(self.fetch(ip, run))
        task.add_done_callback(_swallow)

    def __repr__(self) -> str:
        return f"LiveCache({len(self._local)} answers, {self.lookups} lookups, {self.failures} failures)"


def _swallow(task: Any) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failure was already logged by the flow, or is an invalid IP


def _encode(remediation: Remediation, expires_at: float) -> str:
    return _SEP.join((repr(float(expires_at)), remediation.remediation, remediation.origin))


def _decode(raw: object, now: float) -> tuple[Remediation, float] | None:
    """A shared-cache entry while fresh; anything unreadable is a miss."""
    if not isinstance(raw, str) or not raw:
        return None
    parts = raw.split(_SEP)
    if len(parts) != 3:
        return None
    try:
        expires_at = float(parts[0])
    except ValueError:
        return None
    if not expires_at > now:
        return None
    if parts[1] == CLEAN.remediation and parts[2] == CLEAN.origin:
        return CLEAN, expires_at
    return Remediation(parts[1], parts[2]), expires_at
