"""The long-running agent behind ``cscapi run``: push queued signals, refresh decisions, push metrics, forever.

One :class:`Agent` per signal storage (enforced by :class:`AgentLock`). It wakes for whichever job is due next:

* push queued signals every ``push_interval`` seconds (10 s to 10 min, as CAPI asks);
* refresh decisions at start, then every ``refresh_interval`` (2 h by default) moved by a random jitter, never sooner
  than CAPI's 1 h 30 minimum;
* push metrics at start and every ``metrics_interval`` (30 min);
* write a health line (and, with ``health_port``, serve a JSON health report on 127.0.0.1).

Each action logs exactly one line. A failure is logged and retried at the job's next slot; a login ban pauses every
CAPI call until it ends; a 429 waits for the server's ``Retry-After``.

Jobs run in a worker thread, so that nothing a job does can hold the agent: :meth:`Agent.stop` (called from a SIGTERM
or SIGINT handler) lets the job in flight finish for up to ``stop_timeout - 3`` seconds, then abandons it, releases
every lock (the engine's refresh lock, the agent's lock or lease) and returns, within ``stop_timeout`` (10 s) in all.
An abandoned batch is safe: its claim's lease runs out and the signals are sent again, never lost. A job running past
``stall_after`` makes the health ``degraded``; the agent's lease is renewed by its own thread, whatever the jobs do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cscapi._text import plural
from cscapi._validators import check_batch_size, check_refresh
from cscapi.errors import (
    AlreadyRunningError,
    CAPIError,
    ConfigurationError,
    LoginBannedError,
    RateLimitedError,
    RefreshInProgressError,
    RefreshTooSoonError,
    StorageError,
)
from cscapi.limits import (
    DEFAULT_METRICS_INTERVAL,
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_REFRESH_JITTER,
    MAX_PUSH_INTERVAL,
    MIN_PUSH_INTERVAL,
    MIN_REFRESH_INTERVAL,
)
from cscapi.timeutil import format_go_duration, format_rfc3339, utcnow

__all__ = ["Agent", "AgentConfig", "AgentLock", "HealthServer"]

#: CAPI's documented minimum between two decision pulls (1 h 30), from cscapi.limits.
MIN_REFRESH_SECONDS = float(MIN_REFRESH_INTERVAL)
_WAKE = 1.0  # the loop looks at the stop flag, a finished job and a lost decision store at least this often
_RELEASE_RESERVE = 3.0  # of stop_timeout, kept for releasing the locks after the job in flight is abandoned


@dataclass
class AgentConfig:
    """When the agent does what. Bounds are checked: CAPI asks for pushes every 10 s to 10 min and pulls >= 1 h 30."""

    push_interval: float = MIN_PUSH_INTERVAL
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL
    refresh_jitter: float = DEFAULT_REFRESH_JITTER
    metrics_interval: float = DEFAULT_METRICS_INTERVAL
    batch_size: int = 50
    health_interval: float = 300.0
    health_port: int = 0
    refresh_decisions: bool = True
    push_metrics: bool = True
    keep_sent: float = 86400.0
    prune_interval: float = 3600.0
    stop_timeout: float = 10.0
    """Seconds from a stop request (SIGTERM) to :meth:`Agent.run` returning, locks released, whatever the job does."""
    stall_after: float = 300.0
    """A job running longer than this makes the health ``degraded`` (HTTP 503) with the reason."""
    repull_min_interval: float = MIN_REFRESH_SECONDS
    """Minimum seconds between two re-pulls caused by a LOST decision store (the first is at once): CAPI's minimum
    between two pulls by default, so a flapping store cannot make the agent pull more often than CAPI allows."""
    min_refresh_interval: float = MIN_REFRESH_SECONDS
    """The decision source's shortest pull interval: CAPI's 1 h 30, or a LAPI source's 0 (``LapiClient``), which
    lets ``refresh_interval`` go down to 1 s (a LAPI is pulled every 10 s by default, as bouncers do)."""

    def __post_init__(self) -> None:
        if not MIN_PUSH_INTERVAL <= self.push_interval <= MAX_PUSH_INTERVAL:
            raise ConfigurationError(
                f"push_interval must be between {MIN_PUSH_INTERVAL:g} and {MAX_PUSH_INTERVAL:g} seconds, "
                f"not {self.push_interval:g}"
            )
        if self.min_refresh_interval >= MIN_REFRESH_SECONDS:
            check_refresh(self.refresh_interval, self.refresh_jitter)
        elif not (math.isfinite(self.refresh_interval) and self.refresh_interval - self.refresh_jitter >= 1):
            raise ConfigurationError(
                "refresh_interval - refresh_jitter must be at least 1 s, "
                f"not {self.refresh_interval - self.refresh_jitter:g}"
            )
        if self.refresh_jitter < 0 or min(self.metrics_interval, self.health_interval, self.prune_interval) <= 0:
            raise ConfigurationError("refresh_jitter must be >= 0; metrics, health and prune intervals must be > 0")
        if self.keep_sent < 0:
            raise ConfigurationError("keep_sent must be >= 0 seconds")
        check_batch_size(self.batch_size)
        if not 0 <= self.health_port <= 65535:
            raise ConfigurationError(f"health_port must be between 0 and 65535, not {self.health_port}")
        if not 1 <= self.stop_timeout <= 300:
            raise ConfigurationError(f"stop_timeout must be between 1 and 300 seconds, not {self.stop_timeout:g}")
        if self.stall_after <= 0:
            raise ConfigurationError("stall_after must be > 0 seconds")
        if self.repull_min_interval < 60:
            raise ConfigurationError(
                f"repull_min_interval must be at least 60 seconds, not {self.repull_min_interval:g}",
                hint="It bounds how often a lost decision store makes the agent pull from CAPI again.",
            )


# ---- single instance ----------------------------------------------------------------------------------------------


class AgentLock:
    """One agent per signal storage.

    For a SQLite storage, an exclusive ``flock`` on ``<database>.agent.lock`` (released by the kernel if the process
    dies). For a database server shared by many hosts, a lease taken with the storage's ``acquire_agent_lease`` and
    renewed while the agent runs (it lapses ``ttl`` seconds after a crash).
    """

    def __init__(
        self,
        storage: Any,
        storage_uri: str,
        *,
        ttl_seconds: float = 120.0,
        lock_dir: Path | None = None,
        lease: bool | None = None,
    ):
        self.storage = storage
        self.storage_uri = storage_uri
        self.ttl = ttl_seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        # lease=True takes a database lease even on SQLite (a storage shared through a network file system)
        self.path = None if lease else self._lock_path(storage_uri, lock_dir)
        self._fd: int | None = None
        self._lease_until = 0.0
        self._mutex = threading.Lock()

    @staticmethod
    def _lock_path(uri: str, lock_dir: Path | None) -> Path | None:
        if not uri.startswith("sqlite"):
            return None
        database = uri.split("///", 1)[1] if "///" in uri else ""
        database = database.split("?", 1)[0]
        if database in ("", ":memory:"):
            digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
            base = lock_dir or Path(tempfile.gettempdir())
            return base / f"cscapi-agent-{digest}.lock"
        return Path(database + ".agent.lock")

    @property
    def kind(self) -> str:
        return "file" if self.path is not None else "database lease"

    def acquire(self) -> None:
        """Take the lock or raise :class:`AlreadyRunningError` at once (never waits)."""
        if self.path is not None:
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise AlreadyRunningError(f"another agent holds {self.path}") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{self.holder}\n".encode())
            self._fd = fd
            return
        if not self.storage.acquire_agent_lease(self.holder, self.ttl):
            raise AlreadyRunningError(
                "another agent holds the lease on this storage",
                hint=f"Stop it first; a crashed agent's lease lapses after {self.ttl:g} s.",
            )
        self._lease_until = time.monotonic() + self.ttl

    def renew(self) -> None:
        """Keep a database lease alive (a no-op for file locks); raises if another agent took it over.

        Called by the agent's lease thread every ``ttl / 4`` seconds; renews once half the lease is used.
        """
        with self._mutex:
            if self.path is not None or not self._lease_until or time.monotonic() < self._lease_until - self.ttl / 2:
                return
            try:
                renewed = bool(self.storage.renew_agent_lease(self.holder, self.ttl))  # False after a takeover
            except StorageError:
                if time.monotonic() < self._lease_until:
                    return  # the database is briefly unreachable: the lease still holds, try again soon
                raise AlreadyRunningError(
                    "the agent's lease on the storage ran out while the database was unreachable",
                    hint="Another agent may have taken over; restart this one once the database is back.",
                ) from None
            if not renewed:
                self._lease_until = 0.0  # not ours any more: release() must not touch it
                raise AlreadyRunningError("another agent took over this storage's lease")
            self._lease_until = time.monotonic() + self.ttl

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        with self._mutex:
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif self.path is None and self._lease_until:
            with contextlib.suppress(CAPIError):
                self.storage.release_agent_lease(self.holder)
            self._lease_until = 0.0


# ---- health -------------------------------------------------------------------------------------------------------


class HealthServer:
    """A tiny JSON health endpoint on loopback (``GET /`` or ``/health``): 200 when ``ok``, 503 otherwise.

    One thread and a selector, whatever the clients do: at most ``max_connections`` sockets are open (a new one evicts
    the oldest), each gets ``client_timeout`` seconds in all to send its request line and headers (at most 8 KiB), and
    the answer is written without blocking. Idle or slow clients cannot pile up threads or starve a probe.
    """

    MAX_REQUEST = 8192

    def __init__(
        self,
        report: Callable[[], dict[str, Any]],
        port: int,
        host: str = "127.0.0.1",
        *,
        max_connections: int = 64,
        client_timeout: float = 5.0,
    ) -> None:
        import selectors

        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigurationError(f"the health endpoint only listens on loopback, not {host!r}")
        self._report = report
        self.max_connections = max_connections
        self.client_timeout = client_timeout
        try:
            self._listener = socket.create_server(
                (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve health on {host}:{port}: {exc.strerror}", hint="Choose another --health-port."
            ) from None
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        # socket -> [deadline, bytes received, bytes left to send or None while reading]
        self._conns: dict[socket.socket, list[Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="cscapi-health", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import selectors

        while not self._stop.is_set():
            for key, events in self._selector.select(timeout=0.25):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is self._listener:
                    self._accept()
                elif sock in self._conns:
                    try:
                        if events & selectors.EVENT_READ:
                            self._read(sock)
                        elif events & selectors.EVENT_WRITE:
                            self._write(sock)
                    except OSError:
                        self._drop(sock)
            now = time.monotonic()
            for sock in [s for s, state in self._conns.items() if state[0] < now]:
                self._drop(sock)  # idle or too slow
        for sock in list(self._conns):
            self._drop(sock)
        self._selector.close()
        self._listener.close()

    def _accept(self) -> None:
        import selectors

        for _ in range(64):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._conns) >= self.max_connections:
                self._drop(min(self._conns, key=lambda c: self._conns[c][0]))  # the oldest goes
            sock.setblocking(False)
            self._conns[sock] = [time.monotonic() + self.client_timeout, b"", None]
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _read(self, sock: socket.socket) -> None:
        state = self._conns[sock]
        chunk = sock.recv(4096)
        if not chunk:
            self._drop(sock)
            return
        state[1] += chunk
        if b"\r\n\r\n" not in state[1] and b"\n\n" not in state[1]:
            if len(state[1]) > self.MAX_REQUEST:
                self._respond(sock, 431, {"error": "request header fields too large"})
            return
        line = state[1].split(b"\n", 1)[0].decode("latin-1").split()
        if len(line) < 2:
            self._respond(sock, 400, {"error": "bad request"})
        elif line[0] not in ("GET", "HEAD"):
            self._respond(sock, 405, {"error": "only GET"})
        elif line[1].split("?")[0] not in ("/", "/health", "/healthz"):
            self._respond(sock, 404, {"error": "not found"})
        else:
            try:
                body = self._report()
            except Exception as exc:  # a health report that fails is itself a health signal
                body = {"status": "degraded", "reasons": [f"health report failed: {type(exc).__name__}"]}
            self._respond(sock, 200 if body.get("status") == "ok" else 503, body, head=line[0] == "HEAD")

    def _respond(self, sock: socket.socket, status: int, body: dict[str, Any], head: bool = False) -> None:
        import selectors
        from http import HTTPStatus

        data = json.dumps(body, default=str).encode()
        reason = HTTPStatus(status).phrase
        header = (
            f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self._conns[sock][2] = header + (b"" if head else data)
        self._selector.modify(sock, selectors.EVENT_WRITE, None)
        self._write(sock)

    def _write(self, sock: socket.socket) -> None:
        state = self._conns[sock]
        try:
            sent = sock.send(state[2])
        except (BlockingIOError, InterruptedError):
            return
        state[2] = state[2][sent:]
        if not state[2]:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._conns.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sock)
        with contextlib.suppress(OSError):
            sock.close()

    @property
    def open_connections(self) -> int:
        """Client sockets open right now (never more than ``max_connections``)."""
        return len(self._conns)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _bounded(func: Callable[[], Any], seconds: float, what: str, log: logging.Logger) -> None:
    """Call ``func`` in a daemon thread and wait at most ``seconds`` (a hung database must not hold the exit)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            func()
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="cscapi-agent-release", daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    if thread.is_alive():
        log.warning("%s did not finish within %.1f s; exiting anyway (it lapses by itself)", what, seconds)
    elif errors:
        log.warning("%s failed: %s", what, errors[0])


# ---- the agent ----------------------------------------------------------------------------------------------------


@dataclass
class _Job:
    name: str
    due: float
    runs: int = 0
    failures: int = 0
    last_ok: datetime | None = None
    last_error: str | None = None
    last_result: dict[str, Any] = field(default_factory=dict)


class Agent:
    """Push, refresh and report in a loop until :meth:`stop`.

    ``client`` is a :class:`cscapi.client.CAPIClient`; ``engine`` an optional
    :class:`cscapi.remediation.RemediationEngine` built on it (no engine: no decision refresh). ``machine_id`` is the
    machine used for metrics (default: ``client.default_machine_id()``).

    Why this size: the public surface is the per-job API (``push_once``, ``lapi_push_once``, ``refresh_once``,
    ``metrics_once``, ``prune_once``, ``run_once``, ``health``, ``health_line``; docs/cli.md shows ``run_once``) on
    top of one loop whose state every job reads and writes under the same rules: the CAPI ban that holds the CAPI
    jobs, the stop and abandon deadlines, the worker thread and its lease keeper, the store-loss check, each job's
    retry delay and last result, which ``health`` reports. The job bodies are 10-35 lines each; moving them to a
    module would leave them taking the agent for that shared state, so they stay methods.
    """

    def __init__(
        self,
        client: Any,
        engine: Any | None = None,
        *,
        config: AgentConfig | None = None,
        machine_id: str | None = None,
        lock: AgentLock | None = None,
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        watcher: Any | None = None,
    ) -> None:
        self.client = client
        self.watcher = watcher  # a cscapi.lapi.LapiWatcher: the lapi signal queue is pushed every push_interval
        self.engine = engine
        self.config = config or AgentConfig()
        self.machine_id = machine_id
        self.lock = lock
        self.log = logger or logging.getLogger("cscapi.agent")
        self.rng = rng or random.SystemRandom()
        self.clock = clock
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._stop_requested: float | None = None
        self._running = False
        self.started_at: datetime | None = None
        self.banned_until: datetime | None = None
        self.in_flight: str | None = None
        self.health_server: HealthServer | None = None
        self._queue_counts: Any = None  # the last count of the signal queue, read by the jobs (see ``health``)
        self.running_job: str | None = None
        self._job_started: float | None = None
        self.abandoned: str | None = None
        """The job abandoned at the last stop (it outlived ``stop_timeout``), or None."""
        self.lost_lock: AlreadyRunningError | None = None
        self._last_repull = float("-inf")
        self.repulls = 0
        now = clock()
        self.jobs: dict[str, _Job] = {"push": _Job("push", now)}
        if watcher is not None:
            self.jobs["lapi_push"] = _Job("lapi_push", now)
        if self.config.refresh_decisions and engine is not None:
            self.jobs["refresh"] = _Job("refresh", now)
        if self.config.push_metrics:
            self.jobs["metrics"] = _Job("metrics", now)
        self.jobs["prune"] = _Job("prune", now + self.config.prune_interval)
        self.jobs["health"] = _Job("health", now + self.config.health_interval)

    # ---- control ----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to return: the job in flight gets until ``stop_timeout - 3`` s after this call, then is
        abandoned; :meth:`run` returns, locks released, within ``stop_timeout`` (safe from a signal handler)."""
        if self._stop_requested is None:
            self._stop_requested = time.monotonic()
        self._stop.set()

    def abandon(self) -> None:
        """Stop now, without waiting for the job in flight (a second SIGTERM); locks are still released."""
        self.stop()
        self._abandon.set()

    @property
    def stop_deadline(self) -> float | None:
        """``time.monotonic()`` by which :meth:`run` returns after a stop request (None before one)."""
        if self._stop_requested is None:
            return None
        return self._stop_requested + self.config.stop_timeout

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, max_iterations: int | None = None) -> None:
        """Run until :meth:`stop` (or ``max_iterations`` actions, for tests). Takes and releases the lock.

        Raises :class:`AlreadyRunningError` (after releasing everything) if another agent took the lease over.
        """
        if self.lock is not None:
            self.lock.acquire()
        self._running = True
        self.started_at = utcnow()
        keeper_stop = threading.Event()
        keeper = None
        try:
            if self.lock is not None and self.lock.path is None:
                keeper = threading.Thread(
                    target=self._keep_lease, args=(keeper_stop,), name="cscapi-agent-lease", daemon=True
                )
                keeper.start()
            if self.config.health_port:
                self.health_server = HealthServer(lambda: self.health(cached_queue=True), self.config.health_port)
                self.log.info("health endpoint on http://127.0.0.1:%d/health", self.health_server.port)
            if self.machine_id is None:
                _done, value = self._in_worker("machine", lambda: self._call("machine", self.client.default_machine_id))
                if isinstance(value, BaseException):
                    raise value
                self.machine_id = value
            if self.machine_id is not None:
                self._loop(max_iterations)
        finally:
            self._running = False
            keeper_stop.set()
            self._release_all(keeper)
        if self.lost_lock is not None:
            raise self.lost_lock

    def _loop(self, max_iterations: int | None) -> None:
        """Wake for whichever job is due next (at least every second), until a stop."""
        self.log.info(
            "agent started for machine %s: push every %s, refresh every %s ± %s, metrics every %s (lock: %s)",
            self.machine_id,
            format_go_duration(self.config.push_interval),
            format_go_duration(self.config.refresh_interval),
            format_go_duration(self.config.refresh_jitter),
            format_go_duration(self.config.metrics_interval),
            self.lock.kind if self.lock else "none",
        )
        iterations = 0
        while not self._stop.is_set():
            self._check_lost_store()
            job = min(self.jobs.values(), key=lambda j: j.due)
            delay = job.due - self.clock()
            if delay > 0:
                if self._stop.wait(min(delay, _WAKE)):
                    break
                continue
            done, _ = self._in_worker(job.name, lambda job=job: self._run_job(job))  # type: ignore[misc]
            if not done:
                break
            iterations += 1
            if max_iterations is not None and iterations >= max_iterations:
                break
        self.log.info("agent stopped after %s", plural(sum(j.runs for j in self.jobs.values()), "action"))

    # ---- bounded work and shutdown ----------------------------------------------------------------------------

    def _in_worker(self, what: str, func: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``func`` in a daemon thread; (True, its result or exception), or (False, None) if it was abandoned
        because a stop request outlived its grace (``stop_timeout - 3`` s) or :meth:`abandon` was called."""
        result: list[Any] = []

        def target() -> None:
            try:
                result.append(func())
            except BaseException as exc:  # handed back to the loop
                result.append(exc)

        worker = threading.Thread(target=target, name=f"cscapi-agent-{what}", daemon=True)
        self.running_job, self._job_started = what, time.monotonic()
        worker.start()
        try:
            while True:
                worker.join(timeout=0.1)
                if not worker.is_alive():
                    return True, result[0] if result else None
                if self._abandon.is_set():
                    break
                if self._stop_requested is not None:
                    grace = max(0.0, self.config.stop_timeout - _RELEASE_RESERVE)
                    if time.monotonic() - self._stop_requested >= grace:
                        break
        except BaseException:  # e.g. KeyboardInterrupt without a signal handler: the job is abandoned too
            self.abandoned = what
            raise
        finally:
            self.running_job, self._job_started = None, None
        self.abandoned = what
        waited = time.monotonic() - (self._stop_requested or time.monotonic())
        self.log.warning(
            "stopping: abandoned the %s in flight after %.1f s (queued signals it claimed are sent again later)",
            what,
            waited,
        )
        return False, None

    def _keep_lease(self, stop: threading.Event) -> None:
        """Renew the agent's lease every ``ttl / 4`` s, whatever the jobs do; a takeover stops the agent at once."""
        assert self.lock is not None
        interval = max(0.05, self.lock.ttl / 4)
        while not stop.wait(interval):
            try:
                self.lock.renew()
            except AlreadyRunningError as exc:
                self.lost_lock = exc
                self.log.error("%s: stopping now (the job in flight is abandoned)", exc.message)
                self.abandon()
                return
            except Exception as exc:  # a bug must not end the renewals silently
                self.log.warning("lease renewal failed (retried in %.0f s): %s", interval, exc)

    def _release_all(self, keeper: threading.Thread | None) -> None:
        """Close the health endpoint and release the engine's refresh lock and the agent's lock, each bounded so
        that the whole stop fits in ``stop_timeout``."""
        deadline = self.stop_deadline or (time.monotonic() + self.config.stop_timeout)

        def left() -> float:
            return max(0.2, deadline - time.monotonic() - 0.5)

        if keeper is not None:
            keeper.join(timeout=min(1.0, left()))
        if self.health_server is not None:
            _bounded(self.health_server.close, left(), "closing the health endpoint", self.log)
            self.health_server = None
        release_locks = getattr(self.engine, "release_locks", None)
        if self.abandoned and callable(release_locks):
            _bounded(release_locks, left(), "releasing the decision store's refresh lock", self.log)
        give_back = getattr(self.client, "release_locks", None)  # the abandoned push's claims, a login lock
        if self.abandoned and callable(give_back):
            _bounded(give_back, left(), "releasing the claims and login lock of the abandoned job", self.log)
        if self.lock is not None:
            _bounded(self.lock.release, left(), "releasing the agent lock", self.log)

    def _check_lost_store(self) -> None:
        """A LOST decision store (it had a version, now has none) is pulled again at once, then at most every
        ``repull_min_interval`` seconds while it keeps being lost."""
        job = self.jobs.get("refresh")
        if job is None or not getattr(self.engine, "store_lost", False):
            return
        now = time.monotonic()
        if now - self._last_repull < self.config.repull_min_interval:
            return
        self._last_repull = now
        self.repulls += 1
        job.due = self.clock()
        self.log.warning("the decision store lost its decisions: pulling them again now (a startup pull)")

    # ---- jobs -------------------------------------------------------------------------------------------------

    def _call(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.in_flight = what
        try:
            return func(*args, **kwargs)
        finally:
            self.in_flight = None

    def _run_job(self, job: _Job) -> None:
        now = self.clock()
        if job.name not in ("health", "lapi_push") and self.banned_until is not None:  # a CAPI ban
            if utcnow() < self.banned_until:
                job.due = now + max(1.0, (self.banned_until - utcnow()).total_seconds())
                return
            self.banned_until = None
        job.runs += 1
        try:
            if job.name == "push":
                job.last_result = self.push_once()
                job.due = now + self.config.push_interval
            elif job.name == "lapi_push":
                job.last_result = self.lapi_push_once()
                job.due = now + self.config.push_interval
            elif job.name == "refresh":
                job.last_result = self.refresh_once()
                job.due = now + self.next_refresh_delay()
            elif job.name == "metrics":
                job.last_result = self.metrics_once()
                job.due = now + self.config.metrics_interval
            elif job.name == "prune":
                job.last_result = self.prune_once()
                job.due = now + self.config.prune_interval
            else:
                self.log.info("health: %s", self.health_line())
                job.due = now + self.config.health_interval
                return
            job.last_ok = utcnow()
            job.last_error = None
        except LoginBannedError as exc:
            self.banned_until = exc.until
            job.failures += 1
            job.last_error = exc.message
            job.due = now + max(1.0, (exc.until - utcnow()).total_seconds())
            self.log.error(
                "%s: login banned by CAPI until %s; every CAPI call pauses until then (signals stay queued)",
                job.name,
                format_rfc3339(exc.until),
            )
        except RefreshTooSoonError as exc:
            wait = max(60.0, (exc.next_allowed_at - utcnow()).total_seconds())
            job.due = now + wait
            job.last_error = None
            self.log.info("refresh: the last pull is recent; next pull in %s", format_go_duration(round(wait)))
        except RefreshInProgressError:
            job.due = now + self.next_refresh_delay()
            job.last_error = None
            self.log.info("refresh: another worker is pulling right now; its decisions reach this store too")
        except RateLimitedError as exc:
            job.failures += 1
            job.last_error = exc.message
            wait = max(exc.retry_after or 0.0, self._retry_delay(job))
            job.due = now + wait
            self.log.warning("%s: rate-limited by CAPI; next try in %s", job.name, format_go_duration(round(wait)))
        except CAPIError as exc:
            job.failures += 1
            job.last_error = exc.message
            wait = self._retry_delay(job)
            job.due = now + wait
            self.log.error(
                "%s failed: %s; next try in %s", job.name, exc.message.rstrip("."), format_go_duration(round(wait))
            )
        except Exception as exc:  # a bug must not take the service down: log it with its traceback, retry later
            job.failures += 1
            job.last_error = f"{type(exc).__name__}: {exc}"
            wait = self._retry_delay(job)
            job.due = now + wait
            self.log.exception(
                "%s failed unexpectedly (please report this bug); next try in %s",
                job.name,
                format_go_duration(round(wait)),
            )

    def _retry_delay(self, job: _Job) -> float:
        if job.name in ("push", "lapi_push"):
            return self.config.push_interval
        if job.name == "refresh" and self.config.min_refresh_interval < MIN_REFRESH_SECONDS:
            # a LAPI: retried from its own cadence up, doubling, at most every 5 min
            return float(min(300, max(5.0, self.config.refresh_interval) * 2 ** min(job.failures - 1, 6)))
        if job.name == "refresh":
            # A failed pull is retried sooner than a full cycle, but never in a tight loop: 5 min, 10, 20 ... 1 h.
            return float(min(3600, 300 * 2 ** min(job.failures - 1, 4)))
        return min(self.config.metrics_interval, 600.0)

    def next_refresh_delay(self) -> float:
        """Seconds until the next pull: the interval moved by a random jitter, never under CAPI's 1 h 30."""
        jitter = self.rng.uniform(-self.config.refresh_jitter, self.config.refresh_jitter)
        floor = min(MIN_REFRESH_SECONDS, max(1.0, self.config.min_refresh_interval))  # CAPI's 1 h 30, or 1 s (LAPI)
        return max(floor, self.config.refresh_interval + jitter)

    def push_once(self) -> dict[str, Any]:
        """Send what is queued (one ``send_signals``); logs one line when something was sent or set aside."""
        report = self._call("push", self.client.send_signals, prune_after_send=False, batch_size=self.config.batch_size)
        result = {
            "sent": int(report.sent),
            "quarantined": int(report.quarantined),
            "batches": int(report.batches),
            "failed_machines": dict(report.failed_machines),
        }
        if report.sent or report.quarantined or report.failed_machines:
            extra = ""
            if report.quarantined:
                extra += (
                    f", {report.quarantined} quarantined (refused by CAPI; see `cscapi signals list --quarantined`)"
                )
            if report.failed_machines:
                reasons = "; ".join(f"{m[:12]}…: {r}" for m, r in report.failed_machines.items())
                extra += f", {plural(len(report.failed_machines), 'machine')} failing ({reasons})"
            level = logging.WARNING if report.failed_machines or report.quarantined else logging.INFO
            sent, batches = plural(report.sent, "signal"), plural(report.batches, "batch", "batches")
            self.log.log(level, "pushed %s in %s%s", sent, batches, extra)
        else:
            self.log.debug("push: nothing queued")
        self._count_queue()  # for the health endpoint, read here in the job's thread
        if self.machine_id is not None:
            # send_signals skips a banned machine's signals (or reports its failure) instead of raising: a login ban
            # must still pause the agent, and be visible in its health.
            machine = self.client.storage.get_machine_by_id(self.machine_id)
            until = getattr(machine, "login_banned_until", None)
            if until is not None and until > utcnow():
                raise LoginBannedError(f"machine {self.machine_id} is banned from logging in", until=until)
        return result

    def lapi_push_once(self) -> dict[str, Any]:
        """Push the lapi signal queue as alerts (one ``LapiWatcher.send_signals``); a LAPI failure is raised (the
        job's retry and log), the signals staying queued."""
        assert self.watcher is not None
        report = self._call("lapi push", self.watcher.send_signals)
        result = {"sent": int(report.sent), "quarantined": int(report.quarantined), "batches": int(report.batches)}
        if report.sent or report.quarantined:
            extra = f", {report.quarantined} quarantined (refused by the LAPI)" if report.quarantined else ""
            level = logging.WARNING if report.quarantined else logging.INFO
            self.log.log(level, "pushed %s to the LAPI%s", plural(report.sent, "alert"), extra)
        for error in report.errors.values():
            raise error
        return result

    def refresh_once(self) -> dict[str, Any]:
        """Pull the decisions stream and the lists into the engine's store; one line with what changed."""
        assert self.engine is not None
        report = self._call("refresh", self.engine.refresh_decisions)
        lists = getattr(report, "lists", {}) or {}
        failed = [name for name, outcome in lists.items() if not getattr(outcome, "ok", True)]
        result: dict[str, Any] = {
            "new": int(getattr(report, "new", 0)),
            "deleted": int(getattr(report, "deleted", 0)),
            "decisions": int(getattr(report, "decisions", 0)),
            "lists": len(lists),
            "failed_lists": failed,
        }
        self.log.log(
            logging.WARNING if failed else logging.INFO,
            "refreshed decisions: %d new, %d deleted, %s%s, %s cached (%.2f s)",
            result["new"],
            result["deleted"],
            plural(result["lists"], "list"),
            f" ({len(failed)} failed: {', '.join(failed)}; their previous content stays)" if failed else "",
            plural(result["decisions"], "decision"),
            float(getattr(report, "seconds", 0.0)),
        )
        return result

    def metrics_once(self) -> dict[str, Any]:
        """Push this machine's metrics, and the engine's usage metrics when there is an engine."""
        assert self.machine_id is not None
        self._call("metrics", self.client.send_metrics, self.machine_id)
        usage = False
        push_usage = getattr(self.engine, "push_usage_metrics", None)
        if callable(push_usage):
            self._call("usage metrics", push_usage)
            usage = True
        self.log.info("pushed metrics%s", " and usage metrics" if usage else "")
        return {"usage_metrics": usage}

    def prune_once(self) -> dict[str, Any]:
        """Delete signals sent more than ``keep_sent`` seconds ago (kept that long for ``cscapi signals list``)."""
        cutoff = utcnow() - timedelta(seconds=self.config.keep_sent)
        removed = int(self._call("prune", self.client.storage.prune, sent_before=cutoff))
        if self.watcher is not None:  # the lapi queue's sent rows too
            removed += int(self._call("prune", self.watcher.storage.prune, sent_before=cutoff, destination="lapi"))
        if removed:
            self.log.info("pruned %s sent before %s", plural(removed, "signal"), format_rfc3339(cutoff))
        self._count_queue()
        return {"pruned": removed}

    def run_once(self) -> dict[str, Any]:
        """Do each job once, now (push, refresh, metrics, prune), with the same error handling; for cron and tests."""
        if self.lock is not None:
            self.lock.acquire()
        self._running = True
        self.started_at = self.started_at or utcnow()
        try:
            if self.machine_id is None:
                self.machine_id = self._call("machine", self.client.default_machine_id)
            for name in ("push", "lapi_push", "refresh", "metrics", "prune"):
                job = self.jobs.get(name)
                if job is not None:
                    self._run_job(job)
            return self.health()
        finally:
            self._running = False
            if self.lock is not None:
                self.lock.release()

    # ---- health -----------------------------------------------------------------------------------------------

    def _count_queue(self) -> Any:
        """Count the signal queue (None when the storage fails) and keep the count for the health endpoint."""
        counts: Any = None
        with contextlib.suppress(Exception):
            counts = self.client.storage.count_signals()
            self._queue_counts = counts
        return counts

    def health(self, *, cached_queue: bool = False) -> dict[str, Any]:
        """A JSON-able health report: ``status`` is ``ok``, ``degraded`` (a job failing or running past
        ``stall_after``, the decision store unreadable or lost, a stop under way), ``banned`` or ``stopped``;
        ``reasons`` says why it is not ``ok``.

        ``cached_queue``: the queue counts as the last job read them (push, prune, the health line) instead of a
        storage read now. The health endpoint asks for that: a hung database must not stall its one thread (the
        job stuck on it shows as running past ``stall_after`` instead)."""
        counts = self._queue_counts if cached_queue else self._count_queue()
        reasons = [f"{j.name} failing: {j.last_error}" for j in self.jobs.values() if j.last_error]
        store = self._store_health()
        if store is not None and store.get("lost"):
            reasons.append(f"decision store lost its decisions: {store['last_sync_error']}")
        elif store is not None and not store["healthy"]:
            reasons.append(f"decision store unreadable: {store['last_sync_error']}")
        running, started = self.running_job, self._job_started
        running_for = None if started is None else round(time.monotonic() - started, 1)
        if running is not None and running_for is not None and running_for > self.config.stall_after:
            reasons.append(
                f"{running} running for {running_for:g} s (longer than stall_after, {self.config.stall_after:g} s)"
            )
        if self.stopping and self._running:
            reasons.append("stopping")
        status = "banned" if self.banned_until else ("degraded" if reasons else "ok")
        if not self._running:
            status = "stopped"
        now = self.clock()
        return {
            "status": status,
            "reasons": reasons,
            "machine_id": self.machine_id,
            "started_at": format_rfc3339(self.started_at) if self.started_at else None,
            "in_flight": self.in_flight,
            "running": None if running is None else {"job": running, "seconds": running_for},
            "login_banned_until": format_rfc3339(self.banned_until) if self.banned_until else None,
            "queue": (
                {
                    "queued": counts.queued,
                    "claimed": counts.claimed,
                    "sent": counts.sent,
                    "quarantined": counts.quarantined,
                }
                if counts is not None
                else None
            ),
            "decision_store": store,
            "jobs": {
                j.name: {
                    "runs": j.runs,
                    "failures": j.failures,
                    "last_ok": format_rfc3339(j.last_ok) if j.last_ok else None,
                    "last_error": j.last_error,
                    "next_in_seconds": round(max(0.0, j.due - now), 1),
                    "last_result": j.last_result,
                }
                for j in self.jobs.values()
                if j.name != "health"
            },
        }

    def _store_health(self) -> dict[str, Any] | None:
        """The remediation engine's view of its decision store (None without an engine that reports it).

        An unreadable store leaves the engine serving the decisions it last read: the agent keeps running, and its
        health says ``degraded`` with the reason, so a probe notices.
        """
        engine = self.engine
        if engine is None or not hasattr(engine, "healthy"):
            return None
        error = getattr(engine, "last_sync_error", None)
        return {
            "healthy": bool(engine.healthy),
            "lost": bool(getattr(engine, "store_lost", False)),
            "version": getattr(engine, "version", None),
            "last_sync_error": getattr(error, "message", None) or (str(error) if error is not None else None),
        }

    def health_line(self) -> str:
        """The health report in one line, for logs."""
        report = self.health()
        queue = report["queue"] or {}
        parts = [f"status={report['status']}"]
        if report["reasons"]:
            parts.append(f"reasons=[{'; '.join(report['reasons'])}]")
        if queue:
            parts.append(f"queued={queue['queued']} sent={queue['sent']} quarantined={queue['quarantined']}")
        store = report["decision_store"]
        if store is not None and not store["healthy"]:
            parts.append(f"decision_store=unreadable ({store['last_sync_error']})")
        for name, job in report["jobs"].items():
            parts.append(f"{name}: runs={job['runs']} failures={job['failures']} next_in={job['next_in_seconds']:g}s")
        if self.started_at:
            parts.append(f"up={format_go_duration(round((utcnow() - self.started_at) / timedelta(seconds=1)))}")
        return " ".join(parts)
