"""The remediation engine: CAPI decisions in a shared store, answered from an in-process index (no I/O per lookup).

``RemediationEngine`` (blocking) and ``AsyncRemediationEngine`` (awaiting) share everything: their refresh, prune,
metrics push and clear are flows (``core.py`` and below) run by the runtime's two drivers (``cscapi.runtime.run_sync``
and ``run_async``, the ones the CAPI client uses). ``get_ip_remediation`` is the same synchronous, I/O-free method.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from bisect import bisect_right
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from socket import AF_INET, inet_pton
from typing import Any, Generic, TypeVar

from cscapi.errors import ConfigurationError, DecisionStoreError
from cscapi.limits import MIN_REFRESH_INTERVAL
from cscapi.remediation.contracts import AsyncDecisionSource, DecisionSource
from cscapi.remediation.core import FlowContext, prune_flow, refresh_flow
from cscapi.remediation.index import (
    HORIZON,
    MEMO_ENTRIES,
    MEMO_RESTART,
    Entries,
    Index,
    Policy,
    build_index,
    empty_index,
    first_live,
    invalid_ip,
)
from cscapi.remediation.local import DRAIN_AT, LocalOverlay, UsageCounts
from cscapi.remediation.metrics import build_usage_metrics, nested_counts
from cscapi.remediation.models import CLEAN, RefreshReport, Remediation
from cscapi.remediation.state import State
from cscapi.remediation.stores import DecisionStore, open_store
from cscapi.runtime import EPOCH, Blocking, Clocks, Delegate, Flow, run_async, run_sync

__all__ = ["AsyncRemediationEngine", "RemediationEngine"]

C = TypeVar("C")
R = TypeVar("R")

DEFAULT_LOGGER = logging.getLogger("cscapi.remediation")
_LAST_PUSH = "last_metrics_push"
_NOTIFY_SLICE = 0.25
_LOST = "lost"
USAGE_FLUSH_INTERVAL = 5.0
"""Seconds between two flushes of the usage sums by the sync thread (push, close and get_origins_count flush too)."""
_LOST_HINT = (
    "The store held decisions and now holds none (Redis restarted without its data, was flushed or evicted the key; "
    "the SQLite file was replaced): this worker keeps serving the decisions it had until a refresh commits again "
    "(`cscapi run` re-pulls at once; otherwise run `cscapi decisions refresh --force`)."
)
_NEVER_LOADED_HINT = (
    "Nothing is loaded yet: every lookup answers bypass/clean until the store can be read; check that it is reachable."
)
_engines: weakref.WeakSet[_EngineBase[Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Threads do not survive fork: restart the sync thread of every engine the child inherited (with a fresh lock:
    the parent's sync thread may have held it at the moment of the fork)."""
    for engine in list(_engines):
        engine._sync_lock = threading.Lock()
        engine._held_guard = threading.Lock()
        engine._held_locks = set()  # the parent's refreshes are the parent's to release
        engine._renewing = False
        engine._sync_thread = None
        # the parent's counts are the parent's to flush: the child starts from zero (never counted twice)
        engine._usage = UsageCounts()
        engine._local.after_fork()
        engine._start_sync_thread()


_fork_hook_lock = threading.Lock()
_fork_hook_registered = False


def _register_fork_hook() -> None:
    """Register :func:`_after_fork_in_child` once, when the first engine is created (not at import: a program that
    imports cscapi without building an engine gets no process-wide fork hook)."""
    global _fork_hook_registered
    with _fork_hook_lock:
        if not _fork_hook_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_registered = True


def _sync_loop(ref: weakref.ref[_EngineBase[Any]], stop: threading.Event, interval: float) -> None:
    """Sync every ``interval`` seconds, and at once when the store notifies a commit (Redis pub/sub)."""
    failures = 0
    flushed_at = time.monotonic()
    engine = ref()
    wait_change = engine.store.wait_change if engine is not None and engine.store.notifies else None
    del engine
    while True:
        if wait_change is None or failures:
            if stop.wait(interval):
                return
        else:
            deadline = time.monotonic() + interval
            try:
                # returns early when another worker commits; in short waits, so that close() never waits long
                while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                    if wait_change(min(left, _NOTIFY_SLICE)):
                        break
            except Exception:
                if stop.wait(interval):  # the next sync reports the store error; no hot loop meanwhile
                    return
            if stop.is_set():
                return
        engine = ref()
        if engine is None:
            return
        try:
            engine.sync()
            failures = 0
        except Exception as exc:
            failures += 1
            if failures in (1, 10) or failures % 1000 == 0:
                engine._logger.warning("decision store sync failed (%d in a row), still serving: %s", failures, exc)
        if time.monotonic() - flushed_at >= USAGE_FLUSH_INTERVAL:
            flushed_at = time.monotonic()
            try:
                engine._flush_usage()
                engine._write_local()
            except Exception as exc:  # the sums are kept for the next try
                if not failures:
                    engine._logger.warning("could not flush the usage counters (kept for the next try): %s", exc)
        del engine


class _EngineBase(Generic[C]):
    """Options, the index, the lookup, the store sync and the metrics: everything but how flows are driven.

    Why this size: the engine's public surface (lookup, sync and health, usage counters, local decisions) is written
    once here for both engines; the work itself is in ``index.py``, ``core.py``, ``local.py`` and the stores.
    """

    _defer_first_sync = False
    """True: the constructor never reads a shared store (unless ``strict``); its sync thread does at once."""

    def __init__(
        self,
        client: C,
        store: str | DecisionStore = "memory://",
        *,
        machine_id: str | None = None,
        ordered_remediations: Sequence[str] = ("ban", "captcha", "bypass"),
        fallback_remediation: str = "bypass",
        bouncing_level: str = "normal_bouncing",
        community_pull: bool = True,
        additional_pull: bool = True,
        min_refresh_interval: float | None = None,
        sync_interval_ms: float = 250.0,
        key_prefix: str = "cscapi:",
        lock_ttl: float = 300.0,
        bouncer_name: str = "cscapi",
        bouncer_type: str = "cscapi-remediation-engine",
        bouncer_version: str | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] | None = None,
        strict: bool = False,
        lookup_memo: int = MEMO_ENTRIES,
    ) -> None:
        if min_refresh_interval is None:  # CAPI's cadence guard, unless the source says otherwise (a LAPI: 0)
            given = getattr(client, "min_refresh_interval", None)
            usable = isinstance(given, (int, float)) and not isinstance(given, bool)
            min_refresh_interval = float(given) if usable and given is not None else float(MIN_REFRESH_INTERVAL)
        if min_refresh_interval < 0 or sync_interval_ms < 0 or lock_ttl <= 0:
            raise ConfigurationError("min_refresh_interval and sync_interval_ms must be >= 0, lock_ttl > 0")
        if type(lookup_memo) is not int or lookup_memo < 0:
            raise ConfigurationError(
                f"lookup_memo must be a whole number of addresses >= 0 (0 turns the memo off), not {lookup_memo!r}"
            )
        self._memo_entries = lookup_memo
        self.client = client
        self.policy = Policy(ordered_remediations, fallback_remediation, bouncing_level)
        self._logger = logger or DEFAULT_LOGGER
        self._clock: Callable[[], float] = clock or time.time
        self.store = open_store(store, key_prefix=key_prefix)
        # live mode (a LAPI source asked per IP): an index miss is answered by the source, through its cache
        source: Any = client
        self.live: Any = source.live_cache(self.store, self.policy, self._logger) if _is_live(source) else None
        self.machine_id = machine_id
        self.bouncer_name = bouncer_name
        self.bouncer_type = bouncer_type
        self.bouncer_version = bouncer_version
        self._ctx = FlowContext(
            policy=self.policy,
            logger=self._logger,
            clock=self._clock,
            machine_id=machine_id,
            community_pull=community_pull,
            additional_pull=additional_pull,
            min_refresh_interval=float(min_refresh_interval),
            lock_ttl=float(lock_ttl),
        )
        self._startup_ts = int(time.time())
        self._index: Index = empty_index()
        self._committing: str | None = None
        self._renewing = False
        self._sync_lock = threading.Lock()
        self._sync_interval = sync_interval_ms / 1000.0
        self._sync_stop = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self._closed = False
        self._last_sync_error: DecisionStoreError | None = None
        self._lost: str | None = None
        self._held_locks: set[str] = set()
        self._held_guard = threading.Lock()
        self.last_synced_at: float | None = None
        self._usage = UsageCounts()  # appended lock-free by requests, flushed by the sync thread
        self._local = LocalOverlay(self.policy, self._clock)  # this site's decisions, merged over the index's
        deferred = self.store.shared and self._defer_first_sync and not strict
        if deferred:  # the async engine: no blocking store read on the event loop; a thread reads it at once
            self._last_sync_error = DecisionStoreError(
                f"the decisions from {self.store.uri} are not loaded yet (the first sync runs in a background thread; "
                "`await engine.aready()` waits for it)",
                hint=_NEVER_LOADED_HINT,
            )
        elif self.store.shared:
            try:
                self.sync()
            except Exception as exc:
                if strict:
                    self.store.close()
                    raise
                self._logger.warning("could not load the decisions from %s yet, serving none: %s", self.store.uri, exc)
        else:
            self.last_synced_at = self._clock()
        _register_fork_hook()
        _engines.add(self)
        if deferred:
            ref, stop, interval = weakref.ref(self), self._sync_stop, self._sync_interval

            def first_sync_then_loop() -> None:
                engine = ref()
                if engine is not None and not stop.is_set():
                    try:
                        engine.sync()
                    except Exception as exc:
                        if not stop.is_set():
                            engine._logger.warning(
                                "could not load the decisions from %s yet, serving none: %s", engine.store.uri, exc
                            )
                del engine
                if interval > 0 and not stop.is_set():
                    _sync_loop(ref, stop, interval)

            # the sync thread itself (close() stops and joins it), starting with the first sync
            self._sync_thread = threading.Thread(
                target=first_sync_then_loop, name="cscapi-remediation-sync", daemon=True
            )
            self._sync_thread.start()
        self._start_sync_thread()

    # ---- the lookup ------------------------------------------------------------------------------------------

    def get_ip_remediation(self, ip: str) -> Remediation:
        """The remediation for ``ip`` (IPv4 or IPv6, any form) and its origin; ``bypass``/``clean`` if none applies.

        No I/O, no allocation on a hit. Raises :class:`cscapi.errors.InvalidIPError` if ``ip`` is not an address.
        A local decision (``add_local_decision``) on ``ip`` wins when its remediation ranks higher.
        """
        # The whole lookup is inlined here: a call per lookup cost 10-15% of a hit (issue 13). Every answer goes
        # through the local overlay when it holds decisions. ``key`` is the string probed: the raw one, or the IPv4
        # tail of ``::ffff:a.b.c.d`` (one string compare passes IPv4 and 2000::/3 text, which sort before ":"; then
        # ``removeprefix`` gives the tail, or ``ip`` itself when the prefix is not there).
        # A slow-path answer (a range hit, a miss) is memoised under ``key`` in ``idx.fast`` while it has room
        # (``lookup_memo``, index.MEMO_ENTRIES by default): a repeated client is then one probe.
        # tests/test_remediation_lookup_equivalence.py and tests/test_remediation_memo.py hold it.
        local = self._local
        idx = self._index
        try:
            # a dual-stack socket's IPv4 client (::ffff:a.b.c.d): its IPv4 tail is the key, no probe of the spelling
            key = ip if ip < ":" or (tail := ip.removeprefix("::ffff:")) is ip or ":" in tail else tail
            found = (fast := idx.fast).get(key)
        except (TypeError, ValueError):  # not a str: an ipaddress object, or not an address (InvalidIPError)
            return self._other_remediation(ip)
        if found is None:
            if type(key) is not str:  # a str subclass: never memoised
                return self._other_remediation(ip)
            if ":" not in key:  # an IPv4 miss, the commonest slow path, inlined (no call)
                try:
                    packed = inet_pton(AF_INET, key)
                except (OSError, ValueError):
                    if key is ip:
                        raise invalid_ip(ip) from None
                    return self._other_remediation(ip)  # ::ffff:abcd (not a mapped address) or ::ffff:01.2.3.4
                starts, values = idx.v4_buckets.get(packed[:2]) or idx.v4_wide  # the wide ones start at 0.0.0.0
                entries = values[bisect_right(starts, packed) - 1] if starts else None
            else:
                entries = idx.lookup_slow(ip)
            if entries is None:
                if self.live is not None:  # live mode: the source answers misses (never memoised)
                    found = self._live_miss(ip)
                    return local.answer(ip, found) if local.entries else found
                memo: Remediation | Entries = CLEAN
            else:  # as with_horizon derives a value: bare when it outlives the horizon
                memo = entries[1] if entries[0] > idx.horizon else entries
            if len(fast) < idx.memo_limit:
                fast[key] = memo
            elif idx.memo_limit or idx.horizon < 0:  # full, or no map of its own yet (memo off: neither)
                self._memo_full(idx)
            if entries is None:
                return local.answer(ip, CLEAN) if local.entries else CLEAN
            now = self._clock()
        elif (now := self._clock()) < idx.horizon:
            if type(found) is not tuple:
                return local.answer(ip, found) if local.entries else found  # type: ignore[arg-type,return-value]
            entries = found
        else:
            self._renew_horizon(idx)
            past = idx.exact.get(key)
            if past is None:  # a memoised answer, stale past the horizon: asked again (until the renewal lands)
                return self._other_remediation(ip)
            entries = past
        if entries[0] > now:
            found = entries[1]
        elif len(entries) == 2:
            found = CLEAN
        else:
            found = first_live(entries, now) or CLEAN
        return local.answer(ip, found) if local.entries else found

    def _other_remediation(self, ip: Any) -> Remediation:
        """:meth:`get_ip_remediation` through ``Index.lookup_slow``, nothing memoised: an ``ipaddress`` object, a str
        subclass or ``UserString``, ``::ffff:`` and a tail that is no IPv4 address, a memoised key past the horizon;
        :class:`InvalidIPError` for what is not an address."""
        entries = self._index.lookup_slow(ip)
        if entries is None:
            found = CLEAN if self.live is None else self._live_miss(ip)
        else:
            found = first_live(entries, self._clock()) or CLEAN
        local = self._local
        return local.answer(ip, found) if local.entries else found

    def _live_miss(self, ip: str) -> Remediation:
        raise NotImplementedError  # each engine asks the live source its own way

    def _memo_full(self, idx: Index) -> None:
        """A slow-path answer found no room in ``idx.fast``: derive a fresh map (an empty memo) when ``idx`` has none
        of its own yet, is past its horizon, or filled up at least ``MEMO_RESTART`` seconds after it was derived (so a
        flood of one-off addresses cannot keep the memo from the clients that come back for long)."""
        if self._clock() >= idx.horizon - HORIZON + MEMO_RESTART:
            self._renew_horizon(idx)

    def _renew_horizon(self, idx: Index) -> None:
        """Derive the ``fast`` map of a new index, or a fresh one past its horizon, in a background thread (lookups
        stay correct meanwhile, only a little slower)."""
        if self._renewing:
            return
        self._renewing = True

        def renew() -> None:
            try:
                fresh = idx.with_horizon(self._clock(), memo=self._memo_entries)
                with self._sync_lock:
                    if self._index is idx:
                        self._index = fresh
            finally:
                self._renewing = False

        try:
            threading.Thread(target=renew, name="cscapi-remediation-horizon", daemon=True).start()
        except RuntimeError:  # no new threads (interpreter shutting down): answers stay right, just not the fast way
            self._renewing = False

    # ---- state and sync --------------------------------------------------------------------------------------

    @property
    def index(self) -> Index:
        """The index answering lookups right now (swapped whole by refreshes and syncs)."""
        return self._index

    @property
    def version(self) -> str | None:
        """The store version the index was built from (None before any refresh, and after a clear)."""
        version = self._index.version
        return None if version is None or version.startswith("cleared-") else version

    @property
    def healthy(self) -> bool:
        """True when the index reflects the store as of the last sync (``last_sync_error`` is None).

        False when the store could not be read: never at all (then ``version`` is None and every lookup answers
        ``bypass``/``clean`` because nothing is loaded, not because the address is clean), or since the last good sync
        (then the engine serves the decisions it had). Recovers by itself when a later sync succeeds.
        """
        return self._last_sync_error is None

    @property
    def store_lost(self) -> bool:
        """True when the store held a version and now holds none (LOST, not empty): see ``last_sync_error``.

        Lookups keep answering from the last good index; cleared by the next commit (a refresh by any worker).
        """
        return self._lost is not None

    @property
    def last_sync_error(self) -> DecisionStoreError | None:
        """Why the last sync with the store failed (None when it succeeded); the message never holds a password."""
        return self._last_sync_error

    def require_ready(self) -> None:
        """Raise :class:`cscapi.errors.DecisionStoreError` unless the index reflects the store.

        An unhealthy engine first retries one sync; use this where answering from an unread store would be wrong
        (a CLI check, a readiness probe). Lookups themselves never raise for a store failure.
        """
        if self._last_sync_error is None:
            return
        try:
            self.sync()
        except Exception:
            error = self._last_sync_error
            assert error is not None
            raise DecisionStoreError(error.message, hint=error.hint) from error

    def sync(self) -> bool:
        """Rebuild the index if the store holds another version (another worker refreshed); True if it changed.

        Called by the background sync thread every ``sync_interval_ms`` for shared stores; safe to call yourself.
        Raises :class:`cscapi.errors.DecisionStoreError` if the store cannot be read (then ``healthy`` is False and
        ``last_sync_error`` says why; the current index stays in force).
        """
        try:
            changed = self._sync()
        except Exception as exc:
            never_loaded = self.last_synced_at is None
            if isinstance(exc, DecisionStoreError) and not never_loaded:
                self._last_sync_error = exc
                raise
            if isinstance(exc, DecisionStoreError):
                message = exc.message
            else:
                message = f"could not load the decisions from {self.store.uri}: {type(exc).__name__}: {exc}"
            self._last_sync_error = DecisionStoreError(message, hint=_NEVER_LOADED_HINT if never_loaded else None)
            raise self._last_sync_error from exc
        self._last_sync_error = None
        self.last_synced_at = self._clock()
        return changed

    def _sync(self) -> bool:
        with self._sync_lock:
            self._local.sync(self.store)
            current = self.store.version()
            if current is None:
                had = self._index.version
                marker = None if had is not None else self.store.get_meta(_LOST)
                if had is None and not marker:
                    self._lost = None
                    return False
                # A store that had a version and now has none was LOST (a restart without data, a flush, an
                # eviction, a replaced file), not emptied: `clear()` leaves a "cleared" version. Keep serving the
                # last good index, say so, and leave a mark so that engines starting now know it too.
                if had is not None and self._lost is None:
                    with contextlib.suppress(Exception):
                        self.store.set_meta(_LOST, had)
                if self._lost is None and had is not None:
                    self._logger.error(
                        "decision store %s lost its decisions (had version %s, now empty); still serving the last "
                        "good ones until the next refresh",
                        self.store.uri,
                        had or marker,
                    )
                self._lost = had or marker
                raise DecisionStoreError(
                    f"decision store {self.store.uri} lost its decisions (had version {self._lost}, now empty)",
                    hint=_LOST_HINT,
                )
            self._lost = None
            if current == self._index.version or current == self._committing:
                return False
            version, state = self.store.load()
            if version == self._index.version:
                return False
            if state is None:
                self._index = empty_index(version)
            else:
                self._index = build_index(state, self.policy, version, self._clock())
                self._renew_horizon(self._index)
            self._logger.debug("index synchronised to version %s (%d decisions)", version, self._index.decisions)
            return True

    # ---- local decisions ------------------------------------------------------------------------------------

    def add_local_decision(
        self, ip: str, type_: str = "ban", duration: float = 4 * 3600.0, scenario: str = ""
    ) -> Remediation:
        """Remediate ``ip`` with a decision of this site's own (origin ``local``) for ``duration`` seconds; no I/O.

        In force in this process at once; written to the store by the sync thread (within ``USAGE_FLUSH_INTERVAL``),
        by :meth:`write_local_decisions` or at close, and then merged by every worker sharing the store within its
        sync interval. Kept apart from CAPI's decisions: a refresh never removes it; it expires by itself;
        ``clear_cache`` drops it. Returns its answer (lookups give it unless a CAPI decision ranks higher).
        """
        return self._local.add(ip, type_, duration, scenario)

    def local_decisions(self) -> dict[str, tuple[str, float, str]]:
        """The strongest local decision in force in this process on each IP: ``{ip: (remediation, expires at,
        type)}``; no I/O."""
        return self._local.view()

    def _write_local(self) -> int:
        """Write the local decisions added here and not written yet (blocking; the detectors' thread calls it)."""
        return self._local.write(self.store)

    def _flush_usage(self) -> int:
        """Add this process's usage counts to the store in one atomic write (blocking); see ``UsageCounts``."""
        return self._usage.flush(self.store)

    # ---- the sync thread -------------------------------------------------------------------------------------

    def _start_sync_thread(self) -> None:
        if self._closed or not self.store.shared or self._sync_interval <= 0 or self._sync_thread is not None:
            return
        thread = threading.Thread(
            target=_sync_loop,
            args=(weakref.ref(self), self._sync_stop, self._sync_interval),
            name="cscapi-remediation-sync",
            daemon=True,
        )
        self._sync_thread = thread
        thread.start()

    def _install(self, index: Index | None) -> None:
        """Swap in the index this engine just committed (then let the sync thread look at the store again)."""
        if index is not None:
            with self._sync_lock:
                self._index = index
                self._lost = None
                self._last_sync_error = None
                self.last_synced_at = self._clock()
            self._renew_horizon(index)
        self._committing = None

    def _need_client(self) -> C:
        if self.client is None:
            raise ConfigurationError(
                "this engine has no client: it serves lookups from the shared store but cannot pull or push",
                hint="Pass a CAPIClient (or AsyncCAPIClient) to the engine of the worker that refreshes.",
            )
        return self.client

    def release_locks(self) -> int:
        """Release every refresh lock this engine holds right now (from any thread); returns how many.

        For a shutdown that abandons a refresh in flight: its commit then fails (the lock is gone) and another worker
        may refresh at once instead of waiting ``lock_ttl``. Store errors are logged, never raised.
        """
        with self._held_guard:
            tokens, self._held_locks = list(self._held_locks), set()
        for token in tokens:
            try:
                self.store.release_lock(token)
            except Exception as exc:
                self._logger.warning("could not release the refresh lock (it lapses by itself): %s", exc)
        return len(tokens)

    def _clocks(self) -> Clocks:
        """The engine's clock as the runtime's drivers read it (``EPOCH`` and ``NOW`` effects)."""
        clock = self._clock
        return Clocks(utc=lambda: datetime.fromtimestamp(clock(), timezone.utc), epoch=clock)

    # ---- counters ------------------------------------------------------------------------------------------

    def update_metrics_origins_count(self, origin: str, remediation: str, delta: int = 1) -> None:
        """Count ``delta`` requests answered with ``remediation`` from ``origin``: in process, no I/O, no lock.

        The count is appended to a ``collections.deque`` (its ``append`` and ``popleft`` are atomic: no increment is
        lost between threads); the sync thread sums the queue and adds the sums to the store every
        ``USAGE_FLUSH_INTERVAL`` seconds, and so do ``flush_usage``, ``push_usage_metrics``, ``get_origins_count``
        and ``close``.
        """
        if type(delta) is not int:
            raise ConfigurationError("delta must be an int")
        queue = self._usage.queue
        queue.append((str(origin), str(remediation), delta))
        if len(queue) > DRAIN_AT:
            self._usage.drain(self.store)

    def get_origins_count(self) -> dict[str, dict[str, int]]:
        """Requests counted since the last successful push: ``{origin: {remediation: count}}`` (flushes first)."""
        self._flush_usage()
        return nested_counts(self.store.counters())

    def _metrics_payload(self, at: float) -> tuple[dict[str, Any], dict[tuple[str, str], int], int]:
        self._flush_usage()  # this worker's counts join the others' before they are read
        counts = self.store.counters()
        now = int(at)
        last = self.store.get_meta(_LAST_PUSH)
        window_start = int(float(last)) if last else self._startup_ts
        last_pull = self._index.last_pull
        payload = build_usage_metrics(
            counts,
            name=self.bouncer_name,
            type_=self.bouncer_type,
            version=self.bouncer_version,
            startup_ts=self._startup_ts,
            window_start=window_start,
            now=now,
            last_pull=int(last_pull) if last_pull is not None else None,
        )
        return payload, counts, now

    def _after_push(self, counts: dict[tuple[str, str], int], now: int) -> None:
        self.store.decr_counters(counts)
        self.store.set_meta(_LAST_PUSH, str(now))

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def _clear_local(self) -> None:
        with self._sync_lock:
            self.store.clear()
            if self.store.get_meta(_LOST):
                self.store.set_meta(_LOST, "")  # emptied on purpose: not lost
            self._lost = None
            self._index = empty_index()
            self._local.clear(self.store.local_version())
            self._last_sync_error = None
            self.last_synced_at = self._clock()

    def close(self) -> None:
        """Stop the sync thread and close the store (the client is the caller's to close)."""
        self._closed = True
        self._sync_stop.set()
        thread, self._sync_thread = self._sync_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.release_locks()  # a refresh still running in another thread loses its lock (its commit fails)
        try:
            self._flush_usage()
            self._write_local()
        except Exception as exc:
            self._logger.warning("could not flush the usage counters or local decisions at close: %s", exc)
        self.store.close()

    def __repr__(self) -> str:
        name = type(self).__name__
        health = "" if self.healthy else " unhealthy"
        return f"<{name} store={self.store!r} version={self.version!r} decisions={self._index.decisions}{health}>"


def _is_live(client: Any) -> bool:
    """A source in live mode (``LapiClient(mode="live")``): it answers index misses per IP."""
    return getattr(client, "mode", None) == "live" and callable(getattr(client, "live_cache", None))


def _blocking(fn: Callable[[], R]) -> Flow[R]:
    """One blocking call as a flow: inline when run by ``run_sync``, in a worker thread by ``run_async``."""
    result: R = yield Blocking(fn)
    return result


def _push_flow(engine: _EngineBase[Any], source: Any) -> Flow[dict[str, Any]]:
    """Push the engine's counters as ``AllMetrics`` through ``source``; after a 2xx, subtract exactly what was pushed
    (written once for both engines)."""
    at: float = yield EPOCH
    payload, counts, now = yield Blocking(engine._metrics_payload, (at,))
    machine_id = engine.machine_id
    if not machine_id:
        machine_id = yield Delegate(source.default_machine_id)
    yield Delegate(source.push_usage_metrics, (machine_id, payload))
    yield Blocking(engine._after_push, (counts, now))
    return payload  # type: ignore[no-any-return]


class _FlowStore:
    """The store as the engine's flows call it: the store's own methods, plus the engine's bookkeeping (the refresh
    locks it holds, for ``release_locks``; the version being committed, which the sync thread must not reload)."""

    def __init__(self, engine: _EngineBase[Any]) -> None:
        self._engine = engine
        self._store = engine.store

    def acquire_lock(self, token: str, ttl: float) -> bool:
        acquired = self._store.acquire_lock(token, ttl)
        if acquired:
            with self._engine._held_guard:
                self._engine._held_locks.add(token)
        return acquired

    def release_lock(self, token: str) -> None:
        with self._engine._held_guard:
            self._engine._held_locks.discard(token)
        self._store.release_lock(token)

    def load(self) -> tuple[str | None, State | None]:
        return self._store.load()

    def is_dirty(self) -> bool:
        return self._store.is_dirty()

    def mark_dirty(self) -> None:
        self._store.mark_dirty()

    def commit(self, state: State, version: str, token: str, clean: bool) -> None:
        self._engine._committing = version
        self._store.commit(state, version, token, clean)
        if self._store.get_meta(_LOST):
            self._store.set_meta(_LOST, "")  # a fresh state is in: the store is no longer lost


class RemediationEngine(_EngineBase[DecisionSource | None]):
    """Blocking engine over a :class:`cscapi.remediation.contracts.DecisionSource` (e.g. ``CAPIClient``).

    ``store`` is ``memory://`` (one process), ``sqlite:///path.db`` (the processes of one host) or
    ``redis://host:port/db`` (many hosts; keys under ``key_prefix``). See ``docs/remediation.md`` for every option.
    """

    def _run(self, flow: Flow[R]) -> R:
        try:
            return run_sync(flow, clocks=self._clocks())
        except BaseException as exc:
            if not isinstance(exc, Exception):  # left mid-flow (KeyboardInterrupt, SystemExit): no lock stays held
                self.release_locks()
            raise

    def _live_miss(self, ip: str) -> Remediation:
        """Live mode: this process's cache, else the shared store's, else ask the source (blocking)."""
        hit = self.live.cached(ip, self._clock())
        return hit if hit is not None else self._run(self.live.flow(ip))  # type: ignore[no-any-return]

    def lookup_ip_remediation(self, ip: str) -> Remediation:
        """:meth:`get_ip_remediation` (a live-mode miss asks the source, blocking); the async engine's twin awaits."""
        return self.get_ip_remediation(ip)

    def refresh_decisions(self, force: bool = False) -> RefreshReport:
        """Pull the decisions stream and every list, and swap in the new index (see ``RefreshReport``).

        Raises ``RefreshTooSoonError`` within ``min_refresh_interval`` of the last pull unless ``force``;
        ``RefreshInProgressError`` if another worker holds the lock; the client's or store's error if the pull or
        the commit fails, the previous decisions staying in force.
        """
        self._need_client()
        try:
            report, index = self._run(refresh_flow(self._ctx, force, _FlowStore(self), self.client))
        except BaseException:
            self._committing = None
            raise
        self._install(index)
        return report

    def prune_cache(self) -> int:
        """Drop expired decisions from the store and the index; returns how many went."""
        try:
            removed, index = self._run(prune_flow(self._ctx, _FlowStore(self)))
        except BaseException:
            self._committing = None
            raise
        self._install(index)
        return removed

    def clear_cache(self) -> None:
        """Forget every decision (this engine's keys only); the next refresh is a startup pull."""
        self._run(_blocking(self._clear_local))

    def flush_usage(self) -> int:
        """Add the requests counted in this process to the store now, in one atomic write; returns how many.

        The sync thread does it every ``USAGE_FLUSH_INTERVAL`` seconds, push and close too. On a store error the sums
        are kept for the next flush (and the error raised)."""
        return self._flush_usage()

    def write_local_decisions(self) -> int:
        """Write the local decisions added in this process and not written yet; returns how many (the sync thread
        does it every ``USAGE_FLUSH_INTERVAL`` seconds, close too). A store error is raised; they stay pending."""
        return self._write_local()

    def push_usage_metrics(self) -> dict[str, Any]:
        """Push the counters as ``AllMetrics``; after a 2xx, subtract exactly what was pushed. Returns the payload."""
        return self._run(_push_flow(self, self._need_client()))

    def __enter__(self) -> RemediationEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRemediationEngine(_EngineBase[AsyncDecisionSource | None]):
    """Awaiting engine over an :class:`cscapi.remediation.contracts.AsyncDecisionSource` (e.g. ``AsyncCAPIClient``).

    Same options and semantics as :class:`RemediationEngine`; store calls and index builds run in a worker thread,
    never on the event loop. ``get_ip_remediation`` stays a plain (synchronous, I/O-free) method. The constructor does
    no store read (a shared store is first read by the sync thread, at once; until then ``healthy`` is False and
    lookups answer from an empty index): ``await engine.aready()`` waits for it. ``strict=True`` keeps the blocking
    first read in the constructor (it raises there); prefer ``aready()`` inside a running loop.
    """

    _defer_first_sync = True

    async def aready(self) -> None:
        """:meth:`require_ready` off the event loop: raise :class:`cscapi.errors.DecisionStoreError` unless the index
        reflects the store (an engine not loaded yet, or unhealthy, first tries one sync in a worker thread)."""
        await self._run(_blocking(self.require_ready))

    async def _run(self, flow: Flow[R]) -> R:
        try:
            return await run_async(flow, clocks=self._clocks())
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled mid-flow: release the lock off the loop
                import asyncio  # imported on first use: the sync engine never needs it

                release = asyncio.ensure_future(run_async(_blocking(self.release_locks)))
                with contextlib.suppress(BaseException):  # cancelled again: the release still completes in its thread
                    await asyncio.shield(release)
            raise

    def _live_miss(self, ip: str) -> Remediation:
        """Live mode, synchronous lookup: never blocks the loop. A cached answer, else the fallback remediation
        while the lookup runs in its own task (``await lookup_ip_remediation(ip)`` waits for it instead)."""
        hit = self.live.cached(ip, self._clock())
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        self.live.start(ip, lambda: run_async(self.live.flow(ip), clocks=self._clocks()))
        return self.live.fallback  # type: ignore[no-any-return]

    async def lookup_ip_remediation(self, ip: str) -> Remediation:
        """:meth:`get_ip_remediation`, but a live-mode miss awaits the source's answer (off the loop's thread for
        store calls; concurrent misses on one IP share one lookup). Stream mode: the same I/O-free answer."""
        live = self.live
        if live is None or live.cached(ip, self._clock()) is not None or not self._asks_live_source(ip):
            return self.get_ip_remediation(ip)  # the index, the local decisions and the cache: no I/O
        fetched: Remediation = await live.fetch(ip, lambda: run_async(live.flow(ip), clocks=self._clocks()))
        if live.cached(ip, self._clock()) is None:  # an answer not cached (the source failed: the fallback)
            local = self._local
            return local.answer(ip, fetched) if local.entries else fetched
        return self.get_ip_remediation(ip)  # the fetched answer is cached now: merged with the local decisions

    def _asks_live_source(self, ip: str) -> bool:
        """True when :meth:`get_ip_remediation` would miss the index and ask the live source."""
        idx = self._index
        try:
            return idx.fast.get(ip) is None and idx.lookup_slow(ip) is None
        except (TypeError, ValueError):
            return False  # not an address: get_ip_remediation raises InvalidIPError

    async def refresh_decisions(self, force: bool = False) -> RefreshReport:
        """See :meth:`RemediationEngine.refresh_decisions`."""
        self._need_client()
        try:
            report, index = await self._run(refresh_flow(self._ctx, force, _FlowStore(self), self.client))
        except BaseException:
            self._committing = None
            raise
        self._install(index)
        return report

    async def prune_cache(self) -> int:
        """See :meth:`RemediationEngine.prune_cache`."""
        try:
            removed, index = await self._run(prune_flow(self._ctx, _FlowStore(self)))
        except BaseException:
            self._committing = None
            raise
        self._install(index)
        return removed

    async def clear_cache(self) -> None:
        """See :meth:`RemediationEngine.clear_cache`."""
        await self._run(_blocking(self._clear_local))

    async def flush_usage(self) -> int:
        """See :meth:`RemediationEngine.flush_usage` (the store write runs in a worker thread)."""
        return await self._run(_blocking(self._flush_usage))

    async def write_local_decisions(self) -> int:
        """See :meth:`RemediationEngine.write_local_decisions` (the store writes run in a worker thread)."""
        return await self._run(_blocking(self._write_local))

    async def push_usage_metrics(self) -> dict[str, Any]:
        """See :meth:`RemediationEngine.push_usage_metrics`."""
        return await self._run(_push_flow(self, self._need_client()))

    async def aclose(self) -> None:
        """Close without blocking the event loop."""
        await self._run(_blocking(self.close))

    async def __aenter__(self) -> AsyncRemediationEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
