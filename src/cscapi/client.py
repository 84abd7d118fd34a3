"""The blocking CAPI client (``CAPIClient``); its configuration ``CAPIClientConfig`` is re-exported from
:mod:`cscapi._config`, its public home stays ``cscapi.client.CAPIClientConfig``.

``CAPIClient`` only drives the flows of :mod:`cscapi._core` with blocking I/O; ``cscapi.aio.AsyncCAPIClient`` drives
the very same flows on an event loop. The names and the positional order of the legacy cscapi 0.7.0 are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from cscapi._config import BASE_URL_ENV, MAX_LATENCY_OFFSET, SIGNAL_BATCH_LIMIT, CAPIClientConfig
from cscapi._core import Core, T
from cscapi._version import __version__ as __version__
from cscapi.limits import DEV_URL, PROD_URL
from cscapi.models import DecisionStream, EnrollOutcome, LinkDownload, Machine, SendReport, Signal
from cscapi.protocol import token_expiry
from cscapi.runtime import Clocks, Flow, run_sync
from cscapi.storage import StorageInterface
from cscapi.timeutil import utcnow
from cscapi.transport import SyncTransport

__all__ = [  # CAPIClientConfig and the three constants are re-exported from cscapi._config
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
        return run_sync(flow, self._transport, sleep=self._sleep, clocks=Clocks(utc=self._clock))

    # ---- signals -----------------------------------------------------------------------------------------

    def add_signals(self, signals: Iterable[Signal], destinations: Sequence[str] | str = ("capi",)) -> int:
        """Validate and queue signals (one storage transaction); returns how many were new (same uuid: once).
        ``destinations``: ``capi`` (this client sends them), ``lapi`` (a ``cscapi.lapi.LapiWatcher`` does) or both."""
        return self._run(self._core.add_signals(signals, destinations))

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

    def release_locks(self) -> int:
        """Give back, now and from any thread, the login locks and the claimed signals that calls in flight hold;
        returns how many holdings were released.

        For a shutdown that abandons a call stuck in I/O (``cscapi run`` after a second SIGTERM): another sender
        takes the signals, or logs in, at once instead of after ``claim_lease`` or ``login_lock_ttl``. The
        abandoned call starts no new POST of the signals given back. Storage errors are logged (the holdings lapse
        by themselves).
        """
        calls = self._core.auth.held.take()
        for call in calls:
            self._core.auth._release_now(call)
        return len(calls)

    def close(self) -> None:
        """Close the HTTP connection pool (the storage stays open: it is yours)."""
        self._transport.close()

    def __enter__(self) -> CAPIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CAPIClient(base_url={self.config.api_root!r}, storage={type(self.storage).__name__})"
