"""``memory://``: the decision state in this process only (the fastest store; one worker, or tests)."""

from __future__ import annotations

import threading
import time

from cscapi.errors import DecisionStoreError
from cscapi.remediation.state import State
from cscapi.remediation.stores.base import Counters, DecisionStore, LocalDecisions, bucket_ttl, leak

__all__ = ["MemoryStore"]


class MemoryStore(DecisionStore):
    """Holds the committed :class:`State` object itself (never mutated once committed, so no copy is needed)."""

    shared = False

    def __init__(self, uri: str = "memory://") -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._state: State | None = None
        self._version: str | None = None
        self._dirty = False
        self._holder: tuple[str, float] | None = None
        self._counters: Counters = {}
        self._meta: dict[str, str] = {}
        self._cache: dict[str, tuple[float, str]] = {}
        self._cache_sweep_at = 1024
        self._local: dict[tuple[str, str], tuple[float, str]] = {}  # (ip, type) -> (until, scenario)
        self._local_version = 0
        self._buckets: dict[str, tuple[float, float, float, float]] = {}  # key -> (level, last, until, expires)

    def version(self) -> str | None:
        return self._version

    def load(self) -> tuple[str | None, State | None]:
        with self._lock:
            return self._version, self._state

    def commit(self, state: State, version: str, token: str, clean: bool) -> None:
        with self._lock:
            if self._holder is None or self._holder[0] != token:
                raise DecisionStoreError("the refresh lock was lost before the commit (cleared or expired)")
            self._state, self._version = state, version
            if clean:
                self._dirty = False

    def is_dirty(self) -> bool:
        return self._dirty

    def mark_dirty(self) -> None:
        self._dirty = True

    def acquire_lock(self, token: str, ttl: float) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._holder is not None and self._holder[1] > now:
                return False
            self._holder = (token, now + ttl)
            return True

    def release_lock(self, token: str) -> None:
        with self._lock:
            if self._holder is not None and self._holder[0] == token:
                self._holder = None

    def incr_counter(self, origin: str, remediation: str, delta: int = 1) -> None:
        key = (origin, remediation)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + delta

    def incr_counters(self, counts: Counters, batch_id: str | None = None) -> None:
        with self._lock:
            for key, delta in counts.items():
                self._counters[key] = self._counters.get(key, 0) + delta

    def add_local_decision(self, ip: str, type_: str, until: float, scenario: str) -> None:
        with self._lock:
            now = time.time()
            self._local = {k: v for k, v in self._local.items() if v[0] > now}
            old = self._local.get((ip, type_))
            if old is None or old[0] < until:
                self._local[(ip, type_)] = (until, scenario)
            self._local_version += 1

    def leak_bucket(self, key: str, capacity: int, leak_seconds: float, blackhole: float, now: float) -> bool:
        """In this process (a memory store is one process's): the buckets of the engines sharing this object."""
        with self._lock:
            buckets = self._buckets
            level, last, until, _e = buckets.get(key, (0.0, now, 0.0, 0.0))
            over, level, until = leak(level, last, until, now, capacity, leak_seconds, blackhole)
            if len(buckets) >= 100_000:
                for k in [k for k, v in buckets.items() if v[3] <= now]:
                    del buckets[k]
            buckets[key] = (level, now, until, now + bucket_ttl(capacity, leak_seconds, blackhole))
            return over

    def local_version(self) -> str | None:
        return str(self._local_version) if self._local_version else None

    def local_decisions(self, now: float) -> tuple[str | None, LocalDecisions]:
        with self._lock:
            live = [(ip, t, until, s) for (ip, t), (until, s) in self._local.items() if until > now]
            return self.local_version(), live

    def counters(self) -> Counters:
        with self._lock:
            return {k: v for k, v in self._counters.items() if v}

    def decr_counters(self, pushed: Counters) -> None:
        with self._lock:
            for key, count in pushed.items():
                left = self._counters.get(key, 0) - count
                if left:
                    self._counters[key] = left
                else:
                    self._counters.pop(key, None)

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    def cache_get(self, key: str, now: float) -> str | None:
        found = self._cache.get(key)
        return found[1] if found is not None and found[0] > now else None

    def cache_put(self, key: str, value: str, expires_at: float, now: float) -> None:
        with self._lock:
            cache = self._cache
            if len(cache) >= self._cache_sweep_at:  # sweep the expired entries once the map doubled since the last
                for k in [k for k, (e, _v) in cache.items() if e <= now]:
                    del cache[k]
                self._cache_sweep_at = max(1024, 2 * len(cache))
            cache[key] = (expires_at, value)

    def clear(self) -> None:
        with self._lock:
            self._state = None
            self._version = None
            self._dirty = False
            self._holder = None
            if self._local:
                self._local = {}
                self._local_version += 1
