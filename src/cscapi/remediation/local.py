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
from cscapi.remediation.stores.base import Counters, DecisionStore

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


Entry = tuple[float, int, Remediation, str]
"""(expires at, rank, answer, decision type) of one local decision."""


class LocalOverlay:
    """Local decisions in force in this process: ``entries`` maps a canonical IP to its decisions (one per type),
    strongest first.

    ``entries`` is replaced whole (never mutated) so that lookups read it without a lock; ``pending`` holds the ones
    added here and not yet written to the store (kept over reloads until written).
    """

    def __init__(self, policy: Policy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self.entries: dict[str, tuple[Entry, ...]] = {}
        self.version: str | None = None
        self.pending: dict[tuple[str, str], tuple[float, str]] = {}  # (ip, type) -> (until, scenario)
        self.guard = threading.Lock()
        self._canonical: dict[str, str | None] = {}

    def answer(self, ip: str, found: Remediation) -> Remediation:
        """The strongest local decision on ``ip`` still in force when it ranks above ``found`` (the index's answer),
        else ``found``."""
        entries = self.entries
        mine = entries.get(ip)
        if mine is None:
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
            mine = entries.get(canonical) if canonical is not None else None
            if mine is None:
                return found
        now = self.clock()
        for entry in mine:
            if entry[0] > now:
                if found is CLEAN or entry[1] < self.policy.rank.get(found.remediation, len(self.policy.ordered)):
                    return entry[2]
                return found
        return found

    def _entry(self, type_: str, until: float) -> Entry:
        rank, remediation = self.policy.resolve(type_)
        return until, rank, Remediation(remediation, LOCAL_ORIGIN), type_

    @staticmethod
    def _merge(into: dict[str, dict[str, Entry]], ip: str, entry: Entry) -> None:
        """Keep the later expiry per (ip, type)."""
        per_ip = into.setdefault(ip, {})
        old = per_ip.get(entry[3])
        if old is None or old[0] < entry[0]:
            per_ip[entry[3]] = entry

    @staticmethod
    def _freeze(merged: dict[str, dict[str, Entry]]) -> dict[str, tuple[Entry, ...]]:
        return {ip: tuple(sorted(per.values(), key=lambda e: (e[1], -e[0]))) for ip, per in merged.items() if per}

    def _live(self, now: float) -> dict[str, dict[str, Entry]]:
        return {ip: {e[3]: e for e in es if e[0] > now} for ip, es in self.entries.items()}

    def add(self, ip: str, type_: str, duration: float, scenario: str) -> Remediation:
        """Put a decision in force here at once and mark it to be written (see ``write``); returns its answer."""
        canonical = canonical_ip(ip)
        if canonical is None:
            raise InvalidIPError(f"not an IP address: {ip!r}", field="ip")
        if not isinstance(type_, str) or not type_ or not type_.isprintable():
            raise ConfigurationError("a local decision's type must be a non-empty printable string (e.g. 'ban')")
        if not isinstance(duration, (int, float)) or isinstance(duration, bool) or not duration > 0:
            raise ConfigurationError("a local decision's duration must be a number of seconds > 0")
        if not isinstance(scenario, str):
            raise ConfigurationError("a local decision's scenario must be a string")
        now = self.clock()
        until = now + float(duration)
        entry = self._entry(type_, until)
        with self.guard:
            old = self.pending.get((canonical, type_))
            if old is None or old[0] < until:
                self.pending[(canonical, type_)] = (until, scenario)
            live = self._live(now)  # the expired ones go (bounded without a sync thread)
            self._merge(live, canonical, entry)
            self.entries = self._freeze(live)
        return entry[2]

    def write(self, store: DecisionStore) -> int:
        """Write the pending decisions to the store; a store error is raised, the rest stay pending."""
        with self.guard:
            pending = dict(self.pending)
        for key, item in pending.items():
            store.add_local_decision(key[0], key[1], item[0], item[1])
            with self.guard:
                if self.pending.get(key) == item:
                    del self.pending[key]
        return len(pending)

    def sync(self, store: DecisionStore) -> None:
        """Reload from the store when its local version changed; else just drop the expired entries."""
        version = store.local_version()
        now = self.clock()
        if version == self.version:
            if self.entries and min(e[0] for es in self.entries.values() for e in es) <= now:
                with self.guard:
                    self.entries = self._freeze(self._live(now))
            return
        version, found = store.local_decisions(now)
        with self.guard:
            merged: dict[str, dict[str, Entry]] = {}
            for ip, type_, until, _scenario in found:
                if until > now:
                    self._merge(merged, ip, self._entry(type_, until))
            for (ip, type_), (until, _scenario) in self.pending.items():
                if until > now:
                    self._merge(merged, ip, self._entry(type_, until))
            self.entries, self.version = self._freeze(merged), version

    def clear(self, version: str | None) -> None:
        with self.guard:
            self.entries, self.pending, self.version = {}, {}, version

    def view(self) -> dict[str, tuple[str, float, str]]:
        """``{ip: (remediation, expires at, type)}``: the strongest decision in force here now on each IP."""
        now = self.clock()
        out = {}
        for ip, es in self.entries.items():
            live = [e for e in es if e[0] > now]
            if live:
                out[ip] = (live[0][2].remediation, live[0][0], live[0][3])
        return out

    def after_fork(self) -> None:
        self.guard = threading.Lock()
