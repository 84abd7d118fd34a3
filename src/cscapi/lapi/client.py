"""``LapiClient`` / ``AsyncLapiClient``: CrowdSec's Local API as a decision source for ``RemediationEngine``.

The flows are written once on the shared effect runtime (:mod:`cscapi.runtime`: ``HttpCall``, ``Sleep``, ``Now``,
``Compute``) and run blocking or on the event loop by its two drivers, like the CAPI client's and the engine's.
Requests and answers are built and read by :mod:`cscapi.lapi.protocol`; the transport (deadlines, size caps, TLS) is
the CAPI client's. The API key is sent as ``X-Api-Key`` and never appears in logs, errors or reprs.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cscapi._validators import (
    check_byte_cap,
    check_cache_duration,
    check_deadline,
    check_max_retries,
    check_timeout,
    check_user_agent_prefix,
)
from cscapi._version import __version__
from cscapi.errors import CAPIError, ConfigurationError, NotFoundError
from cscapi.lapi.geoip import CountryDatabase, expand_countries
from cscapi.lapi.protocol import (
    DEFAULT_SCOPES,
    LapiDecision,
    decisions_request,
    lapi_error_for,
    lapi_failure_error,
    normalise_lapi_url,
    parse_decisions,
    parse_lapi_stream,
    stream_request,
    usage_metrics_request,
)
from cscapi.models import DecisionStream, LinkDownload
from cscapi.protocol.http import NetworkFailure, Request, Response, safe_url
from cscapi.protocol.retry import RetryPolicy
from cscapi.runtime import NOW, Compute, Flow, HttpCall, Sleep, run_async, run_sync
from cscapi.transport import AsyncTransport, SyncTransport, TransportSettings

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_REFRESH_INTERVAL", "AsyncLapiClient", "LapiClient"]

DEFAULT_REFRESH_INTERVAL = 10.0
"""Seconds between two stream pulls when the agent runs a LAPI source (what CrowdSec's bouncers do)."""
DEFAULT_MAX_STREAM_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_DECISIONS_BYTES = 1024 * 1024
_MAX_SKIP_WARNINGS = 20
_LOGGER = logging.getLogger("cscapi.lapi")


def _tls_context(cert: str | None, key: str | None, ca: str | None, verify: bool) -> ssl.SSLContext | bool:
    """The ``verify`` value for the transport: an SSL context when a client certificate or a CA is given."""
    if cert is None and key is None and ca is None:
        return verify
    if (cert is None) != (key is None):
        raise ConfigurationError("cert and key go together: give both the client certificate and its private key.")
    try:
        context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cert is not None and key is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"Cannot load the LAPI TLS files ({type(exc).__name__}: {str(exc)[:160]}).",
            hint="cert and key are PEM files (the bouncer's certificate and key); ca is the PEM CA bundle.",
        ) from None
    return context


def call_lapi(
    retry: RetryPolicy | None, request: Request, what: str, passthrough: tuple[int, ...] = ()
) -> Flow[Response]:
    """Send ``request`` with ``retry`` on network failures, 429 and 5xx (None: one try); the 2xx or ``passthrough``
    ``Response``, else a typed error (shared by the bouncer client and the watcher)."""
    attempt = 0
    while True:
        result: Response | NetworkFailure = yield HttpCall(request)
        if isinstance(result, Response) and (result.ok or result.status_code in passthrough):
            return result
        if retry is not None and retry.should_retry(result, attempt):
            now = yield NOW
            yield Sleep(retry.delay(attempt, result, now))
            attempt += 1
            continue
        if isinstance(result, NetworkFailure):
            raise lapi_failure_error(result, what, attempt + 1)
        raise lapi_error_for(result, what)


def check_transport_options(
    user_agent_prefix: object, timeout: Any, deadline: object, max_retries: object
) -> tuple[Any, float, int]:
    """The CAPI client's own checks (:mod:`cscapi._validators`) on the options every LAPI class shares: a value is
    judged the same way by ``CAPIClientConfig``, the settings, ``LapiClient`` and ``LapiWatcher``."""
    check_user_agent_prefix(user_agent_prefix)
    return check_timeout(timeout), check_deadline(deadline), check_max_retries(max_retries)


class _LapiCore:
    """Settings and flows shared by the sync and the async client (no I/O here)."""

    min_refresh_interval: float = 0.0
    """No CAPI cadence guard: ``RemediationEngine`` reads this and lets a LAPI be pulled as often as wanted."""
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        verify: bool = True,
        user_agent_prefix: str = "",
        timeout: float | httpx.Timeout = 10.0,
        deadline: float = 30.0,
        max_retries: int = 2,
        retry_base_delay: float = 0.5,
        scopes: Sequence[str] = DEFAULT_SCOPES,
        origins: Sequence[str] | None = None,
        scenarios_containing: Sequence[str] | None = None,
        scenarios_not_containing: Sequence[str] | None = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        mode: str = "stream",
        bad_ip_cache_duration: float = 120.0,
        clean_ip_cache_duration: float = 60.0,
        country_db: str | Path | None = None,
        max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES,
        max_response_bytes: int = DEFAULT_MAX_DECISIONS_BYTES,
        logger: logging.Logger | None = None,
    ) -> None:
        self.base_url = normalise_lapi_url(base_url)
        if api_key is not None and (
            not isinstance(api_key, str) or not api_key or not api_key.isprintable() or " " in api_key
        ):
            raise ConfigurationError(
                "api_key must be the bouncer key printed by `cscli bouncers add NAME` (printable, no spaces)."
            )
        if api_key is None and cert is None:
            raise ConfigurationError(
                "LapiClient needs api_key= (from `cscli bouncers add NAME`) or cert= and key= (TLS client auth)."
            )
        if (cert is not None or key is not None) and not self.base_url.startswith("https://"):
            raise ConfigurationError("TLS client authentication (cert/key) needs an https:// base_url.")
        if mode not in ("stream", "live"):
            raise ConfigurationError(f"mode must be 'stream' or 'live' (got {mode!r}).")
        timeout, deadline, max_retries = check_transport_options(user_agent_prefix, timeout, deadline, max_retries)
        interval = refresh_interval
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not interval > 0:
            raise ConfigurationError(f"refresh_interval must be a number of seconds > 0 (got {refresh_interval!r}).")
        bad_ip_cache_duration = check_cache_duration("bad_ip_cache_duration", bad_ip_cache_duration)
        clean_ip_cache_duration = check_cache_duration("clean_ip_cache_duration", clean_ip_cache_duration)
        # the same rule as the settings and CAPIClientConfig: a value they accept is accepted here
        check_byte_cap("max_stream_bytes", max_stream_bytes)
        check_byte_cap("max_response_bytes", max_response_bytes)
        self._api_key = api_key
        self.country_db = None if country_db is None else CountryDatabase(country_db)
        if scopes is DEFAULT_SCOPES and self.country_db is not None:
            scopes = (*DEFAULT_SCOPES, "country")
        scopes = tuple(str(s).strip().lower() for s in scopes)
        if "country" in scopes and self.country_db is None:
            raise ConfigurationError(
                "The country scope needs country_db= (a MaxMind-format country database, e.g. GeoLite2-Country.mmdb)."
            )
        self.auth = "api_key" if api_key is not None else "tls"
        self.scopes = tuple(scopes)
        self.origins = tuple(origins) if origins is not None else None
        self.scenarios_containing = tuple(scenarios_containing) if scenarios_containing is not None else None
        self.scenarios_not_containing = (
            tuple(scenarios_not_containing) if scenarios_not_containing is not None else None
        )
        self.refresh_interval = float(refresh_interval)
        self.mode = mode
        self.bad_ip_cache_duration = float(bad_ip_cache_duration)
        self.clean_ip_cache_duration = float(clean_ip_cache_duration)
        self.max_stream_bytes = max_stream_bytes
        self.max_response_bytes = max_response_bytes
        self.retry = RetryPolicy(max_retries=max_retries, base_delay=retry_base_delay, max_delay=5.0)
        self.logger = logger or _LOGGER
        prefix = f"{user_agent_prefix}-" if user_agent_prefix else ""
        self.settings = TransportSettings(
            user_agent=f"{prefix}cscapi-lapi-bouncer/v{__version__}",
            timeout=timeout,
            verify=_tls_context(cert, key, ca, verify),
            deadline=float(deadline),
            max_response_bytes=max_response_bytes,
        )
        self._metrics_unsupported = False
        self._metrics_lock = threading.Lock()
        # Build the requests once now, so bad filters fail at construction, not at the first refresh.
        stream_request(self.base_url, api_key=None, startup=True, **self._filters(with_scopes=True))

    def _filters(self, *, with_scopes: bool) -> dict[str, Any]:
        filters: dict[str, Any] = {
            "origins": self.origins,
            "scenarios_containing": self.scenarios_containing,
            "scenarios_not_containing": self.scenarios_not_containing,
        }
        if with_scopes:
            filters["scopes"] = self.scopes
        return filters

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={safe_url(self.base_url)!r}, auth={self.auth!r}, mode={self.mode!r})"

    def live_cache(self, store: Any, policy: Any, logger: logging.Logger) -> Any:
        """The engine's live-mode cache (called by ``RemediationEngine`` when ``mode == "live"``)."""
        from cscapi.lapi.live import LiveCache

        return LiveCache(
            self, store, policy, logger, bad_ttl=self.bad_ip_cache_duration, clean_ttl=self.clean_ip_cache_duration
        )

    # ---- flows ---------------------------------------------------------------------------------------------

    def _call(self, request: Request, what: str, *, retries: bool = True) -> Flow[Any]:
        """Send ``request`` with retries on network failures, 429 and 5xx; the 2xx ``Response`` or a typed error."""
        response = yield from call_lapi(self.retry if retries else None, request, what)
        return response

    def _log_skip(self, what: str) -> Any:
        count = 0

        def on_skip(reason: str) -> None:
            nonlocal count
            count += 1
            if count <= _MAX_SKIP_WARNINGS:
                self.logger.warning("LAPI %s: item skipped: %s", what, reason)

        return on_skip

    def _stream_flow(self, startup: bool) -> Flow[Any]:
        if self.mode == "live":  # live mode asks per IP: a refresh pulls nothing
            return DecisionStream(startup=startup)
        request = stream_request(
            self.base_url, api_key=self._api_key, startup=startup, **self._filters(with_scopes=True)
        ).with_limit(self.max_stream_bytes, "max_stream_bytes")
        response = yield from self._call(request, "decisions stream")
        stream: DecisionStream = yield Compute(
            parse_lapi_stream, (response,), {"startup": startup, "on_skip": self._log_skip("decisions stream")}
        )
        if self.country_db is not None and (
            any(d.scope == "country" for d in stream.new) or any(d.scope == "country" for d in stream.deleted)
        ):
            stream = yield Compute(expand_countries, (stream, self.country_db, self.logger))
        if stream.skipped > _MAX_SKIP_WARNINGS:
            self.logger.warning("LAPI decisions stream: %d items skipped in all", stream.skipped)
        return stream

    def _ip_flow(self, ip: str) -> Flow[Any]:
        request = decisions_request(self.base_url, api_key=self._api_key, ip=ip, **self._filters(with_scopes=False))
        response = yield from self._call(request.with_limit(self.max_response_bytes, "max_response_bytes"), "decisions")
        decisions: list[LapiDecision] = parse_decisions(response, on_skip=self._log_skip("decisions"))
        code = self.country_db.country(ip) if self.country_db is not None else None
        if code is not None and "country" in self.scopes:  # and the decisions on the IP's country
            request = decisions_request(
                self.base_url, api_key=self._api_key, country=code, **self._filters(with_scopes=False)
            )
            response = yield from self._call(
                request.with_limit(self.max_response_bytes, "max_response_bytes"), "decisions"
            )
            decisions += parse_decisions(response, on_skip=self._log_skip("decisions"))
        return [d for d in decisions if d.scope in self.scopes]

    def _metrics_flow(self, payload: dict[str, Any]) -> Flow[Any]:
        if self._metrics_unsupported:
            return False
        request = usage_metrics_request(self.base_url, api_key=self._api_key, payload=payload)
        try:
            yield from self._call(request, "usage metrics")
        except NotFoundError:
            with self._metrics_lock:
                first = not self._metrics_unsupported
                self._metrics_unsupported = True
            if first:
                self.logger.info(
                    "LAPI at %s does not accept usage metrics (404, CrowdSec older than 1.6): not pushing them",
                    safe_url(self.base_url),
                )
            return False
        return True


def _no_links(url: str) -> CAPIError:
    return CAPIError(
        f"LAPI decision streams carry no blocklist links (asked for {safe_url(url)}).",
        hint="LAPI merges the lists itself: their decisions come in the stream with origin lists:<name>.",
    )


class LapiClient(_LapiCore):
    """A blocking LAPI bouncer client: ``RemediationEngine(LapiClient(url, api_key=KEY))`` pulls its stream."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._transport = SyncTransport(self.settings)

    def _run(self, flow: Flow[Any]) -> Any:
        return run_sync(flow, self._transport)

    def get_decisions(
        self,
        main_machine_id: str = "",
        *,
        startup: bool = False,
        community_pull: bool = True,
        additional_pull: bool = True,
    ) -> DecisionStream:
        """``GET /v1/decisions/stream``: everything with ``startup``, else what changed since this bouncer's last pull
        (the machine id and pull flags are CAPI's, ignored here)."""
        stream: DecisionStream = self._run(self._stream_flow(startup))
        return stream

    def get_ip_decisions(self, ip: str) -> list[LapiDecision]:
        """``GET /v1/decisions?ip=``: the live decisions on ``ip`` and on the ranges containing it (live mode)."""
        decisions: list[LapiDecision] = self._run(self._ip_flow(ip))
        return decisions

    def download_link(self, url: str, *, if_modified_since: str | None = None) -> LinkDownload:
        """Never called for a LAPI stream (it has no links)."""
        raise _no_links(url)

    def default_machine_id(self) -> str:
        """LAPI bouncers have no machine: a fixed placeholder the engine passes back unused."""
        return "lapi-bouncer"

    def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> None:
        """``POST /v1/usage-metrics``; a LAPI without it (404, 1.4.6) is logged once and skipped from then on."""
        self._run(self._metrics_flow(payload))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> LapiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLapiClient(_LapiCore):
    """The same client on the event loop (same flows, same protocol module)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._transport = AsyncTransport(self.settings)

    async def _run(self, flow: Flow[Any]) -> Any:
        return await run_async(flow, self._transport)

    async def get_decisions(
        self,
        main_machine_id: str = "",
        *,
        startup: bool = False,
        community_pull: bool = True,
        additional_pull: bool = True,
    ) -> DecisionStream:
        """See :meth:`LapiClient.get_decisions`."""
        stream: DecisionStream = await self._run(self._stream_flow(startup))
        return stream

    async def get_ip_decisions(self, ip: str) -> list[LapiDecision]:
        """See :meth:`LapiClient.get_ip_decisions`."""
        decisions: list[LapiDecision] = await self._run(self._ip_flow(ip))
        return decisions

    async def download_link(self, url: str, *, if_modified_since: str | None = None) -> LinkDownload:
        raise _no_links(url)

    async def default_machine_id(self) -> str:
        return "lapi-bouncer"

    async def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> None:
        """See :meth:`LapiClient.push_usage_metrics`."""
        await self._run(self._metrics_flow(payload))

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def close(self) -> None:
        await self.aclose()

    async def __aenter__(self) -> AsyncLapiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
