"""Detectors: leaky buckets per (IP, scenario) that remediate and share what a web application sees.

A :class:`Scenario` is a CrowdSec-style leaky bucket: ``capacity`` events, one leaking every ``leak_speed`` seconds,
and a ``blackhole`` after it overflows. :class:`Detectors` pours the events the application reports
(``report``, ``report_failed_login``, the middlewares' 404 hook) into buckets kept in this process (``"memory"``) or
in the engine's shared store (``"shared"``: SQLite or Redis, so that every worker counts together). An overflow
(1) adds a local decision to the engine (origin ``local``; every worker sharing the store applies it within its sync
interval) unless the scenario is a whisper, and (2) queues a signal for CAPI. The request path only appends to a
bounded in-memory buffer; a background thread pours shared buckets, writes the decisions and queues the signals
(``add_signals`` of a ``CAPIClient`` or of a signal storage such as ``SQLStorage``), at exit too. See docs/web.md,
"Detectors".
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cscapi.errors import ConfigurationError
from cscapi.remediation.stores.base import leak

__all__ = ["DetectorCounters", "Detectors", "Scenario", "failed_login", "http_probing"]

logger = logging.getLogger("cscapi.web.detect")

_STATIC_SUFFIXES = (".css", ".js", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".webp", ".woff", ".woff2")


@dataclass(frozen=True)
class Scenario:
    """A leaky bucket per IP: more than ``capacity`` events, one leaking every ``leak_speed`` seconds, overflow.

    After an overflow the IP's bucket ignores events for ``blackhole`` seconds. ``decision_type`` (``"ban"``,
    ``"captcha"``, ...) and ``duration`` (seconds) make the local decision and the signal's decision; None makes a
    whisper (a signal without decision, no local decision). ``name`` must be one of your client's ``scenarios``.
    """

    name: str
    capacity: int = 5
    leak_speed: float = 10.0
    blackhole: float = 60.0
    decision_type: str | None = "ban"
    duration: float = 4 * 3600.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 255:
            raise ConfigurationError("a scenario needs a name (e.g. 'mycompany/login-bf'), at most 255 characters")
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) or self.capacity < 0:
            raise ConfigurationError(f"scenario {self.name!r}: capacity must be an int >= 0")
        for what in ("leak_speed", "blackhole", "duration"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"scenario {self.name!r}: {what} must be a number of seconds >= 0")
        kind = self.decision_type
        if kind is not None and (not isinstance(kind, str) or not kind or not kind.isprintable()):
            raise ConfigurationError(
                f"scenario {self.name!r}: decision_type must be a non-empty printable string or None"
            )
        if self.decision_type is not None and not self.duration > 0:
            raise ConfigurationError(f"scenario {self.name!r}: a decision needs a duration > 0")


def failed_login(name: str, **overrides: Any) -> Scenario:
    """Failed logins: 5 within about 10 s each (leak 10 s) → a 4 h ban (CrowdSec's http-bf spirit)."""
    options: dict[str, Any] = {"capacity": 5, "leak_speed": 10.0, "blackhole": 60.0, "decision_type": "ban"}
    return Scenario(name, **{**options, **overrides})


def http_probing(name: str, **overrides: Any) -> Scenario:
    """Bursts of 404s (static files aside), what scanners leave: 10 leaking one per 10 s → a whisper signal."""
    options: dict[str, Any] = {"capacity": 10, "leak_speed": 10.0, "blackhole": 300.0, "decision_type": None}
    return Scenario(name, **{**options, **overrides})


@dataclass
class DetectorCounters:
    """What the detectors did since they started (plain ints, for monitoring)."""

    events: int = 0
    overflows: int = 0
    decisions: int = 0
    signals_queued: int = 0
    dropped: int = 0
    """Events or overflows dropped because the buffer was full (logged, rate-limited)."""
    errors: int = 0
    """Store or queue failures in the background thread (logged; the item is dropped)."""
    extra: dict[str, int] = field(default_factory=dict)


_instances: weakref.WeakSet[Detectors] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_hooks_registered = False


def _after_fork_in_child() -> None:
    """The child gets a fresh lock, an empty buffer (the parent's items are the parent's to write) and no thread."""
    for detectors in list(_instances):
        detectors._reset_after_fork()


def _at_exit() -> None:
    for detectors in list(_instances):
        detectors.close()


def _register_hooks() -> None:
    global _hooks_registered
    with _hooks_lock:
        if not _hooks_registered:
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_in_child)
            atexit.register(_at_exit)
            _hooks_registered = True


class Detectors:
    """Leaky-bucket detectors over a remediation engine; give them to the Bouncer (``Bouncer(..., detectors=...)``).

    ``scenarios``: the :class:`Scenario` list. ``signals``: where overflow signals are queued (anything with
    ``add_signals(signals)``: a ``CAPIClient``, a ``SQLStorage``), or None to only remediate. ``allowed_scenarios``:
    the names your client declares (its ``scenarios``; read from ``signals.config.scenarios`` when it is a client);
    every scenario must be among them. ``buckets``: ``"memory"`` (this process) or ``"shared"`` (the engine's store,
    SQLite or Redis: workers count together); default shared when the store is. ``failed_login`` and ``not_found``:
    the scenario names used by :meth:`report_failed_login` and :meth:`observe_status` (404s). ``machine_id``: the
    signals' machine (None: the queue storage's first machine, the agent's). ``buffer_size``: pending items kept
    before dropping. ``destinations``: the queues the signals go to, ``("capi",)`` (default), ``("lapi",)`` (a
    ``cscapi.lapi.LapiWatcher`` pushes them to a local CrowdSec) or both; ``lapi`` needs a storage that keeps
    destinations (``SQLStorage``).
    """

    def __init__(
        self,
        engine: Any,
        scenarios: Iterable[Scenario],
        *,
        signals: Any = None,
        allowed_scenarios: Sequence[str] | None = None,
        buckets: str | None = None,
        failed_login: str | None = None,
        not_found: str | None = None,
        machine_id: str | None = None,
        buffer_size: int = 10_000,
        flush_interval: float = 1.0,
        clock: Callable[[], float] | None = None,
        destinations: Sequence[str] | str = ("capi",),
    ) -> None:
        from cscapi.storage import check_destinations, require_destinations

        self.destinations = check_destinations(destinations)
        if "lapi" in self.destinations and signals is not None:  # a client queues into its storage
            require_destinations(getattr(signals, "storage", signals))
        if not callable(getattr(engine, "add_local_decision", None)):
            raise ConfigurationError("engine must be a RemediationEngine (it has no add_local_decision())")
        self.engine = engine
        self.scenarios: dict[str, Scenario] = {}
        for scenario in scenarios:
            if not isinstance(scenario, Scenario):
                raise ConfigurationError(f"scenarios must be Scenario objects, not {type(scenario).__name__}")
            if scenario.name in self.scenarios:
                raise ConfigurationError(f"scenario {scenario.name!r} is given twice")
            self.scenarios[scenario.name] = scenario
        if signals is not None and not callable(getattr(signals, "add_signals", None)):
            raise ConfigurationError("signals must have add_signals() (a CAPIClient or a signal storage), or be None")
        self.signals = signals
        if allowed_scenarios is None and signals is not None:
            config = getattr(signals, "config", None)
            allowed_scenarios = getattr(config, "scenarios", None)
        if signals is not None and allowed_scenarios is None:
            raise ConfigurationError(
                "the detectors' scenarios must be among the ones your client declares",
                hint="Pass allowed_scenarios=[...] (the same list as the agent's client config 'scenarios').",
            )
        if allowed_scenarios is not None:
            unknown = sorted(set(self.scenarios) - set(allowed_scenarios))
            if unknown:
                raise ConfigurationError(
                    f"scenario(s) {', '.join(map(repr, unknown))} are not in the client's scenarios "
                    f"{sorted(allowed_scenarios)}",
                    hint="Add them to the client config's 'scenarios' (CAPI only accepts signals of those).",
                )
        for what, name in (("failed_login", failed_login), ("not_found", not_found)):
            if name is not None and name not in self.scenarios:
                raise ConfigurationError(f"{what}={name!r} is not one of the scenarios given")
        self.failed_login = failed_login
        self.not_found = not_found
        store = engine.store
        if buckets is None:
            buckets = "shared" if store.shared else "memory"
        if buckets not in ("memory", "shared"):
            raise ConfigurationError(f"buckets must be 'memory' or 'shared', not {buckets!r}")
        if buckets == "shared" and not store.shared:
            raise ConfigurationError("buckets='shared' needs a shared store (sqlite:/// or redis://) in the engine")
        self.buckets = buckets
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ConfigurationError("buffer_size must be an int >= 1")
        if not flush_interval > 0:
            raise ConfigurationError("flush_interval must be > 0 seconds")
        self.buffer_size = buffer_size
        self.flush_interval = float(flush_interval)
        if machine_id is not None:  # checked now: a bad id would otherwise drop every signal at run time
            from cscapi.errors import ValidationError
            from cscapi.machines import validate_machine_id

            try:
                validate_machine_id(machine_id)
            except ValidationError as exc:
                raise ConfigurationError(f"Detectors(machine_id=...): {exc.message}", hint=exc.hint) from None
        self.machine_id = machine_id
        self.counters = DetectorCounters()
        self._clock = clock or time.time
        self._memory: dict[tuple[str, str], tuple[float, float, float]] = {}  # (ip, scenario) -> (level, last, until)
        self._closed = False
        self._last_drop_log = 0.0
        self._reset_after_fork()
        _register_hooks()
        _instances.add(self)

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._buffer: deque[tuple[str, str, str, float]] = deque()  # ("event"|"overflow", ip, scenario, at)
        self._writing = threading.Lock()  # one writer at a time: the background thread or flush()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # ---- reporting (the request path) ------------------------------------------------------------------------

    def report(self, ip: str, scenario: str) -> bool:
        """Pour one event for ``ip`` into ``scenario``'s bucket; never blocks on I/O.

        Memory buckets are poured here (True when this event overflowed: the local decision is then already in force
        in this process); shared buckets are poured by the background thread (then False).
        """
        found = self.scenarios.get(scenario)
        if found is None:
            raise ConfigurationError(f"unknown scenario {scenario!r}: give it to Detectors(scenarios=[...])")
        self.counters.events += 1
        now = self._clock()
        if self.buckets == "shared":
            self._enqueue("event", ip, scenario, now)
            return False
        with self._lock:
            key = (ip, scenario)
            level, last, until = self._memory.get(key, (0.0, now, 0.0))
            over, level, until = _leak(level, last, until, now, found)
            memory = self._memory
            if len(memory) >= 100_000:
                self._sweep(now)
            memory[key] = (level, now, until)
        if over:
            self._overflow(ip, found, now)
        return over

    def _sweep(self, now: float) -> None:
        """Drop the buckets that leaked empty and left their blackhole (bounded memory)."""
        scenarios = self.scenarios
        for key in [
            k
            for k, (level, last, until) in self._memory.items()
            if until <= now and _empty(level, last, now, scenarios[k[1]])
        ]:
            del self._memory[key]
        if len(self._memory) >= 75_000:  # mostly live: forget the least recent down to half (no sweep per event)
            oldest = sorted(self._memory, key=lambda k: self._memory[k][1])[: len(self._memory) - 50_000]
            for key in oldest:
                del self._memory[key]
            self.counters.extra["buckets_evicted"] = self.counters.extra.get("buckets_evicted", 0) + len(oldest)

    def report_failed_login(self, ip: str) -> bool:
        """A failed login from ``ip`` (the ``failed_login`` scenario); False when none is configured."""
        if self.failed_login is None:
            return False
        return self.report(ip, self.failed_login)

    def observe_status(self, ip: str, path: str, status: int) -> bool:
        """The middlewares' hook: a 404 on a non-static path feeds the ``not_found`` scenario (scanners' probes)."""
        if status != 404 or self.not_found is None:
            return False
        if path.lower().endswith(_STATIC_SUFFIXES):
            return False
        return self.report(ip, self.not_found)

    def _overflow(self, ip: str, scenario: Scenario, now: float) -> None:
        """In force here at once (no I/O); the background thread writes it to the store and queues the signal."""
        self.counters.overflows += 1
        if scenario.decision_type is not None:
            try:
                self.engine.add_local_decision(ip, scenario.decision_type, scenario.duration, scenario.name)
                self.counters.decisions += 1
            except Exception as exc:
                self.counters.errors += 1
                logger.warning("detector %s: could not add the local decision: %s", scenario.name, exc)
        self._enqueue("overflow", ip, scenario.name, now)

    def _enqueue(self, kind: str, ip: str, scenario: str, at: float) -> None:
        if self._pid != os.getpid():  # forked without the hook (os.fork in a library that bypasses it)
            self._reset_after_fork()
        buffer = self._buffer
        if len(buffer) >= self.buffer_size:
            self.counters.dropped += 1
            if at - self._last_drop_log >= 60.0:
                self._last_drop_log = at
                logger.warning(
                    "detectors: buffer full (%d items), dropping (%d dropped so far): is the store or queue slow?",
                    self.buffer_size,
                    self.counters.dropped,
                )
            return
        buffer.append((kind, ip, scenario, at))
        if self._thread is None and not self._closed:
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(
                target=_worker, args=(weakref.ref(self), self._wake), name="cscapi-detectors", daemon=True
            )
            self._thread = thread
        thread.start()

    # ---- the background side -------------------------------------------------------------------------------------

    def _process(self, timeout: float = -1) -> bool:
        """Write everything buffered (pour shared buckets, add decisions, queue the signals in one add_signals), as
        the one writer; False when another writer kept the lock past ``timeout``."""
        if not self._writing.acquire(timeout=timeout):
            return False
        try:
            items = []
            buffer = self._buffer
            while True:
                try:
                    items.append(buffer.popleft())
                except IndexError:
                    break
            if items:
                self._write(items)
            return True
        finally:
            self._writing.release()

    def _write(self, items: list[tuple[str, str, str, float]]) -> int:
        overflows: list[tuple[str, Scenario, float]] = []
        store_down = False
        for kind, ip, name, at in items:
            scenario = self.scenarios[name]
            if kind == "overflow":
                overflows.append((ip, scenario, at))
                continue
            if store_down:  # one timeout per batch, not one per event (an exit must not hang on a dead store)
                self.counters.errors += 1
                continue
            try:
                key = f"{name}\x00{ip}"
                over = self.engine.store.leak_bucket(
                    key, scenario.capacity, scenario.leak_speed, scenario.blackhole, at
                )
            except Exception as exc:
                self.counters.errors += 1
                store_down = True
                logger.warning(
                    "detector %s: the shared bucket could not be read (this batch's events dropped): %s", name, exc
                )
                continue
            if over:
                self.counters.overflows += 1
                if scenario.decision_type is not None:
                    try:
                        self.engine.add_local_decision(ip, scenario.decision_type, scenario.duration, name)
                        self.counters.decisions += 1
                    except Exception as exc:
                        self.counters.errors += 1
                        logger.warning("detector %s: could not add the local decision: %s", name, exc)
                overflows.append((ip, scenario, at))
        try:
            self.engine._write_local()  # blocking, in this background thread (the async engine's twin awaits)
        except Exception as exc:
            self.counters.errors += 1
            logger.warning("detectors: could not write the local decisions (retried later): %s", exc)
        if overflows and self.signals is not None:
            self._queue_signals(overflows)
        return len(items)

    def _queue_signals(self, overflows: list[tuple[str, Scenario, float]]) -> None:
        from datetime import datetime, timezone

        from cscapi.signals import create_signal

        machine_id = self._machine()
        if machine_id is None:
            self.counters.errors += len(overflows)
            logger.warning(
                "detectors: no machine to queue %d signal(s) under (dropped): give machine_id=, or let the agent "
                "register its machine first (cscapi machines list)",
                len(overflows),
            )
            return
        signals = []
        for ip, scenario, at in overflows:
            try:
                options: dict[str, Any] = {}
                if scenario.decision_type is not None:
                    options = {"decision_type": scenario.decision_type, "duration": scenario.duration}
                signals.append(
                    create_signal(
                        ip,
                        scenario.name,
                        created_at=datetime.fromtimestamp(at, timezone.utc),
                        machine_id=machine_id,
                        message=f"{scenario.name}: more than {scenario.capacity} events (cscapi.web.detect)",
                        **options,
                    )
                )
            except Exception as exc:
                self.counters.errors += 1
                logger.warning("detector %s: could not build the signal for %s: %s", scenario.name, ip, exc)
        if not signals:
            return
        try:
            if self.destinations == ("capi",):
                self.signals.add_signals(signals)  # any add_signals(signals), as before destinations existed
            else:
                self.signals.add_signals(signals, destinations=self.destinations)
            self.counters.signals_queued += len(signals)
        except Exception as exc:
            self.counters.errors += len(signals)
            logger.warning("detectors: could not queue %d signal(s) (dropped): %s", len(signals), exc)

    def _machine(self) -> str | None:
        """``machine_id``, else the queue storage's first machine (the agent's), read once (in this thread)."""
        if self.machine_id is None:
            storage = getattr(self.signals, "storage", self.signals)
            try:
                machines = storage.list_machines()
            except Exception as exc:
                logger.warning("detectors: could not list the machines of the signal queue: %s", exc)
                return None
            if machines:
                self.machine_id = str(machines[0].machine_id)
        return self.machine_id

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything reported so far (from the calling thread, alongside the background one); True when the
        buffer is empty and nothing is being written at return (False after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self._process(timeout=max(0.0, deadline - time.monotonic())):
                return False
            if not self._buffer:
                return True  # written under the writer lock: nothing is half-written by the other thread either
            if time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        """Stop the background thread after writing what is buffered (also run at exit)."""
        if self._closed:
            return
        self._closed = True
        if self._pid == os.getpid():
            self.flush(timeout=5.0)
        thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def __repr__(self) -> str:
        return f"<Detectors {sorted(self.scenarios)} buckets={self.buckets} pending={len(self._buffer)}>"


def _leak(level: float, last: float, until: float, now: float, s: Scenario) -> tuple[bool, float, float]:
    return leak(level, last, until, now, s.capacity, s.leak_speed, s.blackhole)


def _empty(level: float, last: float, now: float, s: Scenario) -> bool:
    return s.leak_speed <= 0 or level - (now - last) / s.leak_speed <= 0


def _worker(ref: weakref.ref[Detectors], wake: threading.Event) -> None:
    """Wait for items (or the flush interval), write them; exits when the detectors are closed or collected."""
    while True:
        detectors = ref()
        if detectors is None or detectors._closed:
            return
        interval = detectors.flush_interval
        del detectors
        wake.wait(interval)
        wake.clear()
        detectors = ref()
        if detectors is None:
            return
        try:
            detectors._process()
        except Exception as exc:  # never dies: the next round retries
            detectors.counters.errors += 1
            logger.warning("detectors: background write failed: %s", exc)
        if detectors._closed:
            return
        del detectors
