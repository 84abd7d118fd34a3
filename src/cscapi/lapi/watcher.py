"""``LapiWatcher`` / ``AsyncLapiWatcher``: a local CrowdSec engine's Local API as the destination of detections.

The same ``Signal``s the CAPI client queues (``create_signal``) are queued for the ``lapi`` destination of the ONE
durable signal queue (``SQLStorage``: a row per destination, see ``docs/storage.md``) and pushed as alerts to
``POST /v1/alerts`` with the CAPI queue's guarantees: claims under a lease (never two senders on one signal), a lease
extended before a POST when half of it is gone, a POST whose deadline ends before the lease does, marked sent only
after LAPI answered 201 (at least once), a refused (400) batch bisected down to the signals to quarantine. The
machine logs in with ``POST /v1/watchers/login`` (id + password from ``cscli machines add``, or a TLS client
certificate); the token is reused until it expires, and a 401 triggers one new login. The flows are written once on
:mod:`cscapi.runtime`; the transport (deadline, size caps, TLS) is the CAPI client's. The password and the token are
never in logs, errors or reprs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cscapi._version import __version__
from cscapi.errors import AuthenticationError, CAPIError, ConfigurationError, StorageError
from cscapi.flows.signals import _Batch
from cscapi.lapi.alerts import alert_from_signal, alerts_request, login_request, parse_login
from cscapi.lapi.client import _tls_context, call_lapi, check_transport_options
from cscapi.lapi.protocol import lapi_error_for, normalise_lapi_url
from cscapi.models import SendReport, SendTally, Signal
from cscapi.protocol.http import Request, Response, safe_url
from cscapi.protocol.retry import RetryPolicy
from cscapi.runtime import NOW, Flow, StorageCall, run_async, run_sync
from cscapi.signals import as_signal_list, validate_signals
from cscapi.storage import Claim, check_storage, require_destinations
from cscapi.transport import AsyncTransport, SyncTransport, TransportSettings

if TYPE_CHECKING:
    import httpx

__all__ = ["AsyncLapiWatcher", "LapiWatcher"]

LAPI = "lapi"
_LOGGER = logging.getLogger("cscapi.lapi")
_CLAIM_BATCHES = 4  # claim up to 4 POSTs' worth of signals per storage round trip
_TOKEN_MARGIN = timedelta(seconds=60)  # log in again this long before the token's expiry
_REFUSED = (400, 413, 422)
_AUTH_HINT = (
    "LAPI refused the watcher's credentials: check the machine id and password (`cscli machines list`; "
    "`cscli machines add NAME --password ...` registers one) or the TLS client certificate (agents' OU)."
)


class _WatcherCore:
    """Settings and flows shared by the sync and the async watcher (no I/O here)."""

    def __init__(
        self,
        base_url: str,
        storage: Any,
        *,
        machine_id: str | None = None,
        password: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        verify: bool = True,
        scenarios: Sequence[str] = (),
        user_agent_prefix: str = "",
        timeout: float | httpx.Timeout = 10.0,
        deadline: float = 30.0,
        max_retries: int = 2,
        retry_base_delay: float = 0.5,
        batch_size: int = 100,
        claim_lease: float = 120.0,
        events_count: int = 1,
        capacity: int = 0,
        leakspeed: str = "0s",
        max_response_bytes: int = 1024 * 1024,
        logger: logging.Logger | None = None,
    ) -> None:
        self.base_url = normalise_lapi_url(base_url)
        if cert is None and key is None:
            if not machine_id or not password:
                raise ConfigurationError(
                    "LapiWatcher needs machine_id= and password= (from `cscli machines add NAME --password ...`) "
                    "or cert= and key= (TLS client authentication)."
                )
        elif not self.base_url.startswith("https://"):
            raise ConfigurationError("TLS client authentication (cert/key) needs an https:// base_url.")
        for name, text in (("machine_id", machine_id), ("password", password)):
            if text is not None and (not isinstance(text, str) or not text.isprintable()):
                raise ConfigurationError(f"{name} must be a printable string.")
        timeout, deadline, max_retries = check_transport_options(user_agent_prefix, timeout, deadline, max_retries)
        if not isinstance(claim_lease, (int, float)) or isinstance(claim_lease, bool) or not claim_lease > 0:
            raise ConfigurationError(f"claim_lease must be a number of seconds > 0 (got {claim_lease!r}).")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 1000:
            raise ConfigurationError(f"batch_size must be an int from 1 to 1000 (got {batch_size!r}).")
        self.storage = check_storage(storage)
        require_destinations(self.storage)
        self.machine_id = machine_id if cert is None else None
        self._password = password if cert is None else None
        self.auth = "password" if cert is None else "tls"
        self.scenarios = tuple(str(s) for s in scenarios)
        self.batch_size = batch_size
        self.claim_lease = float(claim_lease)
        self.events_count, self.capacity, self.leakspeed = int(events_count), int(capacity), str(leakspeed)
        self.retry = RetryPolicy(max_retries=max_retries, base_delay=retry_base_delay, max_delay=5.0)
        self.logger = logger or _LOGGER
        prefix = f"{user_agent_prefix}-" if user_agent_prefix else ""
        self.settings = TransportSettings(
            user_agent=f"{prefix}cscapi-lapi-watcher/v{__version__}",
            timeout=timeout,
            verify=_tls_context(cert, key, ca, verify),
            deadline=float(deadline),
            max_response_bytes=max_response_bytes,
        )
        self._token: str | None = None
        self._token_expires: datetime | None = None
        self._token_lock = threading.Lock()

    @property
    def label(self) -> str:
        """The key of this watcher in a ``SendReport``'s ``errors``: the machine id, or ``tls`` for a certificate."""
        return self.machine_id or "tls"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={safe_url(self.base_url)!r}, machine_id={self.machine_id!r})"

    # ---- flows ---------------------------------------------------------------------------------------------

    def _call(self, request: Request, what: str, passthrough: tuple[int, ...] = ()) -> Flow[Response]:
        """Send with retries on network failures, 429 and 5xx; a 2xx or ``passthrough`` answer, else a typed error."""
        response = yield from call_lapi(self.retry, request, what, passthrough)
        return response

    def _login_flow(self) -> Flow[str]:
        request = login_request(self.base_url, self.machine_id, self._password, self.scenarios)
        try:
            response = yield from self._call(request, "watcher login")
        except AuthenticationError as exc:
            raise AuthenticationError(
                exc.message.split(": ", 1)[0] + f" (machine {self.label}).",
                status_code=exc.status_code,
                hint=_AUTH_HINT,
            ) from None
        token, expires = parse_login(response)
        with self._token_lock:
            self._token, self._token_expires = token, expires
        return token

    def _token_flow(self) -> Flow[str]:
        now: datetime = yield NOW
        with self._token_lock:
            token, expires = self._token, self._token_expires
        if token is not None and (expires is None or now < expires - _TOKEN_MARGIN):
            return token
        token = yield from self._login_flow()
        return token

    def _forget_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    def _push_flow(self, alerts: list[dict[str, Any]], deadline: float | None = None) -> Flow[Response]:
        """POST the alerts with the token (one new login on a 401); the 201, or a refused (400) answer."""
        for _attempt in (0, 1):
            token = yield from self._token_flow()
            request = alerts_request(self.base_url, alerts).with_header("Authorization", f"Bearer {token}")
            if deadline is not None:
                request = request.with_deadline(max(deadline, 0.001))
            response = yield from self._call(request, "alerts", passthrough=(401, *_REFUSED))
            if response.status_code != 401:
                return response
            self._forget_token(token)
        raise AuthenticationError(
            f"LAPI refused the token of machine {self.label} just after a login (401 to the alerts request).",
            status_code=401,
            hint=_AUTH_HINT,
        )

    def _push_alerts_flow(self, alerts: list[dict[str, Any]]) -> Flow[int]:
        """POST ready-made alerts (the swagger's ``Alert``) outside the queue; returns how many LAPI created."""
        response = yield from self._push_flow(alerts)
        if not response.ok:
            raise lapi_error_for(response, "alerts")
        return len(alerts)

    def _add_flow(self, signals: Iterable[Signal]) -> Flow[int]:
        originals = as_signal_list(signals)
        validated = validate_signals(originals, reuse=True)
        if not validated:
            return 0
        count: int = yield StorageCall(self.storage.add_signals, (validated,), {"destinations": (LAPI,)})
        for original, stored in zip(originals, validated):
            if isinstance(original, Signal) and stored.alert_id is not None:
                original.alert_id = stored.alert_id
        return count

    def _send_flow(self) -> Flow[SendReport]:
        """Claim the LAPI queue, POST it as alerts in batches, mark sent after each 201 (see the module docstring).
        A LAPI failure (down, refused login) ends the call: the claimed signals go back to the queue and the typed
        error is in the report's ``errors`` under :attr:`label`."""
        size, lease = self.batch_size, self.claim_lease
        report = SendTally()
        batches: list[_Batch] = []
        seen: set[int] = set()
        try:
            while True:
                limit = size * _CLAIM_BATCHES
                claim: Claim = yield StorageCall(self.storage.claim_signals, (limit, lease), {"destination": LAPI})
                if not claim.signals:
                    break
                batch = _Batch(claim)
                batches.append(batch)
                fresh = [s for s in claim.signals if s.alert_id not in seen]
                seen.update(s.alert_id for s in fresh if s.alert_id is not None)
                pending = [fresh[i : i + size] for i in range(0, len(fresh), size)]
                while pending:
                    part = yield from self._still_held(batch, pending.pop(0))
                    if not part:
                        continue
                    now: datetime = yield NOW
                    alerts = [
                        alert_from_signal(
                            s,
                            machine_id=self.label,
                            now=now,
                            events_count=self.events_count,
                            capacity=self.capacity,
                            leakspeed=self.leakspeed,
                        )
                        for s in part
                    ]
                    left = (batch.expires_at - now).total_seconds() - lease / 10
                    response = yield from self._push_flow(alerts, left)
                    report.batches += 1
                    ids = [int(s.alert_id) for s in part if s.alert_id is not None]
                    if response.ok:
                        yield StorageCall(self.storage.mark_sent, (claim, ids))
                        batch.settle(ids)
                        report.sent += len(part)
                    elif len(part) > 1:
                        half = len(part) // 2
                        pending[0:0] = [part[:half], part[half:]]
                    else:
                        error = lapi_error_for(response, "alerts")
                        reason = f"{response.status_code} {error.message}"
                        yield StorageCall(self.storage.quarantine, (claim, ids, reason))
                        batch.settle(ids)
                        report.quarantined += 1
                        self.logger.warning("Quarantined LAPI signal %s: %s", part[0].uuid, reason)
                if len(claim.signals) < limit or not fresh:
                    break
        except GeneratorExit:  # closed mid-way: no yield any more, release directly
            self._release_now(batches)
            raise
        except StorageError:
            yield from self._release(batches)
            raise
        except CAPIError as exc:
            yield from self._release(batches)
            report.failed_machines[self.label] = exc.message
            report.errors[self.label] = exc
            self.logger.warning("LAPI signals not sent (they stay queued): %s", exc.message)
        except BaseException:
            yield from self._release(batches)
            raise
        yield from self._release(batches)
        self.logger.info(
            "send_signals (LAPI): %d sent, %d quarantined, %d POST(s).", report.sent, report.quarantined, report.batches
        )
        return report.report()

    def _still_held(self, batch: _Batch, part: list[Signal]) -> Flow[list[Signal]]:
        """The part's signals still this sender's with at least half a lease left: the lease is extended (one
        ``extend_claim`` on the claim's open signals) when half of it is gone; the lost ones are left to their
        new holder."""
        now: datetime = yield NOW
        if batch.expires_at - now >= timedelta(seconds=self.claim_lease / 2):
            return [s for s in part if s.alert_id in batch.open]
        kept = yield StorageCall(self.storage.extend_claim, (batch.claim, sorted(batch.open), self.claim_lease))
        batch.expires_at = now + timedelta(seconds=self.claim_lease)
        lost = batch.open.difference(kept)
        if lost:
            batch.settle(lost)
            self.logger.warning("The lease on %d claimed LAPI signal(s) ran out before they were sent.", len(lost))
        return [s for s in part if s.alert_id in batch.open]

    def _open(self, batches: list[_Batch]) -> list[StorageCall]:
        calls = []
        for batch in batches:
            if batch.open:
                calls.append(StorageCall(self.storage.release_claim, (batch.claim, sorted(batch.open))))
                batch.open.clear()
        return calls

    def _release(self, batches: list[_Batch]) -> Flow[None]:
        for call in self._open(batches):
            try:
                yield call
            except StorageError as exc:
                self.logger.warning("Could not release claimed LAPI signals (the lease lapses): %s", exc.message)

    def _release_now(self, batches: list[_Batch]) -> None:
        for call in self._open(batches):
            try:
                call.fn(*call.args, **call.kwargs)
            except Exception as exc:
                self.logger.warning("Could not release claimed LAPI signals (the lease lapses): %s", type(exc).__name__)


class LapiWatcher(_WatcherCore):
    """A blocking LAPI watcher: ``add_signals`` queues for LAPI, ``send_signals`` pushes the queue as alerts."""

    def __init__(self, base_url: str, storage: Any, **kwargs: Any) -> None:
        super().__init__(base_url, storage, **kwargs)
        self._transport = SyncTransport(self.settings)

    def _run(self, flow: Flow[Any]) -> Any:
        return run_sync(flow, self._transport)

    def login(self) -> None:
        """Log in now (``POST /v1/watchers/login``): a typed error (``AuthenticationError`` ...) if refused."""
        self._run(self._login_flow())

    def add_signals(self, signals: Iterable[Signal]) -> int:
        """Validate and queue signals for LAPI (one storage transaction); returns how many were new."""
        count: int = self._run(self._add_flow(signals))
        return count

    def send_signals(self) -> SendReport:
        """Push the LAPI queue as alerts; the ``SendReport`` (an int: signals accepted) says what happened."""
        report: SendReport = self._run(self._send_flow())
        return report

    def push_alerts(self, alerts: list[dict[str, Any]]) -> int:
        """POST ready-made ``Alert`` dicts (outside the queue, no retry of a refused one); returns how many."""
        count: int = self._run(self._push_alerts_flow(alerts))
        return count

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> LapiWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLapiWatcher(_WatcherCore):
    """The same watcher on the event loop (same flows; storage calls in a worker thread)."""

    def __init__(self, base_url: str, storage: Any, **kwargs: Any) -> None:
        super().__init__(base_url, storage, **kwargs)
        self._transport = AsyncTransport(self.settings)

    async def _run(self, flow: Flow[Any]) -> Any:
        return await run_async(flow, self._transport)

    async def login(self) -> None:
        """See :meth:`LapiWatcher.login`."""
        await self._run(self._login_flow())

    async def add_signals(self, signals: Iterable[Signal]) -> int:
        """See :meth:`LapiWatcher.add_signals`."""
        count: int = await self._run(self._add_flow(signals))
        return count

    async def send_signals(self) -> SendReport:
        """See :meth:`LapiWatcher.send_signals`."""
        report: SendReport = await self._run(self._send_flow())
        return report

    async def push_alerts(self, alerts: list[dict[str, Any]]) -> int:
        """See :meth:`LapiWatcher.push_alerts`."""
        count: int = await self._run(self._push_alerts_flow(alerts))
        return count

    async def aclose(self) -> None:
        """Close the HTTP connections (the storage is the caller's)."""
        await self._transport.aclose()

    async def close(self) -> None:
        """Alias of :meth:`aclose` (the house convention: every async class has both)."""
        await self.aclose()

    async def __aenter__(self) -> AsyncLapiWatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
