"""``CAPIClientConfig``: how the clients reach CAPI and behave, every value checked when the config is built.

Its own module (httpx's ``_config.py`` pattern) so that ``cscapi.client``, ``cscapi.aio`` and the flows of
``cscapi._core`` all import it without importing each other. The per-setting checks shared with the CLI/agent settings
live in :mod:`cscapi._validators`; the protocol limits and URLs in :mod:`cscapi.limits`. The public path stays
``cscapi.client.CAPIClientConfig``.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import threading
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

import httpx

from cscapi import redact
from cscapi._validators import (
    check_batch_size,
    check_byte_cap,
    check_deadline,
    check_machine_id_prefix,
    check_max_retries,
    check_scenarios,
    check_timeout,
    check_user_agent_prefix,
)
from cscapi.errors import ConfigurationError
from cscapi.iputil import is_loopback_host
from cscapi.limits import DEFAULT_MAX_LINK_BYTES, DEFAULT_MAX_STREAM_BYTES, DEV_URL, MAX_BATCH, PROD_URL
from cscapi.protocol import normalise_base_url, user_agent
from cscapi.transport import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_ERROR_BYTES,
    DEFAULT_MAX_REDIRECTS,
    DEFAULT_MAX_RESPONSE_BYTES,
    TransportSettings,
)

__all__ = ["BASE_URL_ENV", "MAX_LATENCY_OFFSET", "SIGNAL_BATCH_LIMIT", "CAPIClientConfig"]

SIGNAL_BATCH_LIMIT = 5000
"""The legacy default ``batch_size`` of ``prune_failing_machines_signals``: signals read per storage call (a
fetch size, not a POST size)."""

BASE_URL_ENV = "CSCAPI_BASE_URL"
"""When ``base_url`` is not set, this environment variable (if set) gives the CAPI root: point unchanged code at the
emulator with ``CSCAPI_BASE_URL=http://127.0.0.1:8081/``."""


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


def _redact_url(url: str) -> str:
    from cscapi.redact import mask_userinfo  # user info and query secrets, as any parser reads them; never raises

    return mask_userinfo(url)


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
    batch_size: int = MAX_BATCH
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
    max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES
    max_link_bytes: int = DEFAULT_MAX_LINK_BYTES
    max_links: int = 100
    max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES
    max_token_bytes: int = 16 * 1024
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    allow_http_links: bool = False

    def __post_init__(self) -> None:
        self.scenarios = check_scenarios(self.scenarios)
        check_machine_id_prefix(self.machine_id_prefix)
        check_user_agent_prefix(self.user_agent_prefix)
        check_max_retries(self.max_retries)
        _number("latency_offset", self.latency_offset, maximum=MAX_LATENCY_OFFSET)
        check_timeout(self.timeout)
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
        check_deadline(self.deadline)
        check_byte_cap("max_stream_bytes", self.max_stream_bytes)
        check_byte_cap("max_link_bytes", self.max_link_bytes)
        for name in (
            "max_links",
            "max_error_bytes",
            "max_token_bytes",
            "max_response_bytes",
        ):
            _number(name, getattr(self, name), minimum=1, integer=True)
        _number("max_redirects", self.max_redirects, maximum=20, integer=True)
        if not isinstance(self.allow_http_links, bool):
            raise ConfigurationError(f"allow_http_links must be True or False, not {self.allow_http_links!r}.")
        check_batch_size(self.batch_size)
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
    if root.startswith("http:") and not is_loopback_host(host):
        _warn_once(
            config,
            "http",
            f"base_url {redact.mask_url(root)} is plain http to a non-loopback host: credentials and tokens travel "
            "unencrypted. Use https.",
        )
    if config.prod and not config.base_url and os.environ.get(BASE_URL_ENV):
        _warn_once(config, "env", f"prod=True: the {BASE_URL_ENV} environment variable is ignored.")
