"""The long-running agent behind ``cscapi run``: push queued signals, refresh decisions, push metrics, forever.

One :class:`Agent` per signal storage (enforced by :class:`AgentLock`). It wakes for whichever job is due next:

* push queued signals every ``push_interval`` seconds (10 s to 10 min, as CAPI asks);
* refresh decisions at start, then every ``refresh_interval`` (2 h by default) moved by a random jitter, never sooner
  than CAPI's 1 h 30 minimum;
* push metrics at start and every ``metrics_interval`` (30 min);
* write a health line (and, with ``health_port``, serve a JSON health report on 127.0.0.1).

Each action logs exactly one line. A failure is logged and retried at the job's next slot; a login ban pauses every
CAPI call until it ends; a 429 waits for the server's ``Retry-After``. :meth:`Agent.stop` (called from a SIGTERM or
SIGINT handler) lets the batch in flight finish, then returns: a batch abandoned by a hard kill is safe too, since its
claim's lease runs out and the signals are sent again, never lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
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
from cscapi.timeutil import format_go_duration, format_rfc3339, utcnow

__all__ = ["Agent", "AgentConfig", "AgentLock", "HealthServer"]

#: CAPI's documented minimum between two decision pulls (1 h 30).
MIN_REFRESH_SECONDS = 5400.0
_LEASE_KEY = "cscapi-agent"


@dataclass
class AgentConfig:
    """When the agent does what. Bounds are checked: CAPI asks for pushes every 10 s to 10 min and pulls >= 1 h 30."""

    push_interval: float = 10.0
    refresh_interval: float = 7200.0
    refresh_jitter: float = 300.0
    metrics_interval: float = 1800.0
    batch_size: int = 50
    health_interval: float = 300.0
    health_port: int = 0
    refresh_decisions: bool = True
    push_metrics: bool = True
    keep_sent: float = 86400.0
    prune_interval: float = 3600.0

    def __post_init__(self) -> None:
        if not 10 <= self.push_interval <= 600:
            raise ConfigurationError(f"push_interval must be between 10 and 600 seconds, not {self.push_interval:g}")
        if self.refresh_interval - self.refresh_jitter < MIN_REFRESH_SECONDS:
            raise ConfigurationError(
                f"refresh_interval - refresh_jitter must be at least {MIN_REFRESH_SECONDS:g} s (CAPI's minimum)",
                hint="Use the defaults: refresh_interval 7200, refresh_jitter 300.",
            )
        if self.refresh_jitter < 0 or min(self.metrics_interval, self.health_interval, self.prune_interval) <= 0:
            raise ConfigurationError("refresh_jitter must be >= 0; metrics, health and prune intervals must be > 0")
        if self.keep_sent < 0:
            raise ConfigurationError("keep_sent must be >= 0 seconds")
        if not 1 <= self.batch_size <= 250:
            raise ConfigurationError(f"batch_size must be between 1 and 250, not {self.batch_size}")
        if not 0 <= self.health_port <= 65535:
            raise ConfigurationError(f"health_port must be between 0 and 65535, not {self.health_port}")


# ---- single instance ----------------------------------------------------------------------------------------------


class AgentLock:
    """One agent per signal storage.

    For a SQLite storage, an exclusive ``flock`` on ``<database>.agent.lock`` (released by the kernel if the process
    dies). For a database server shared by many hosts, a lease row taken with the storage's
    ``acquire_login_lock("cscapi-agent", ...)`` and renewed while the agent runs (it lapses ``ttl`` seconds after a
    crash).
    """

    def __init__(self, storage: Any, storage_uri: str, *, ttl_seconds: float = 120.0, lock_dir: Path | None = None):
        self.storage = storage
        self.storage_uri = storage_uri
        self.ttl = ttl_seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.path = self._lock_path(storage_uri, lock_dir)
        self._fd: int | None = None
        self._lease_until = 0.0

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
        if not self.storage.acquire_login_lock(_LEASE_KEY, self.holder, self.ttl):
            raise AlreadyRunningError(
                "another agent holds the lease on this storage",
                hint=f"Stop it first; a crashed agent's lease lapses after {self.ttl:g} s.",
            )
        self._lease_until = time.monotonic() + self.ttl

    def renew(self) -> None:
        """Keep a database lease alive (a no-op for file locks); raises if another agent took it over."""
        if self.path is not None or time.monotonic() < self._lease_until - self.ttl / 2:
            return
        try:
            self.storage.release_login_lock(_LEASE_KEY, self.holder)
            renewed = self.storage.acquire_login_lock(_LEASE_KEY, self.holder, self.ttl)
        except StorageError:
            if time.monotonic() < self._lease_until:
                return  # the database is briefly unreachable: the lease still holds, try again after the next job
            raise AlreadyRunningError(
                "the agent's lease on the storage ran out while the database was unreachable",
                hint="Another agent may have taken over; restart this one once the database is back.",
            ) from None
        if not renewed:
            raise AlreadyRunningError("another agent took over this storage's lease")
        self._lease_until = time.monotonic() + self.ttl

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif self.path is None and self._lease_until:
            with contextlib.suppress(CAPIError):
                self.storage.release_login_lock(_LEASE_KEY, self.holder)
            self._lease_until = 0.0


# ---- health -------------------------------------------------------------------------------------------------------


class HealthServer:
    """A tiny JSON health endpoint on loopback (``GET /`` or ``/health``): 200 when healthy, 503 when not."""

    def __init__(self, report: Callable[[], dict[str, Any]], port: int, host: str = "127.0.0.1") -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigurationError(f"the health endpoint only listens on loopback, not {host!r}")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/", "/health", "/healthz"):
                    self.send_error(404)
                    return
                body = report()
                data = json.dumps(body, default=str).encode()
                self.send_response(200 if body.get("status") == "ok" else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve health on {host}:{port}: {exc.strerror}", hint="Choose another --health-port."
            ) from None
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="cscapi-health", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


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
    ) -> None:
        self.client = client
        self.engine = engine
        self.config = config or AgentConfig()
        self.machine_id = machine_id
        self.lock = lock
        self.log = logger or logging.getLogger("cscapi.agent")
        self.rng = rng or random.SystemRandom()
        self.clock = clock
        self._stop = threading.Event()
        self._running = False
        self.started_at: datetime | None = None
        self.banned_until: datetime | None = None
        self.in_flight: str | None = None
        self.health_server: HealthServer | None = None
        now = clock()
        self.jobs: dict[str, _Job] = {"push": _Job("push", now)}
        if self.config.refresh_decisions and engine is not None:
            self.jobs["refresh"] = _Job("refresh", now)
        if self.config.push_metrics:
            self.jobs["metrics"] = _Job("metrics", now)
        self.jobs["prune"] = _Job("prune", now + self.config.prune_interval)
        self.jobs["health"] = _Job("health", now + self.config.health_interval)

    # ---- control ----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to return after the action in flight (safe to call from a signal handler or a thread)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, max_iterations: int | None = None) -> None:
        """Run until :meth:`stop` (or ``max_iterations`` actions, for tests). Takes and releases the lock."""
        if self.lock is not None:
            self.lock.acquire()
        self._running = True
        self.started_at = utcnow()
        try:
            if self.config.health_port:
                self.health_server = HealthServer(self.health, self.config.health_port)
                self.log.info("health endpoint on http://127.0.0.1:%d/health", self.health_server.port)
            if self.machine_id is None:
                self.machine_id = self._call("machine", self.client.default_machine_id)
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
                job = min(self.jobs.values(), key=lambda j: j.due)
                delay = job.due - self.clock()
                if delay > 0 and self._stop.wait(delay):
                    break
                self._run_job(job)
                iterations += 1
                if max_iterations is not None and iterations >= max_iterations:
                    break
                if self.lock is not None:
                    self.lock.renew()
            self.log.info("agent stopped after %d actions", sum(j.runs for j in self.jobs.values()))
        finally:
            self._running = False
            if self.health_server is not None:
                self.health_server.close()
                self.health_server = None
            if self.lock is not None:
                self.lock.release()

    # ---- jobs -------------------------------------------------------------------------------------------------

    def _call(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.in_flight = what
        try:
            return func(*args, **kwargs)
        finally:
            self.in_flight = None

    def _run_job(self, job: _Job) -> None:
        now = self.clock()
        if job.name != "health" and self.banned_until is not None:
            if utcnow() < self.banned_until:
                job.due = now + max(1.0, (self.banned_until - utcnow()).total_seconds())
                return
            self.banned_until = None
        job.runs += 1
        try:
            if job.name == "push":
                job.last_result = self.push_once()
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
        if job.name == "push":
            return self.config.push_interval
        if job.name == "refresh":
            # A failed pull is retried sooner than a full cycle, but never in a tight loop: 5 min, 10, 20 ... 1 h.
            return float(min(3600, 300 * 2 ** min(job.failures - 1, 4)))
        return min(self.config.metrics_interval, 600.0)

    def next_refresh_delay(self) -> float:
        """Seconds until the next pull: the interval moved by a random jitter, never under CAPI's 1 h 30."""
        jitter = self.rng.uniform(-self.config.refresh_jitter, self.config.refresh_jitter)
        return max(MIN_REFRESH_SECONDS, self.config.refresh_interval + jitter)

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
                extra += f", {len(report.failed_machines)} machine(s) failing ({reasons})"
            level = logging.WARNING if report.failed_machines or report.quarantined else logging.INFO
            self.log.log(level, "pushed %d signals in %d batches%s", report.sent, report.batches, extra)
        else:
            self.log.debug("push: nothing queued")
        if self.machine_id is not None:
            # send_signals skips a banned machine's signals (or reports its failure) instead of raising: a login ban
            # must still pause the agent, and be visible in its health.
            machine = self.client.storage.get_machine_by_id(self.machine_id)
            until = getattr(machine, "login_banned_until", None)
            if until is not None and until > utcnow():
                raise LoginBannedError(f"machine {self.machine_id} is banned from logging in", until=until)
        return result

    def refresh_once(self) -> dict[str, Any]:
        """Pull the decisions stream and the lists into the engine's store; one line with what changed."""
        assert self.engine is not None
        report = self._call("refresh", self.engine.refresh_decisions)
        lists = getattr(report, "lists", {}) or {}
        failed = [name for name, outcome in lists.items() if not getattr(outcome, "ok", True)]
        result = {
            "new": int(getattr(report, "new", 0)),
            "deleted": int(getattr(report, "deleted", 0)),
            "decisions": int(getattr(report, "decisions", 0)),
            "lists": len(lists),
            "failed_lists": failed,
        }
        self.log.log(
            logging.WARNING if failed else logging.INFO,
            "refreshed decisions: %d new, %d deleted, %d lists%s, %d decisions cached (%.2f s)",
            result["new"],
            result["deleted"],
            result["lists"],
            f" ({len(failed)} failed: {', '.join(failed)}; their previous content stays)" if failed else "",
            result["decisions"],
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
        if removed:
            self.log.info("pruned %d signals sent before %s", removed, format_rfc3339(cutoff))
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
            for name in ("push", "refresh", "metrics", "prune"):
                job = self.jobs.get(name)
                if job is not None:
                    self._run_job(job)
            return self.health()
        finally:
            self._running = False
            if self.lock is not None:
                self.lock.release()

    # ---- health -----------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """A JSON-able health report: ``status`` is ``ok``, ``degraded`` (a job failing) or ``banned``."""
        counts: Any = None
        with contextlib.suppress(Exception):
            counts = self.client.storage.count_signals()
        failing = [j.name for j in self.jobs.values() if j.last_error]
        store = self._store_health()
        unhealthy = store is not None and not store["healthy"]
        status = "banned" if self.banned_until else ("degraded" if failing or unhealthy else "ok")
        if not self._running:
            status = "stopped"
        now = self.clock()
        return {
            "status": status,
            "machine_id": self.machine_id,
            "started_at": format_rfc3339(self.started_at) if self.started_at else None,
            "in_flight": self.in_flight,
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
            "version": getattr(engine, "version", None),
            "last_sync_error": getattr(error, "message", None) or (str(error) if error is not None else None),
        }

    def health_line(self) -> str:
        """The health report in one line, for logs."""
        report = self.health()
        queue = report["queue"] or {}
        parts = [f"status={report['status']}"]
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
