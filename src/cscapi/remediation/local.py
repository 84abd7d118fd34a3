"""What each engine keeps in process besides the index: usage counts waiting for a flush, and local decisions.

``UsageCounts``: requests append to a ``collections.deque`` (``append`` and ``popleft`` are atomic, so no count is lost
between threads and the request path takes no lock); ``flush`` folds the queue into sums and adds them to the store in
one atomic write, keeping a failed batch (with its id) for the next try. ``LocalOverlay``: this site's own decisions
(origin ``local``), merged over the index's answers, reloaded from the store when its local version changes.
"""

from __future__ import annotations

import ipaddress
import threading
import uuid
from collections import deque
from collections.abc import Callable

from cscapi.errors import ConfigurationError, InvalidIPError
from cscapi.remediation.index import Policy
from cscapi.remediation.models import CLEAN, Remediation
from cscapi.remediation.stores.base import Counters, DecisionStore, LocalDecisions

__all__ = ["LOCAL_ORIGIN", "LocalOverlay", "UsageCounts", "canonical_ip"]

LOCAL_ORIGIN = "local"
DRAIN_AT = 4096
"""Pending usage increments past which the request path itself folds them into the sums (bounds the queue)."""


def canonical_ip(ip: str) -> str | None:
    """The compressed form of ``ip`` (an IPv4-mapped IPv6 address as its IPv4), None when it is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except (ValueError, TypeError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return address.compressed


class UsageCounts:
    """Usage counts of one process: queued by requests, summed and flushed to the store by one thread at a time."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, str, int]] = deque()
        self.sums: Counters = {}
        self.batch: tuple[str, Counters] | None = None  # sums whose flush failed, retried with the same id
        self.lock = threading.Lock()

    def drain(self, store: DecisionStore) -> None:
        """Fold the queue into the sums unless another thread is at it (a memory store gets them at once: no I/O)."""
        if not self.lock.acquire(blocking=False):
            return
        try:
            self._fold()
            if not store.shared and self.sums:
                store.incr_counters(self.sums)
                self.sums = {}
        finally:
            self.lock.release()

    def _fold(self) -> None:
        popleft, sums = self.queue.popleft, self.sums
        while True:
            try:
                origin, remediation, delta = popleft()
            except IndexError:
                return
            key = (origin, remediation)
            sums[key] = sums.get(key, 0) + delta

    def flush(self, store: DecisionStore) -> int:
        """Add the sums to the store (one atomic write per batch); returns how many requests. A store error leaves
        the batch to be retried as is (same id: Redis applies it once) and is raised."""
        flushed = 0
        with self.lock:
            self._fold()
            while True:
                if self.batch is None:
                    sums = {k: v for k, v in self.sums.items() if v}
                    if not sums:
                        return flushed
                    self.batch, self.sums = (uuid.uuid4().hex, sums), {}
                batch_id, sums = self.batch
                store.incr_counters(sums, batch_id)
                self.batch = None
                flushed += sum(sums.values())


class LocalOverlay:
    """Local decisions in force in this process: ``entries`` maps a canonical IP to (expires at, rank, answer).

    ``entries`` is replaced whole (never mutated) so that lookups read it without a lock; ``pending`` holds the ones
    added here and not yet written to the store (kept over reloads until written).
    """

    def __init__(self, policy: Policy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self.entries: dict[str, tuple[float, int, Remediation]] = {}
        self.version: str | None = None
        self.pending: LocalDecisions = {}
        self.guard = threading.Lock()
        self._canonical: dict[str, str | None] = {}

    def answer(self, ip: str, found: Remediation) -> Remediation:
        """The local decision on ``ip`` when it ranks above ``found`` (the index's answer), else ``found``."""
        entries = self.entries
        entry = entries.get(ip)
        if entry is None:
            cache = self._canonical
            try:
                canonical = cache[ip]
            except KeyError:  # other spellings (::ffff:1.2.3.4, 2001:db8:0::1): parsed once, cached (bounded)
                canonical = canonical_ip(ip)
                if len(cache) >= 16384:
                    cache.clear()
                cache[ip] = canonical
            except TypeError:
                return found
            entry = entries.get(canonical) if canonical is not None else None
        if entry is None or entry[0] <= self.clock():
            return found
        if found is CLEAN or entry[1] < self.policy.rank.get(found.remediation, len(self.policy.ordered)):
            return entry[2]
        return found

    def _entry(self, type_: str, until: float) -> tuple[float, int, Remediation]:
        rank, remediation = self.policy.resolve(type_)
        return until, rank, Remediation(remediation, LOCAL_ORIGIN)

    def add(self, ip: str, type_: str, duration: float, scenario: str) -> Remediation:
        """Put a decision in force here at once and mark it to be written (see ``write``)."""
        canonical = canonical_ip(ip)
        if canonical is None:
            raise InvalidIPError(f"not an IP address: {ip!r}", field="ip")
        if not isinstance(type_, str) or not type_:
            raise ConfigurationError("a local decision's type must be a non-empty string (e.g. 'ban', 'captcha')")
        if not isinstance(duration, (int, float)) or isinstance(duration, bool) or not duration > 0:
            raise ConfigurationError("a local decision's duration must be a number of seconds > 0")
        if not isinstance(scenario, str):
            raise ConfigurationError("a local decision's scenario must be a string")
        now = self.clock()
        until = now + float(duration)
        entry = self._entry(type_, until)
        with self.guard:
            self.pending[canonical] = (type_, until, scenario)
            live = {ip: e for ip, e in self.entries.items() if e[0] > now}  # the expired ones go (bounded)
            live[canonical] = entry
            self.entries = live
        return entry[2]

    def write(self, store: DecisionStore) -> int:
        """Write the pending decisions to the store; a store error is raised, the rest stay pending."""
        with self.guard:
            pending = dict(self.pending)
        for ip, item in pending.items():
            store.add_local_decision(ip, *item)
            with self.guard:
                if self.pending.get(ip) == item:
                    del self.pending[ip]
        return len(pending)

    def sync(self, store: DecisionStore) -> None:
        """Reload from the store when its local version changed; else just drop the expired entries."""
        version = store.local_version()
        now = self.clock()
        if version == self.version:
            if self.entries and min(e[0] for e in self.entries.values()) <= now:
                with self.guard:
                    self.entries = {ip: e for ip, e in self.entries.items() if e[0] > now}
            return
        version, found = store.local_decisions(now)
        with self.guard:
            merged = {ip: self._entry(t, until) for ip, (t, until, _s) in found.items()}
            for ip, (t, until, _s) in self.pending.items():
                if until > now:
                    merged[ip] = self._entry(t, until)
            self.entries, self.version = merged, version

    def clear(self, version: str | None) -> None:
        with self.guard:
            self.entries, self.pending, self.version = {}, {}, version

    def view(self) -> LocalDecisions:
        """``{ip: (remediation, expires at, "")}`` of the decisions in force here now."""
        now = self.clock()
        return {ip: (e[2].remediation, e[0], "") for ip, e in self.entries.items() if e[0] > now}

    def after_fork(self) -> None:
        self.guard = threading.Lock()
