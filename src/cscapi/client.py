"""The blocking CAPI client (``CAPIClient``) and its configuration (``CAPIClientConfig``).

``CAPIClient`` only drives the flows of :mod:`cscapi._core` with blocking I/O; ``cscapi.aio.AsyncCAPIClient`` drives
the very same flows on an event loop. The names and the positional order of the legacy cscapi 0.7.0 are kept.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from cscapi import redact
from cscapi._core import MAX_BATCH_SIZE, Core, Flow, T, run_sync
from cscapi._version import __version__ as __version__
from cscapi.errors import ConfigurationError, ValidationError
from cscapi.machines import validate_machine_id_prefix
from cscapi.models import DecisionStream, EnrollOutcome, LinkDownload, Machine, SendReport, Signal
from cscapi.protocol import DEV_URL, PROD_URL, normalise_base_url, token_expiry, user_agent
from cscapi.signals import validate_scenarios
from cscapi.storage import StorageInterface
from cscapi.timeutil import utcnow
from cscapi.transport import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_ERROR_BYTES,
    DEFAULT_MAX_REDIRECTS,
    DEFAULT_MAX_RESPONSE_BYTES,
    SyncTransport,
    TransportSettings,
)

__all__ = [
    "BASE_URL_ENV",
    "CAPI_BASE_DEV_URL",
    "CAPI_BASE_URL",
    "MAX_LATENCY_OFFSET",
    "SIGNAL_BATCH_LIMIT",
    "CAPIClient",
    "CAPIClientConfig",
    "has_valid_token",
]

# Legacy 0.7.0 module constants, kept so that code importing them runs unchanged.
CAPI_BASE_URL = PROD_URL + "v3"
CAPI_BASE_DEV_URL = DEV_URL + "v3"
CAPI_WATCHER_REGISTER_ENDPOINT = "/watchers"
CAPI_WATCHER_LOGIN_ENDPOINT = "/watchers/login"
CAPI_ENROLL_ENDPOINT = "/watchers/enroll"
CAPI_SIGNALS_ENDPOINT = "/signals"
CAPI_DECISIONS_ENDPOINT = "/decisions/stream"
CAPI_METRICS_ENDPOINT = "/metrics"
SIGNAL_BATCH_LIMIT = 5000
"""The legacy default ``batch_size``: signals read per storage call (at most 250 still go in one POST)."""


def has_valid_token(machine: Machine, latency_offset: float = 10, logger: logging.Logger | None = None) -> bool:
    """Legacy 0.7.0 helper: True when the machine's token (its JWT ``exp``, else ``token_expires_at``) is valid for
    more than ``latency_offset`` seconds. 0.7.0 accepted a token up to ``latency_offset`` s *after* it expired; this
    is the corrected rule the client itself uses."""
    if not machine.token:
        return False
    expires = token_expiry(machine.token) or machine.token_expires_at
    valid = expires is not None and utcnow() < expires - timedelta(seconds=float(latency_offset))
    (logger or logging.getLogger("cscapi")).debug("token of machine %s valid: %s", machine.machine_id, valid)
    return valid


BASE_URL_ENV = "CSCAPI_BASE_URL"
"""When ``base_url`` is not set, this environment variable (if set) gives the CAPI root: point unchanged code at the
emulator with ``CSCAPI_BASE_URL=http://127.0.0.1:8081/``."""

_UA_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


MAX_LATENCY_OFFSET = 3600.0
"""``latency_offset`` above an hour would make most tokens look expired at once: a login on every call."""


def _number(
    name: str, value: object, *, minimum: float = 0.0, maximum: float | None = None, integer: bool = False
) -> None:
    """Refuse anything but a finite int (or float) within ``[minimum, maximum]``, naming the field."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or not math.isfinite(value)  # type: ignore[arg-type]
        or value < minimum  # type: ignore[operator]
        or (maximum is not None and value > maximum)  # type: ignore[operator]
    ):
        what = "an integer" if integer else "a number"
        bounds = f"from {minimum:g} to {maximum:g}" if maximum is not None else f">= {minimum:g}"
        raise ConfigurationError(f"{name} must be {what} {bounds}, not {value!r}.")


def _timeout(value: object) -> None:
    """``timeout``: a positive number of seconds, or an ``httpx.Timeout`` whose set parts are positive."""
    if isinstance(value, httpx.Timeout):
        for part in ("connect", "read", "write", "pool"):
            seconds = getattr(value, part)
            if seconds is not None and (not math.isfinite(seconds) or seconds <= 0):
                raise ConfigurationError(
                    f"timeout.{part} must be a positive number of seconds (or None), not {seconds!r}."
                )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"timeout must be a positive number of seconds or an httpx.Timeout, not {value!r}.",
            hint="e.g. timeout=30 or timeout=httpx.Timeout(30, connect=5); a request that gets no answer in time "
            "is retried, then raises TransportError.",
        )


def _redact_url(url: str) -> str:
    from cscapi.redact import mask_url  # the password as any parser reads it ('/', '?', '#' in it) and query secrets

    parts = urlsplit(mask_url(url))
    if "@" not in parts.netloc:
        return parts.geturl()
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


@dataclass(repr=False)
class CAPIClientConfig:
    """How to reach CAPI and how to behave. Every value is checked when the config is built.

    The first seven fields keep the legacy cscapi 0.7.0 order. ``base_url`` (or the ``CSCAPI_BASE_URL`` environment
    variable) overrides ``prod``; ``prod=False`` means CrowdSec's *dev* CAPI, as the legacy SDK documented.
    """

    scenarios: list[str]
    prod: bool = False
    user_agent_prefix: str = ""
    max_retries: int = 3
    latency_offset: float = 10
    retry_delay: float = 5
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("cscapi"))
    base_url: str | None = None
    api_version: str = "v3"
    timeout: float | httpx.Timeout = 30.0
    proxy: str | None = None
    verify: bool | str | ssl.SSLContext = True
    transport: Any = None
    async_transport: Any = None
    batch_size: int = MAX_BATCH_SIZE
    machine_id_prefix: str = ""
    failing_cooldown: float = 300.0
    claim_lease: float = 300.0
    send_metrics_after_login: bool = True
    gzip_threshold: int = 5120
    max_backoff: float = 60.0
    max_retry_after: float = 120.0
    login_lock_ttl: float = 60.0
    #: Interactive use (the ``cscapi`` commands): no retry after a connection error on a request's first try, nor
    #: after a refused connection on loopback (nothing listens: say so at once). False keeps the backoff.
    fail_fast_connect: bool = False
    #: Limits and deadlines (docs/client.md, "Limits and deadlines"): total seconds per request, redirects included;
    #: decompressed byte caps; links per stream; redirects per link; plain-http links from an https CAPI.
    deadline: float = DEFAULT_DEADLINE
    max_stream_bytes: int = 256 * 1024 * 1024
    max_link_bytes: int = 64 * 1024 * 1024
    max_links: int = 100
    max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES
    max_token_bytes: int = 16 * 1024
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    allow_http_links: bool = False

    def __post_init__(self) -> None:
        try:
            self.scenarios = validate_scenarios(self.scenarios)
            validate_machine_id_prefix(self.machine_id_prefix, "machine_id_prefix")
        except ValidationError as exc:
            raise ConfigurationError(exc.message, hint=exc.hint) from None
        if (
            not isinstance(self.user_agent_prefix, str)
            or len(self.user_agent_prefix) > 64
            or not set(self.user_agent_prefix) <= _UA_PREFIX_CHARS
        ):
            raise ConfigurationError(
                f"user_agent_prefix {self.user_agent_prefix!r} is invalid: use at most 64 letters, digits, '.', '_' "
                "or '-'."
            )
        _number("max_retries", self.max_retries, integer=True)
        if self.max_retries > 20:
            raise ConfigurationError(f"max_retries must be at most 20, not {self.max_retries}.")
        _number("latency_offset", self.latency_offset, maximum=MAX_LATENCY_OFFSET)
        _timeout(self.timeout)
        for name in (
            "retry_delay",
            "failing_cooldown",
            "max_backoff",
            "max_retry_after",
        ):
            _number(name, getattr(self, name))
        _number("claim_lease", self.claim_lease, minimum=0.001)
        _number("login_lock_ttl", self.login_lock_ttl, minimum=0.001)
        _number("gzip_threshold", self.gzip_threshold, integer=True)
        _number("deadline", self.deadline, minimum=0.001)
        for name in (
            "max_stream_bytes",
            "max_link_bytes",
            "max_links",
            "max_error_bytes",
            "max_token_bytes",
            "max_response_bytes",
        ):
            _number(name, getattr(self, name), minimum=1, integer=True)
        _number("max_redirects", self.max_redirects, maximum=20, integer=True)
        if not isinstance(self.allow_http_links, bool):
            raise ConfigurationError(f"allow_http_links must be True or False, not {self.allow_http_links!r}.")
        if (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or not (1 <= self.batch_size <= MAX_BATCH_SIZE)
        ):
            raise ConfigurationError(
                f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE}, not {self.batch_size!r}."
            )
        if not isinstance(self.verify, (bool, str, ssl.SSLContext)):
            raise ConfigurationError("verify must be True, False, a CA bundle path or an ssl.SSLContext.")
        if isinstance(self.verify, str) and not os.path.exists(self.verify):
            raise ConfigurationError(f"verify names a CA bundle that does not exist: {self.verify!r}.")
        if self.api_version not in ("v3",):
            raise ConfigurationError(f"api_version {self.api_version!r} is not supported; use 'v3'.")
        if not isinstance(self.logger, logging.Logger):
            raise ConfigurationError("logger must be a logging.Logger.")
        _warn_insecure(self)  # validates base_url / CSCAPI_BASE_URL now, not at the first request

    @property
    def api_root(self) -> str:
        """The CAPI root URL in use: ``base_url``, else prod CAPI if ``prod=True``, else ``$CSCAPI_BASE_URL``, else
        dev CAPI. An explicit ``prod=True`` beats the environment variable (a warning says it is ignored)."""
        env = None if self.prod else os.environ.get(BASE_URL_ENV)
        url = self.base_url or env or (PROD_URL if self.prod else DEV_URL)
        return normalise_base_url(url, self.api_version)

    @property
    def user_agent(self) -> str:
        """``{prefix}-capi-py-sdk/{version}`` or ``capi-py-sdk/{version}``."""
        return user_agent(self.user_agent_prefix)

    def transport_settings(self) -> TransportSettings:
        """What the httpx clients are built from."""
        return TransportSettings(
            user_agent=self.user_agent,
            timeout=self.timeout,
            proxy=self.proxy,
            verify=self.verify,
            transport=self.transport,
            async_transport=self.async_transport,
            deadline=float(self.deadline),
            max_response_bytes=self.max_response_bytes,
            max_error_bytes=self.max_error_bytes,
            max_redirects=self.max_redirects,
        )

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "logger":
                value = value.name
            elif f.name in ("transport", "async_transport"):
                value = type(value).__name__ if value is not None else None
            elif f.name == "proxy" and value:
                value = _redact_url(value)
            elif f.name == "verify" and isinstance(value, ssl.SSLContext):
                value = "SSLContext"
            shown.append(f"{f.name}={value!r}")
        return f"CAPIClientConfig({', '.join(shown)})"


_WARNED: set[tuple[str, str]] = set()  # (what, URL): each insecure setting is logged once per process
_WARNED_LOCK = threading.Lock()


def _warn_once(config: CAPIClientConfig, what: str, message: str) -> None:
    key = (what, config.api_root)
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    config.logger.warning(message)


def _warn_insecure(config: CAPIClientConfig) -> None:
    """Log (once per process and URL) a config that weakens transport security: no TLS verification, plain http
    to a non-loopback host, or a ``CSCAPI_BASE_URL`` ignored because ``prod=True``."""
    root = config.api_root
    if config.verify is False and root.startswith("https:"):
        _warn_once(
            config,
            "verify",
            f"TLS verification is OFF for {redact.mask_url(root)}: anyone on the path can read and change the "
            "traffic (tokens included). Use verify=<CA bundle path> for a private CA instead.",
        )
    host = urlsplit(root).hostname or ""
    if root.startswith("http:") and not _loopback(host):
        _warn_once(
            config,
            "http",
            f"base_url {redact.mask_url(root)} is plain http to a non-loopback host: credentials and tokens travel "
            "unencrypted. Use https.",
        )
    if config.prod and not config.base_url and os.environ.get(BASE_URL_ENV):
        _warn_once(config, "env", f"prod=True: the {BASE_URL_ENV} environment variable is ignored.")


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class CAPIClient:
    """Share signals with CAPI and pull its decisions, blocking. Safe to share between threads.

    ``storage`` keeps the signal queue and the machines' credentials (``cscapi.sql_storage.SQLStorage``); the
    client never closes it. ``close()`` (or ``with``) closes the HTTP connection pool.
    """

    def __init__(self, storage: StorageInterface, config: CAPIClientConfig) -> None:
        self._core = Core(storage, config)  # validates both arguments
        self.storage = storage
        self.config = config
        self.logger = config.logger
        self._transport = SyncTransport(config.transport_settings())
        self._sleep: Callable[[float], None] = time.sleep
        self._clock: Callable[[], datetime] = utcnow

    def _run(self, flow: Flow[T]) -> T:
        return run_sync(flow, self._transport, sleep=self._sleep, clock=self._clock)

    # ---- signals -----------------------------------------------------------------------------------------

    def add_signals(self, signals: Iterable[Signal]) -> int:
        """Validate and queue signals (one storage transaction); returns how many were new (same uuid: once)."""
        return self._run(self._core.add_signals(signals))

    def send_signals(self, prune_after_send: bool = True, batch_size: int | None = None) -> SendReport:
        """Send every queued signal (≤ ``batch_size`` per POST, 250 at most).

        The report is an ``int``, the number accepted, as in 0.7.0; its attributes say what happened per machine.
        """
        return self._run(self._core.send_signals(prune_after_send, batch_size))

    def prune_failing_machines_signals(self, batch_size: int = SIGNAL_BATCH_LIMIT) -> int:
        """Delete the queued signals of machines that are failing right now; returns how many (an ``int``)."""
        return self._run(self._core.prune_failing_machines_signals(batch_size))

    # ---- decisions -----------------------------------------------------------------------------------------

    def get_decisions(
        self,
        main_machine_id: str,
        scenarios: Sequence[str] | None = None,
        *,
        startup: bool = False,
        community_pull: bool = True,
        additional_pull: bool = True,
    ) -> DecisionStream:
        """Pull the decisions stream as ``main_machine_id`` (registered and logged in as needed).

        The result is a ``dict`` of the JSON as received, as in 0.7.0, with its typed reading as attributes.
        """
        return self._run(
            self._core.get_decisions(
                main_machine_id,
                scenarios,
                startup=startup,
                community_pull=community_pull,
                additional_pull=additional_pull,
            )
        )

    def download_link(self, url: str, *, if_modified_since: datetime | str | None = None) -> LinkDownload:
        """Download a blocklist or allowlist link (no Authorization header); 304 gives ``not_modified=True``."""
        return self._run(self._core.download_link(url, if_modified_since))

    def delete_decisions(self, machine_id: str, uuids: Sequence[str]) -> None:
        """Tell CAPI these decisions were deleted locally."""
        self._run(self._core.delete_decisions(machine_id, uuids))

    # ---- machines --------------------------------------------------------------------------------------------

    def enroll_machines(
        self,
        machine_ids: Sequence[str],
        name: str | None,
        attachment_key: str,
        tags: Sequence[str] | None,
        overwrite: bool = False,
    ) -> list[EnrollOutcome]:
        """Enroll machines into the CrowdSec console; one :class:`EnrollOutcome` per machine."""
        return self._run(self._core.enroll_machines(machine_ids, name, attachment_key, tags, overwrite))

    def register_machine(self, machine_id: str | None = None, password: str | None = None) -> Machine:
        """Register a machine (id and password generated when absent); an already registered one is returned."""
        return self._run(self._core.register_machine(machine_id, password))

    def login(self, machine_id: str, *, force: bool = False) -> Machine:
        """A machine with a valid token: the stored one until ``exp - latency_offset``, else a new login."""
        return self._run(self._core.login(machine_id, force=force))

    def default_machine_id(self) -> str:
        """The first stored machine's id, or a newly generated and registered machine's."""
        return self._run(self._core.default_machine_id())

    def clear_login_ban(self, machine_id: str) -> bool:
        """Forget the machine's stored login ban (and a refused login's cool-down); True if there was one.

        CAPI's own ban is not lifted: use this only when you know CAPI accepts the machine's logins again.
        """
        return self._run(self._core.clear_login_ban(machine_id))

    def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> None:
        """``POST /v3/usage-metrics`` with an ``AllMetrics`` dict."""
        self._run(self._core.push_usage_metrics(machine_id, payload))

    def send_metrics(self, machine_id: str) -> None:
        """``POST /v3/metrics`` describing this SDK."""
        self._run(self._core.send_metrics(machine_id))

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connection pool (the storage stays open: it is yours)."""
        self._transport.close()

    def __enter__(self) -> CAPIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CAPIClient(base_url={self.config.api_root!r}, storage={type(self.storage).__name__})"
