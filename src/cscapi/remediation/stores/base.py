"""The decision store contract: one shared decision state per version, a refresh lock, and usage counters.

Every method is blocking (the async engine calls them in a worker thread) and raises
:class:`cscapi.errors.DecisionStoreError` when the back end fails. The lookup path never calls a store: workers call
``version()`` from a background thread and rebuild their in-process index when it changes.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

from cscapi.remediation.state import State

__all__ = ["CACHE_PREFIX", "Counters", "DecisionStore", "LocalDecisions"]

CACHE_PREFIX = "cache:"
"""Where :meth:`DecisionStore.cache_put` entries live among the meta keys."""

Counters = dict[tuple[str, str], int]
"""(origin, remediation) -> count."""

LocalDecisions = list[tuple[str, str, float, str]]
"""(ip, decision type, expires at in Unix seconds, scenario): the decisions this site's detectors took, one per
(ip, type)."""

_LOCAL_META = "local_decisions"

log = logging.getLogger("cscapi.remediation")


class DecisionStore(ABC):
    """Where the decision state lives. ``shared`` is True when other processes may change it (SQLite, Redis)."""

    shared: bool = False
    notifies: bool = False
    """True when :meth:`wait_change` returns as soon as another worker commits (Redis pub/sub)."""
    uri: str = ""

    @abstractmethod
    def version(self) -> str | None:
        """The current version stamp, or None when the store holds no state. Cheap: called every ~250 ms.

        A shared store's :meth:`clear` leaves a ``cleared-...`` version with no state, so that a version turning into
        None means the state was LOST (a Redis restart without data, a flush, an eviction, a replaced file).
        """

    @abstractmethod
    def load(self) -> tuple[str | None, State | None]:
        """The current (version, state), read atomically. A state this version cannot read is logged and is None."""

    @abstractmethod
    def commit(self, state: State, version: str, token: str, clean: bool) -> None:
        """Replace the state atomically, if ``token`` still holds the refresh lock (else ``DecisionStoreError``).

        ``clean`` clears the "cannot trust a delta" mark set by :meth:`mark_dirty`.
        """

    @abstractmethod
    def is_dirty(self) -> bool:
        """True when a refresh started and did not commit (the next pull must be a startup pull)."""

    @abstractmethod
    def mark_dirty(self) -> None:
        """Record that a pull is under way; cleared by a clean commit."""

    @abstractmethod
    def acquire_lock(self, token: str, ttl: float) -> bool:
        """Take the refresh lock for ``ttl`` seconds if nobody holds it; never blocks."""

    @abstractmethod
    def release_lock(self, token: str) -> None:
        """Release the lock if ``token`` still holds it."""

    @abstractmethod
    def incr_counter(self, origin: str, remediation: str, delta: int = 1) -> None:
        """Atomically add ``delta`` to one usage counter."""

    def incr_counters(self, counts: Counters, batch_id: str | None = None) -> None:
        """Add every count at once (the engine's flush of its in-process sums). The built-in stores make it one atomic
        write (a Redis script, one SQLite transaction); this default adds them one by one. A store that can tell
        (Redis) applies a ``batch_id`` once only: a retry after a lost reply does not count twice."""
        for (origin, remediation), delta in counts.items():
            self.incr_counter(origin, remediation, delta)

    @abstractmethod
    def counters(self) -> Counters:
        """Every non-zero usage counter."""

    @abstractmethod
    def decr_counters(self, pushed: Counters) -> None:
        """Atomically subtract exactly what was pushed (increments made meanwhile are kept)."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A small named value (e.g. the time of the last metrics push)."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Set a small named value."""

    @abstractmethod
    def clear(self) -> None:
        """Forget the decision state (and the lock and marks); usage counters and meta are kept."""

    def cache_get(self, key: str, now: float) -> str | None:
        """A value :meth:`cache_put` stored, while it lasts at ``now`` (live-mode answers shared by the workers).

        The default keeps entries in meta and never drops them: the built-in stores override both methods so that
        expired entries go away (Redis: a key TTL; SQLite and memory: swept as they grow)."""
        return _unpack(self.get_meta(CACHE_PREFIX + key), now)

    def cache_put(self, key: str, value: str, expires_at: float, now: float) -> None:
        """Store ``value`` under ``key`` until ``expires_at`` (Unix seconds; ``now`` is the caller's clock)."""
        self.set_meta(CACHE_PREFIX + key, _pack(value, expires_at))

    # ---- local decisions (kept apart from CAPI's state: a refresh never replaces them) -------------------------

    def add_local_decision(self, ip: str, type_: str, until: float, scenario: str) -> None:
        """Record a decision of this site's own (a detector's) on ``ip`` until ``until``, and change the local
        version so that every worker merges it within its sync interval. One per (ip, type): the later expiry wins
        (a decision of another type is kept beside it; lookups answer the strongest).

        The default keeps them as JSON in meta (not atomic across processes); the built-in stores override it."""
        import json

        found = json.loads(self.get_meta(_LOCAL_META) or "{}")
        entries = {k: v for k, v in found.get("d", {}).items() if v[0] > time.time()}
        key = f"{ip}\x1f{type_}"
        if key not in entries or entries[key][0] < until:
            entries[key] = [until, scenario]
        self.set_meta(_LOCAL_META, json.dumps({"v": int(found.get("v", 0)) + 1, "d": entries}))

    def local_version(self) -> str | None:
        """A stamp that changes whenever a local decision is added (None when there never was one). Cheap."""
        import json

        raw = self.get_meta(_LOCAL_META)
        return None if not raw else str(json.loads(raw).get("v"))

    def local_decisions(self, now: float) -> tuple[str | None, LocalDecisions]:
        """(local version, the local decisions still in force at ``now``)."""
        import json

        raw = self.get_meta(_LOCAL_META)
        if not raw:
            return None, []
        found = json.loads(raw)
        live: LocalDecisions = []
        for key, (until, scenario) in found.get("d", {}).items():
            ip, _, type_ = key.partition("\x1f")
            if until > now:
                live.append((ip, type_, float(until), str(scenario)))
        return str(found.get("v")), live

    # ---- leaky buckets (cscapi.web.detect's shared detectors) -------------------------------------------------

    def leak_bucket(self, key: str, capacity: int, leak_seconds: float, blackhole: float, now: float) -> bool:
        """Pour one event into the leaky bucket ``key`` (it loses one event every ``leak_seconds``), atomically for
        every worker sharing the store; True when it overflows (more than ``capacity`` events): the bucket empties and
        ignores events for ``blackhole`` seconds. Shared stores only."""
        from cscapi.errors import ConfigurationError

        raise ConfigurationError(f"{type(self).__name__} cannot hold shared detector buckets (use SQLite or Redis)")

    def wait_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a notification that a new version was committed; True if one came.

        Only meaningful when ``notifies``; the default waits for nothing. Notifications may be lost (a dropped
        connection): the engine keeps polling ``version()`` as well.
        """
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uri}>"


def leak(
    level: float, last: float, until: float, now: float, capacity: int, leak_seconds: float, blackhole: float
) -> tuple[bool, float, float]:
    """One event into a leaky bucket: (overflowed, new level, blackhole end). Shared by every store's buckets."""
    if until > now:
        return False, level, until
    if leak_seconds > 0:
        level = max(0.0, level - max(0.0, now - last) / leak_seconds)
    level += 1
    if level > capacity:
        return True, 0.0, now + blackhole
    return False, level, until


def bucket_ttl(capacity: int, leak_seconds: float, blackhole: float) -> float:
    """Seconds after its last event past which a bucket is empty and out of its blackhole (it can be dropped)."""
    return (capacity + 1) * leak_seconds + blackhole + 1.0


def _pack(value: str, expires_at: float) -> str:
    return f"{float(expires_at)!r}\t{value}"


def _unpack(raw: str | None, now: float) -> str | None:
    """The value of a packed cache entry while ``now`` is before its expiry; anything unreadable is a miss."""
    if not raw:
        return None
    expires, sep, value = raw.partition("\t")
    try:
        fresh = bool(sep) and float(expires) > now
    except ValueError:
        return None
    return value if fresh else None
