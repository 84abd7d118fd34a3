"""The client's flows, written once as generators that yield the effects of :mod:`cscapi.runtime`.

A flow never does I/O itself: it yields ``HttpCall``, ``StorageCall``, ``Sleep``, ``Now`` and ``Compute`` and receives
their results. ``CAPIClient`` runs them with ``cscapi.runtime.run_sync``, ``AsyncCAPIClient`` with
``cscapi.runtime.run_async``, so sync and async share every line of logic (the effect names are re-exported here).
"""

from __future__ import annotations

import ipaddress
import logging
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from cscapi._config import CAPIClientConfig
from cscapi._version import __version__
from cscapi.errors import (
    AuthenticationError,
    CAPIError,
    ConfigurationError,
    LoginBannedError,
    MachineCoolingDownError,
    RequestRejectedError,
    ResponseTooLargeError,
    StorageError,
    UnsafeLinkError,
    ValidationError,
)
from cscapi.limits import MAX_BATCH
from cscapi.machines import (
    random_machine_id,
    random_password,
    scenario_set,
    scenarios_key,
    token_is_live,
    token_is_usable,
    validate_machine_id,
)
from cscapi.models import EnrollOutcome, EnrollStatus, LinkDownload, Machine, SendReport, SendTally, Signal
from cscapi.protocol import (
    Endpoints,
    NetworkFailure,
    Request,
    Response,
    RetryPolicy,
    error_for,
    failure_error,
    is_credentials_refusal,
    metrics_payload,
    parse_enroll,
    parse_login,
    parse_retry_after,
    parse_stream,
    read_claims,
    safe_url,
    server_reason,
    signals_to_wire,
    token_expiry,
)
from cscapi.runtime import (
    MONOTONIC,
    NOW,
    Compute,
    Effect,
    Flow,
    HttpCall,
    Now,
    Sleep,
    StorageCall,
    run_async,
    run_sync,
)
from cscapi.signals import as_signal_list, validate_scenarios, validate_signals
from cscapi.storage import Claim, StorageInterface, check_storage

if TYPE_CHECKING:
    from cscapi.models import DecisionStream

__all__ = [
    "LOGIN_BAN_SECONDS",
    "LOGIN_REFUSED",
    "Compute",
    "Core",
    "Effect",
    "Flow",
    "HttpCall",
    "Now",
    "Sleep",
    "StorageCall",
    "run_async",
    "run_sync",
]

T = TypeVar("T")

LOGIN_BAN_SECONDS = 3600.0
"""CAPI bans logins for an hour after too many (403 on login)."""
LOGIN_REFUSED = "CAPI refused the login"
"""Start of ``Machine.failure_reason`` while a machine whose credentials CAPI refused waits out ``failing_cooldown``:
no login is attempted for it meanwhile (CAPI counts failed logins towards its ban too)."""
MAX_BATCH_SIZE = MAX_BATCH  # the one copy lives in cscapi.limits
_CLAIM_BATCHES = 4  # claim up to 4 POSTs' worth of signals per storage round trip
_MAX_SKIP_WARNINGS = 20  # skipped stream items logged one by one per call; the rest in one summary line
_LOCK_POLL = (0.05, 0.25)  # losers of the login lock re-read the token every 50-250 ms
_UNKNOWN_EXPIRY = timedelta(minutes=5)  # a token with neither ``exp`` nor ``expire`` is reused this long at most


# ---- the flows -------------------------------------------------------------------------------------------


def _copy_error(error: CAPIError) -> CAPIError:
    """A shallow copy of an error, so that threads re-raising one failure do not share one traceback."""
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.args = error.args
    return copy


def _login_refused(machine: Machine, now: datetime) -> bool:
    """True while a machine waits out the cool-down of a login CAPI refused (see ``LOGIN_REFUSED``)."""
    until = machine.failing_until
    return until is not None and now < until and (machine.failure_reason or "").startswith(LOGIN_REFUSED)


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _batch_size(batch_size: object) -> int:
    """Signals per POST, 1 to 250; larger values are capped (the legacy ``batch_size=5000`` was a fetch size)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(
            f"batch_size must be a positive integer (at most {MAX_BATCH_SIZE} go in one request), not {batch_size!r}."
        )
    return min(batch_size, MAX_BATCH_SIZE)


class _LeaseLost(Exception):
    """Raised by ``Core._request`` when its ``before`` hook says no signal of the request is still ours to send."""


_Before = Callable[[Request], Flow["Request | None"]]


class _Batch:
    """The claimed signals of one ``send_signals`` call still to be settled (sent, quarantined or released)."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.open: set[int] = {s.alert_id for s in claim.signals if s.alert_id is not None}
        expires = claim.expires_at
        # a lower bound of the lease on the open signals (the storage set it at or after this moment + lease)
        self.expires_at = expires if expires.tzinfo is not None else expires.replace(tzinfo=timezone.utc)

    def settle(self, ids: Iterable[int]) -> None:
        self.open.difference_update(ids)


class _Held:
    """The signals of one POST that this sender still holds (narrowed when a lease extension loses some)."""

    def __init__(self, part: Sequence[Signal]) -> None:
        self.part: Sequence[Signal] = part


def _open_claims(storage: StorageInterface, batches: list[_Batch]) -> list[StorageCall]:
    """The storage calls giving back the claimed signals still open (the claim's lease would free them too)."""
    calls = []
    for batch in batches:
        if batch.open:
            ids = sorted(batch.open)
            batch.settle(ids)
            calls.append(StorageCall(storage.release_claim, (batch.claim, ids)))
    return calls


def _is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _release_name(release: StorageCall) -> str:
    if getattr(release.fn, "__name__", "") == "release_claim":
        return f"release {len(release.args[1])} claimed signals"
    return f"release the login lock of machine {release.args[0]}"


class Core:
    """The flows of the client, bound to one storage and one configuration. Holds no I/O handle."""

    def __init__(self, storage: StorageInterface, config: CAPIClientConfig) -> None:
        if not isinstance(config, CAPIClientConfig):
            raise ConfigurationError("config must be a CAPIClientConfig.")
        check_storage(storage)  # IncompatibleStorageError (a ConfigurationError) says why and what to do
        self.storage = storage
        self.config = config
        self.log: logging.Logger = config.logger
        self.endpoints = Endpoints(config.api_root, config.api_version, config.gzip_threshold)
        self.retry = RetryPolicy(
            max_retries=config.max_retries,
            base_delay=config.retry_delay,
            max_delay=config.max_backoff,
            max_retry_after=config.max_retry_after,
            fail_fast_connect=config.fail_fast_connect,
        )
        self.scenarios = list(config.scenarios)
        self._config_scenarios = frozenset(self.scenarios)
        self._login_failures: dict[str, tuple[float, CAPIError]] = {}  # machine id -> (monotonic time, error)

    # ---- primitive steps --------------------------------------------------------------------------------

    def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Flow[T]:
        result: T = yield StorageCall(fn, args, kwargs)
        return result

    def _now(self) -> Flow[datetime]:
        now: datetime = yield NOW
        return now

    def _request(self, request: Request, *, retry: bool = True, before: _Before | None = None) -> Flow[Response]:
        """Send with retries (backoff + jitter + Retry-After) on 429, 5xx and network failures.

        Returns the final response when it is not retryable (the caller reads its status); raises
        ``TransportError``, ``RateLimitedError`` or ``ServerError`` when the retries are exhausted. ``before`` runs
        before each try and gives the request to send (a narrower one), or None: ``_LeaseLost`` is raised.
        """
        attempt = 0
        while True:
            if before is not None:
                narrowed = yield from before(request)
                if narrowed is None:
                    raise _LeaseLost
                request = narrowed
            result: Response | NetworkFailure = yield HttpCall(request)
            if isinstance(result, Response):
                self.log.debug("%s %s -> %d", request.method, safe_url(request.url), result.status_code)
            if not retry or not self.retry.should_retry(result, attempt):
                break
            now = yield from self._now()  # a Retry-After date is read against the runtime's clock
            delay = self.retry.delay(attempt, result, now)
            what = result.describe() if isinstance(result, NetworkFailure) else f"status {result.status_code}"
            self.log.warning(
                "The %s request got %s; retry %d of %d in %.2f s.",
                request.operation,
                what,
                attempt + 1,
                self.retry.max_retries,
                delay,
            )
            yield Sleep(delay)
            attempt += 1
        if isinstance(result, NetworkFailure):
            raise failure_error(result, request.operation, attempt + 1)
        if retry and result.status_code in (429, 500, 502, 503, 504):
            error = error_for(result, request.operation)
            if attempt:
                error.message += f" (after {attempt + 1} tries)"
            raise error
        return result

    # ---- machines ----------------------------------------------------------------------------------------

    def _lock(
        self, machine_id: str, holder: str, done: Callable[[Machine | None, datetime], bool]
    ) -> Flow[Machine | None]:
        """Take the machine's login lock (shared by threads and processes through the storage).

        Returns None once the lock is held, or the stored machine when ``done`` says another caller did the work
        while we waited. Gives up with ``AuthenticationError`` after twice the lock's lifetime.
        """
        ttl = self.config.login_lock_ttl
        start = yield from self._now()
        while True:
            acquired = yield from self._store(self.storage.acquire_login_lock, machine_id, holder, ttl)
            if acquired:
                return None
            yield Sleep(random.uniform(*_LOCK_POLL))
            machine = yield from self._store(self.storage.get_machine_by_id, machine_id)
            now = yield from self._now()
            if machine is not None:
                self._check_ban(machine, now)
            if done(machine, now):
                return machine
            if (now - start).total_seconds() > 2 * ttl:
                raise AuthenticationError(
                    f"Timed out waiting for another login of machine {machine_id}.",
                    hint="Another process holds the machine's login lock; try again shortly.",
                )

    def _unlock(self, machine_id: str, holder: str) -> Flow[None]:
        yield from self._release(StorageCall(self.storage.release_login_lock, (machine_id, holder)))

    def _holding(self, body: Flow[T], release: StorageCall) -> Flow[T]:
        """Run ``body``, then ``release`` whatever happens (a ``try/finally`` that is safe to close).

        A flow closed mid-way (``close()``: a discarded task, a SIGTERM unwinding a driver) gets ``GeneratorExit``
        and must not yield again ("generator ignored GeneratorExit"): the release is then called directly.
        """
        try:
            result = yield from body
        except GeneratorExit:
            self._release_now(release)
            raise
        except BaseException:
            yield from self._release(release)
            raise
        yield from self._release(release)
        return result

    def _release(self, release: StorageCall) -> Flow[None]:
        """Yield a releasing storage call; a storage failure is logged (leases and locks lapse by themselves)."""
        try:
            yield release
        except GeneratorExit:
            self._release_now(release)
            raise
        except StorageError as exc:
            self.log.warning("Could not %s (it lapses by itself): %s", _release_name(release), exc.message)

    def _release_now(self, release: StorageCall) -> None:
        """Make a releasing storage call directly, for a flow being closed (it cannot yield any more)."""
        try:
            release.fn(*release.args, **release.kwargs)
        except Exception as exc:
            self.log.warning(
                "Could not %s (it lapses by itself): %s: %s", _release_name(release), type(exc).__name__, exc
            )

    def _check_ban(self, machine: Machine, now: datetime) -> None:
        """Raise if no login may be attempted now: a stored login ban, or a recent refusal of the credentials."""
        until = machine.login_banned_until
        if until is not None and now < until:
            raise LoginBannedError(
                f"CAPI banned logins for machine {machine.machine_id} until {until:%Y-%m-%d %H:%M:%S} UTC.",
                until=until,
            )
        if _login_refused(machine, now):
            assert machine.failing_until is not None
            raise AuthenticationError(
                f"{machine.failure_reason}; no login of machine {machine.machine_id} is attempted before "
                f"{machine.failing_until:%Y-%m-%d %H:%M:%S} UTC.",
                hint="Check that this storage holds the password the machine was registered with (an id/password "
                "pair never changes), or use a new machine id; clear_login_ban(machine_id) allows a login at once.",
            )

    def clear_login_ban(self, machine_id: str) -> Flow[bool]:
        """Forget a machine's stored login ban (and a refused login's cool-down); True if there was one.

        For operators who know better (e.g. CAPI lifted the ban). CAPI's own ban is not lifted by this: a login it
        still refuses is stored again.
        """
        validate_machine_id(machine_id)
        self._login_failures.pop(machine_id, None)
        machine = yield from self._store(self.storage.get_machine_by_id, machine_id)
        if machine is None:
            raise ValidationError(
                f"No machine {machine_id} in the storage: there is no login ban to clear.",
                field="machine_id",
                hint="Check the machine id; storage.list_machines() lists the stored machines.",
            )
        refused = (machine.failure_reason or "").startswith(LOGIN_REFUSED)
        if machine.login_banned_until is None and not refused:
            return False
        cleared = replace(machine, login_banned_until=None)
        if refused:
            cleared = replace(cleared, is_failing=False, failing_until=None, failure_reason=None)
        yield from self._store(self.storage.update_or_create_machine, cleared)
        self.log.warning(
            "Cleared the stored login ban of machine %s; CAPI may still refuse its logins until its own ban lifts.",
            machine_id,
        )
        return True

    def register_machine(self, machine_id: str | None = None, password: str | None = None) -> Flow[Machine]:
        """Register a machine on CAPI (id and CSPRNG password generated when absent); a registered one is returned.

        The password is stored before it is sent, under the machine's login lock, so that an id/password pair
        never changes once CAPI has seen it.
        """
        if machine_id is None:
            machine_id = random_machine_id(self.config.machine_id_prefix)
        validate_machine_id(machine_id)
        if password is not None and (not isinstance(password, str) or not password):
            raise ValidationError("password must be a non-empty string.", field="password")
        stored = yield from self._store(self.storage.get_machine_by_id, machine_id)
        if stored is not None and stored.registered:
            self._same_password(stored, password)
            return stored
        holder = uuid.uuid4().hex
        other = yield from self._lock(machine_id, holder, lambda m, _now: m is not None and m.registered)
        if other is not None:
            self._same_password(other, password)
            return other
        release = StorageCall(self.storage.release_login_lock, (machine_id, holder))
        return (yield from self._holding(self._register_locked(machine_id, password), release))

    @staticmethod
    def _same_password(machine: Machine, password: str | None) -> None:
        if password is not None and password != machine.password:
            raise ValidationError(
                f"Machine {machine.machine_id} is already registered with another password.",
                field="password",
                hint="A machine's id/password pair never changes once registered; use a new machine id instead.",
            )

    def _register_locked(self, machine_id: str, password: str | None) -> Flow[Machine]:
        stored = yield from self._store(self.storage.get_machine_by_id, machine_id)
        if stored is not None and stored.registered:
            self._same_password(stored, password)
            return stored
        now = yield from self._now()
        if stored is not None:
            self._check_ban(stored, now)  # the duplicate-id path below logs in: not while banned or refused
        machine = stored or Machine(machine_id=machine_id, created_at=now)
        pw = password or machine.password or random_password()
        if stored is None or stored.password != pw:
            machine = replace(machine, password=pw, registered=False)
            yield from self._store(self.storage.update_or_create_machine, machine)
        response = yield from self._request(self.endpoints.register(machine_id, pw))
        if response.ok:
            machine = replace(machine, registered=True)
            yield from self._store(self.storage.update_or_create_machine, machine)
            self.log.info("Registered machine %s on CAPI.", machine_id)
            return machine
        if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 404):
            # Probably "already registered": it is ours only if our password logs in.
            message, _ = server_reason(response)
            self.log.info(
                "CAPI refused to register machine %s (%d: %s); trying to log in with the stored password.",
                machine_id,
                response.status_code,
                message,
            )
            try:
                machine = yield from self._login_locked(machine, self.scenarios)
            except LoginBannedError:
                raise
            except AuthenticationError:
                raise AuthenticationError(
                    f"Machine {machine_id} could not be registered ({response.status_code}: {message}) and the "
                    "stored password does not log in: the id is probably registered with another password.",
                    status_code=response.status_code,
                    hint="Use a new machine id (the id/password pair of a registered machine never changes).",
                ) from None
            machine = replace(machine, registered=True)
            yield from self._store(self.storage.update_or_create_machine, machine)
            return machine
        raise error_for(response, "register")

    def login(
        self,
        machine_id: str,
        *,
        scenarios: Sequence[str] | None = None,
        force: bool = False,
        stale_token: str | None = None,
    ) -> Flow[Machine]:
        """A machine with a usable token: the stored one until ``exp - latency_offset``, else a fresh login.

        ``force`` logs in even if the token looks valid; ``stale_token`` (a token CAPI just refused with 401)
        logs in unless another caller already replaced that token. Logins are serialised per machine.
        """
        validate_machine_id(machine_id)
        wanted = self._config_scenarios.union(scenarios) if scenarios else self._config_scenarios
        machine = yield from self._store(self.storage.get_machine_by_id, machine_id)
        now = yield from self._now()
        if machine is not None:
            self._check_ban(machine, now)  # before registering: a banned or refused machine sends nothing
        if machine is None or not machine.registered or not machine.password:
            machine = yield from self.register_machine(machine_id)
            now = yield from self._now()
        offset = self.config.latency_offset

        def fresh(m: Machine | None, at: datetime) -> bool:
            if m is None or not token_is_usable(m, wanted, at, offset):
                return False
            if stale_token is not None:
                return m.token != stale_token
            return not force

        if fresh(machine, now):
            return machine
        holder = uuid.uuid4().hex
        started: float = yield MONOTONIC  # durations through the runtime's clock (tests drive it)
        other = yield from self._lock(machine_id, holder, fresh)
        if other is not None:
            return other
        failure = self._login_failures.get(machine_id)
        if failure is not None and failure[0] >= started:
            # Another caller of this process failed to log in while we waited for it: share its error rather
            # than hammering CAPI's login (which bans) with one more attempt per waiting thread or task.
            yield from self._unlock(machine_id, holder)
            raise _copy_error(failure[1])

        def locked() -> Flow[tuple[Machine, bool]]:
            current = yield from self._store(self.storage.get_machine_by_id, machine_id)
            if current is None or not current.password:
                raise AuthenticationError(
                    f"Machine {machine_id} has no stored password: it cannot log in.",
                    hint="Register it again with register_machine().",
                )
            now = yield from self._now()
            self._check_ban(current, now)
            if fresh(current, now):
                return current, False
            try:
                done = yield from self._login_locked(current, self._declared(current, scenarios, now, force))
            except StorageError:
                raise
            except CAPIError as exc:
                failed_at: float = yield MONOTONIC
                self._login_failures[machine_id] = (failed_at, exc)
                raise
            self._login_failures.pop(machine_id, None)
            return done, True

        release = StorageCall(self.storage.release_login_lock, (machine_id, holder))
        machine, logged_in = yield from self._holding(locked(), release)
        if not logged_in:
            return machine
        if self.config.send_metrics_after_login:
            try:
                yield from self._post_metrics(machine)
            except CAPIError as exc:
                self.log.warning("Sending metrics after the login of machine %s failed: %s", machine_id, exc.message)
        return machine

    def _declared(self, current: Machine, scenarios: Sequence[str] | None, now: datetime, force: bool) -> list[str]:
        """The scenarios a new login declares: the config's, then the call's, then (unless ``force``) those the
        current, unexpired token already declares, so that calls needing different sets never log in by turns.

        An expired token's set is dropped, so scenarios removed from the config or asked once stop being declared
        at the next natural login (or at once with ``force``).
        """
        declared = list(self.scenarios)
        declared.extend(name for name in scenarios or () if name not in declared)
        if not force and token_is_live(current, now, 0.0):
            declared.extend(sorted(scenario_set(current.scenarios).difference(declared)))
        return declared

    def _login_locked(self, machine: Machine, scenarios: Sequence[str], *, reregister: bool = True) -> Flow[Machine]:
        assert machine.password is not None
        now = yield from self._now()
        self._check_ban(machine, now)
        login = self.endpoints.login(machine.machine_id, machine.password, scenarios)
        response = yield from self._request(login.with_limit(self.config.max_token_bytes, "max_token_bytes"))
        now = yield from self._now()
        if response.status_code == 403 and not is_credentials_refusal(response):
            hinted = parse_retry_after(response.header("retry-after"), now) or 0.0
            until = now + timedelta(seconds=max(LOGIN_BAN_SECONDS, min(hinted, 24 * 3600.0)))
            banned = replace(machine, login_banned_until=until, token=None, token_expires_at=None)
            yield from self._store(self.storage.update_or_create_machine, banned)
            message, _ = server_reason(response)
            self.log.error(
                "CAPI refused the login of machine %s with 403 (%s): login banned.", machine.machine_id, message
            )
            raise LoginBannedError(
                f"CAPI refused the login of machine {machine.machine_id} with 403 ({message}): logins are banned "
                f"until {until:%Y-%m-%d %H:%M:%S} UTC.",
                until=until,
            )
        if response.status_code in (400, 401, 403, 404):  # the credentials (or the request) refused, not a ban
            message, _ = server_reason(response)
            if reregister and machine.registered and response.status_code != 400:
                # CAPI may have lost the machine (a reset emulator, a purge): registering the SAME id/password pair
                # again changes nothing if it still knows it (a 4xx), and heals the machine if it does not.
                again = yield from self._request(self.endpoints.register(machine.machine_id, machine.password))
                if again.ok:
                    self.log.warning(
                        "CAPI did not know machine %s any more; registered it again with its stored password.",
                        machine.machine_id,
                    )
                    return (yield from self._login_locked(machine, scenarios, reregister=False))
                again_message, _ = server_reason(again)
                message = (
                    f"{message}; registering it again with the stored password: {again.status_code} {again_message}"
                )
            yield from self._refuse_login(machine, response.status_code, message, now)
        if not response.ok:
            raise error_for(response, "login")
        token, expire = parse_login(response)
        if len(token) > self.config.max_token_bytes:  # unreachable while the whole answer is capped; kept explicit
            raise ResponseTooLargeError(
                f"CAPI's login token for machine {machine.machine_id} is {len(token)} bytes, more than "
                f"max_token_bytes ({self.config.max_token_bytes}).",
                limit="max_token_bytes",
                max_bytes=self.config.max_token_bytes,
            )
        expires = token_expiry(token, expire)
        if expires is None:
            self.log.warning(
                "The login token of machine %s has no expiry; reusing it 5 minutes at most.", machine.machine_id
            )
            expires = now + _UNKNOWN_EXPIRY
        org = read_claims(token).get("organization_id")
        machine = replace(
            machine,
            token=token,
            token_expires_at=expires,
            scenarios=scenarios_key(scenarios),
            login_banned_until=None,
            is_failing=False,
            failing_until=None,
            failure_reason=None,
            organization_id=str(org) if org else machine.organization_id,
        )
        yield from self._store(self.storage.update_or_create_machine, machine)
        self.log.info(
            "Machine %s logged in; token valid until %s.", machine.machine_id, f"{expires:%Y-%m-%d %H:%M:%S} UTC"
        )
        return machine

    def _refuse_login(self, machine: Machine, status: int, message: str, now: datetime) -> Flow[None]:
        """Store a refused login (no login for ``failing_cooldown``: CAPI counts failures too), then raise."""
        until = now + timedelta(seconds=self.config.failing_cooldown)
        reason = f"{LOGIN_REFUSED} of machine {machine.machine_id} ({status}: {message})"[:500]
        refused = replace(
            machine, token=None, token_expires_at=None, is_failing=True, failing_until=until, failure_reason=reason
        )
        yield from self._store(self.storage.update_or_create_machine, refused)
        self.log.error("%s; no login before %s UTC.", reason, f"{until:%Y-%m-%d %H:%M:%S}")
        raise AuthenticationError(
            f"{reason}. No login of this machine is attempted before {until:%Y-%m-%d %H:%M:%S} UTC.",
            status_code=status,
        )

    def _send_with_token(
        self, token: str, request: Request, *, retry: bool = True, before: _Before | None = None
    ) -> Flow[Response]:
        authed = request.with_header("Authorization", f"Bearer {token}")
        return (yield from self._request(authed, retry=retry, before=before))

    def authed(self, machine_id: str, request: Request, scenarios: Sequence[str] | None = None) -> Flow[Response]:
        """Send an authenticated request; a 401 forces one fresh login and one retry, a second 401 raises."""
        machine = yield from self.login(machine_id, scenarios=scenarios)
        response, _ = yield from self._send_as(machine, request, scenarios)
        return response

    def _send_as(
        self,
        machine: Machine,
        request: Request,
        scenarios: Sequence[str] | None = None,
        before: _Before | None = None,
    ) -> Flow[tuple[Response, Machine]]:
        """Send with ``machine``'s token; on 401 log in once more and retry once. Returns the machine in use.

        ``before`` (see ``_request``) runs before every try, including the one after the fresh login."""
        assert machine.token is not None
        response = yield from self._send_with_token(machine.token, request, before=before)
        if response.status_code != 401:
            return response, machine
        machine_id = machine.machine_id
        self.log.info("CAPI refused the token of machine %s (401); logging in again.", machine_id)
        machine = yield from self.login(machine_id, scenarios=scenarios, stale_token=machine.token)
        assert machine.token is not None
        response = yield from self._send_with_token(machine.token, request, before=before)
        if response.status_code == 401:
            message, _ = server_reason(response)
            raise AuthenticationError(
                f"CAPI refused a fresh token of machine {machine_id} for the {request.operation} request (401: "
                f"{message}).",
                status_code=401,
            )
        return response, machine

    def _post_metrics(self, machine: Machine) -> Flow[None]:
        assert machine.token is not None
        now = yield from self._now()
        payload = metrics_payload(self.config.user_agent, __version__, None, now)
        # One try only: metrics are a courtesy and must not slow a login down with backoff.
        response = yield from self._send_with_token(machine.token, self.endpoints.metrics(payload), retry=False)
        if not response.ok:
            raise error_for(response, "metrics")

    def send_metrics(self, machine_id: str) -> Flow[None]:
        """``POST /v3/metrics`` describing this SDK, for one machine."""
        now = yield from self._now()
        payload = metrics_payload(self.config.user_agent, __version__, None, now)
        response = yield from self.authed(machine_id, self.endpoints.metrics(payload))
        if not response.ok:
            raise error_for(response, "metrics")

    def default_machine_id(self) -> Flow[str]:
        """The first stored machine's id, or a newly generated and registered machine's."""
        machines = yield from self._store(self.storage.list_machines)
        if machines:
            return str(machines[0].machine_id)
        machine = yield from self.register_machine()
        return machine.machine_id

    # ---- signals -----------------------------------------------------------------------------------------

    def add_signals(self, signals: Iterable[Signal]) -> Flow[int]:
        """Validate every signal, then queue them all in one storage call; returns how many were new."""
        originals = as_signal_list(signals)  # None, 5: InvalidArgumentError naming the argument, not a TypeError
        validated = validate_signals(originals, reuse=True)  # canonical signals are checked, not copied
        if not validated:
            return 0
        count: int = yield from self._store(self.storage.add_signals, validated)
        for original, stored in zip(originals, validated):
            if isinstance(original, Signal) and stored.alert_id is not None:
                original.alert_id = stored.alert_id
        return count

    def _mark_failing(self, machine_id: str, reason: str) -> Flow[None]:
        now = yield from self._now()
        machine = yield from self._store(self.storage.get_machine_by_id, machine_id)
        if machine is None or _login_refused(machine, now):  # a refused login was stored with its own reason
            return
        until = now + timedelta(seconds=self.config.failing_cooldown)
        machine = replace(machine, is_failing=True, failing_until=until, failure_reason=reason[:500])
        yield from self._store(self.storage.update_or_create_machine, machine)
        self.log.warning(
            "Machine %s is failing (%s); its signals wait until %s.", machine_id, reason, f"{until:%H:%M:%S} UTC"
        )

    def _clear_failing(self, machine_id: str) -> Flow[None]:
        machine = yield from self._store(self.storage.get_machine_by_id, machine_id)
        if machine is not None and (machine.is_failing or machine.failing_until is not None):
            machine = replace(machine, is_failing=False, failing_until=None, failure_reason=None)
            yield from self._store(self.storage.update_or_create_machine, machine)

    def send_signals(self, prune_after_send: bool = True, batch_size: int | None = None) -> Flow[SendReport]:
        """Claim queued signals, POST them per machine in batches, mark sent (or delete: ``prune_after_send``) after
        each 2xx.

        Each claimed signal is handled at most once per call (the loop always ends). A 400 on a batch bisects it
        to quarantine only the refused signals; a machine that cannot log in or whose server keeps failing is
        marked failing for ``failing_cooldown`` and its signals go back to the queue.
        """
        size = _batch_size(self.config.batch_size if batch_size is None else batch_size)
        report = SendTally()  # frozen into an (int) SendReport at the end
        failed: dict[str, str] = {}
        batches: list[_Batch] = []
        seen: set[int] = set()
        machines: dict[str, Machine] = {}  # logged-in machines of this call: no storage read per claim round
        try:
            more = True
            while more:
                limit = size * _CLAIM_BATCHES
                claim: Claim = yield from self._store(self.storage.claim_signals, limit, self.config.claim_lease)
                if not claim.signals:
                    break
                more = len(claim.signals) >= limit  # a partial claim drained the queue: this is the last round
                batch = _Batch(claim)
                batches.append(batch)
                fresh = [s for s in claim.signals if s.alert_id not in seen]
                if not fresh:  # only signals we already handled came back: stop here
                    break
                seen.update(s.alert_id for s in fresh if s.alert_id is not None)
                groups: dict[str, list[Signal]] = {}
                for signal in fresh:
                    groups.setdefault(signal.machine_id or "", []).append(signal)
                for machine_id, signals in groups.items():
                    if machine_id in failed:
                        continue
                    error = yield from self._send_machine(
                        machine_id, batch, signals, size, report, prune_after_send, machines
                    )
                    if error is not None:
                        failed[machine_id] = error.message
                        report.errors[machine_id] = error
                        if not isinstance(error, LoginBannedError):
                            yield from self._mark_failing(machine_id, error.message)
        except GeneratorExit:  # closed mid-way: no yield any more, release the claims directly
            for release in _open_claims(self.storage, batches):
                self._release_now(release)
            raise
        except BaseException:
            for release in _open_claims(self.storage, batches):
                yield from self._release(release)
            raise
        for release in _open_claims(self.storage, batches):
            yield from self._release(release)
        report.failed_machines.update(failed)
        held = yield from self._held_machines(set(failed))
        report.errors.update(held)
        self.log.info(
            "send_signals: %d sent, %d quarantined, %d POSTs, %d failing machines.",
            report.sent,
            report.quarantined,
            report.batches,
            len(failed),
        )
        return report.report()

    def _held_machines(self, tried: set[str]) -> Flow[dict[str, CAPIError]]:
        """The machines whose queued signals the claim skipped (a cool-down or a login ban in force), each with the
        typed reason: ``LoginBannedError``, ``AuthenticationError`` (a refused login), else ``MachineCoolingDownError``.

        Best effort: a storage failure here is logged, it does not undo the sends already done.
        """
        held: dict[str, CAPIError] = {}
        try:
            now = yield from self._now()
            machines = yield from self._store(self.storage.list_machines)
            for machine in machines:
                banned = machine.login_banned_until is not None and machine.login_banned_until > now
                cooling = machine.failing_until is not None and machine.failing_until > now
                if machine.machine_id in tried or not (banned or cooling):
                    continue
                counts = yield from self._store(self.storage.count_signals, machine.machine_id)
                if not counts.queued:
                    continue
                try:
                    self._check_ban(machine, now)
                except CAPIError as exc:
                    held[machine.machine_id] = exc
                    continue
                assert machine.failing_until is not None
                reason = (machine.failure_reason or "an earlier failure").rstrip(".")
                held[machine.machine_id] = MachineCoolingDownError(
                    f"Machine {machine.machine_id} failed recently ({reason}): its {counts.queued} queued signal(s) "
                    f"were not tried and wait until {machine.failing_until:%Y-%m-%d %H:%M:%S} UTC.",
                    until=machine.failing_until,
                    reason=reason,
                )
        except StorageError as exc:
            self.log.warning("Could not list the machines waiting out a cool-down: %s", exc.message)
        return held

    def _send_machine(
        self,
        machine_id: str,
        batch: _Batch,
        signals: list[Signal],
        size: int,
        report: SendTally,
        prune: bool,
        machines: dict[str, Machine],
    ) -> Flow[CAPIError | None]:
        machine = machines.get(machine_id)
        try:
            if machine is None:  # the first round of this call for this machine: the stored token, or a login
                machine = yield from self.login(machine_id)
        except StorageError:
            raise
        except CAPIError as exc:
            return exc
        machines[machine_id] = machine
        cleared = not (machine.is_failing or machine.failing_until is not None)
        pending: list[Sequence[Signal]] = list(_chunks(signals, size))
        while pending:
            held = _Held(pending.pop(0))
            request = self.endpoints.signals(signals_to_wire(list(held.part)))
            try:
                now = yield from self._now()
                if not token_is_usable(machine, self._config_scenarios, now, self.config.latency_offset):
                    machine = yield from self.login(machine_id)  # expired during a long run
                before = self._still_held(batch, held)
                response, machine = yield from self._send_as(machine, request, before=before)
            except _LeaseLost:
                continue  # every signal of the part went to another sender: nothing to send, nothing to settle
            except StorageError:
                raise
            except CAPIError as exc:
                machines.pop(machine_id, None)
                return exc
            machines[machine_id] = machine
            report.batches += 1
            part = held.part  # what the last try carried: the signals whose lease was still ours
            ids = [s.alert_id for s in part if s.alert_id is not None]
            if response.ok:
                if prune:  # the legacy default: what CAPI accepted is deleted at once (one statement, not two)
                    yield from self._store(self.storage.delete_signals, ids)
                else:
                    yield from self._store(self.storage.mark_sent, batch.claim, ids)
                batch.settle(ids)
                report.sent += len(part)
                if not cleared:
                    yield from self._clear_failing(machine_id)
                    cleared = True
                    machine = replace(machine, is_failing=False, failing_until=None, failure_reason=None)
                    machines[machine_id] = machine
            elif response.status_code in (400, 413, 422):
                if len(part) == 1:
                    error = error_for(response, "signals")
                    reason = (
                        error.server_message or error.message
                        if isinstance(error, RequestRejectedError)
                        else error.message
                    )
                    if isinstance(error, RequestRejectedError) and error.server_errors:
                        reason = f"{reason}: {error.server_errors}"
                    reason = f"{response.status_code} {reason}"
                    yield from self._store(self.storage.quarantine, batch.claim, ids, reason)
                    batch.settle(ids)
                    report.quarantined += 1
                    self.log.warning("Quarantined signal %s of machine %s: %s", part[0].uuid, machine_id, reason)
                else:
                    half = len(part) // 2
                    pending[0:0] = [part[:half], part[half:]]
            else:
                return error_for(response, "signals")
        return None

    def _still_held(self, batch: _Batch, held: _Held) -> _Before:
        """The ``before`` hook of a signals POST try: a try starts only with at least half a lease left on its
        signals. While the lease known to this sender runs that long, nobody else can hold them: no storage call.
        Else the lease on every signal of the claim still to be settled is renewed (one ``extend_claim``: the parts
        not POSTed yet stay ours too) and the request narrowed to the part's signals still held; the lost ones (the
        lease ran out, another sender may hold them) are settled here and left to their holder. None: none is left.
        """

        def before(request: Request) -> Flow[Request | None]:
            now = yield from self._now()
            lease = float(self.config.claim_lease)
            if batch.expires_at - now >= timedelta(seconds=lease / 2):
                return request
            ids = sorted(batch.open)
            kept = yield from self._store(self.storage.extend_claim, batch.claim, ids, lease)
            batch.expires_at = now + timedelta(seconds=lease)
            lost = batch.open.difference(kept)
            if lost:
                batch.settle(lost)
                self.log.warning(
                    "The lease on %d claimed signal(s) ran out before they were sent; they are left to the sender "
                    "that claims them next (raise claim_lease if CAPI is this slow).",
                    len(lost),
                )
            part = [s for s in held.part if s.alert_id is None or s.alert_id in batch.open]
            if len(part) == len(held.part):
                return request
            held.part = part
            if not any(s.alert_id is not None for s in part):
                return None
            narrowed = self.endpoints.signals(signals_to_wire(part))
            auth = request.headers.get("Authorization")
            return narrowed if auth is None else narrowed.with_header("Authorization", auth)

        return before

    def prune_failing_machines_signals(self, batch_size: int = 1000) -> Flow[int]:
        """Delete the queued signals of machines that are failing right now; returns how many.

        ``batch_size`` (the legacy argument) is how many signals are read per storage call.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, not {batch_size!r}.")
        now = yield from self._now()
        machines = yield from self._store(self.storage.list_machines)
        failing = {
            m.machine_id
            for m in machines
            if (m.failing_until is not None and m.failing_until > now) or (m.is_failing and m.failing_until is None)
        }
        if not failing:
            return 0
        deleted = 0
        offset = 0
        page = batch_size
        while True:
            signals = yield from self._store(self.storage.get_signals, page, offset, False, None)
            if not signals:
                break
            doomed = [s.alert_id for s in signals if s.machine_id in failing and s.alert_id is not None]
            if doomed:
                yield from self._store(self.storage.delete_signals, doomed)
                deleted += len(doomed)
            offset += len(signals) - len(doomed)
            if len(signals) < page:
                break
        self.log.info("Deleted %d queued signals of %d failing machines.", deleted, len(failing))
        return deleted

    # ---- decisions, links, enrollment, metrics -----------------------------------------------------------

    def get_decisions(
        self,
        main_machine_id: str,
        scenarios: Sequence[str] | None = None,
        *,
        startup: bool = False,
        community_pull: bool = True,
        additional_pull: bool = True,
    ) -> Flow[DecisionStream]:
        """Pull ``GET /v3/decisions/stream`` as ``main_machine_id`` (logged in with ``scenarios`` if given)."""
        scen = validate_scenarios(scenarios) if scenarios is not None else None
        request = self.endpoints.decisions_stream(
            startup=startup, community_pull=community_pull, additional_pull=additional_pull
        ).with_limit(self.config.max_stream_bytes, "max_stream_bytes")
        response = yield from self.authed(main_machine_id, request, scenarios=scen)
        if not response.ok:
            raise error_for(response, "decisions stream")

        logged = unlogged = 0  # a hostile stream of 100k bad items must not write 100k log lines

        def skipped(reason: str) -> None:
            nonlocal logged, unlogged
            if logged < _MAX_SKIP_WARNINGS:
                logged += 1
                self.log.warning("Skipped a decisions stream item: %s", reason)
            else:
                unlogged += 1

        stream: DecisionStream = yield Compute(parse_stream, (response,), {"startup": startup, "on_skip": skipped})
        if unlogged:
            self.log.warning(
                "Skipped %d more decisions stream items (only the first %d are logged one by one).",
                unlogged,
                _MAX_SKIP_WARNINGS,
            )
        self._cap_links(stream)
        self.log.info(
            "Decisions stream: %d new, %d deleted, %d blocklists, %d allowlists, %d skipped.",
            len(stream.new),
            len(stream.deleted),
            len(stream.blocklists),
            len(stream.allowlists),
            stream.skipped,
        )
        return stream

    def _cap_links(self, stream: DecisionStream) -> None:
        """Keep at most ``max_links`` links (blocklists first); the excess is logged and counted in ``stream.skipped``
        (a hostile stream could otherwise make one refresh send thousands of GETs)."""
        cap = self.config.max_links
        total = len(stream.blocklists) + len(stream.allowlists)
        if total <= cap:
            return
        stream.blocklists = stream.blocklists[:cap]
        stream.allowlists = stream.allowlists[: cap - len(stream.blocklists)]
        stream.skipped += total - cap
        self.log.warning(
            "The decisions stream offers %d lists; only the first %d are used (max_links), %d ignored.",
            total,
            cap,
            total - cap,
        )

    def _link_request(self, url: str, if_modified_since: datetime | str | None) -> Request:
        """The GET of a link, refused (``UnsafeLinkError``) when plain http is not allowed for it.

        Plain http is allowed when the API itself is plain http, for a loopback host, or with ``allow_http_links``.
        """
        request = Endpoints.link(url, if_modified_since)
        parts = urlsplit(url)
        if (
            parts.scheme == "http"
            and self.endpoints.base_url.startswith("https:")
            and not self.config.allow_http_links
            and not _is_loopback(parts.hostname or "")
        ):
            raise UnsafeLinkError(
                f"The list link {safe_url(url)} is plain http while CAPI is https: not downloaded (its content "
                "could be changed on the way)."
            )
        return request.with_limit(self.config.max_link_bytes, "max_link_bytes")

    def download_link(self, url: str, if_modified_since: datetime | str | None = None) -> Flow[LinkDownload]:
        """GET a blocklist/allowlist link without Authorization; 304 means not modified, other non-2xx raise."""
        request = self._link_request(url, if_modified_since)
        response = yield from self._request(request)
        if response.status_code == 304:
            return LinkDownload(
                url=url, status_code=304, not_modified=True, last_modified=response.header("last-modified")
            )
        if not response.ok:
            raise error_for(response, "link download")
        return LinkDownload(
            url=url,
            status_code=response.status_code,
            text=response.text,
            last_modified=response.header("last-modified"),
        )

    def enroll_machines(
        self,
        machine_ids: Sequence[str],
        name: str | None,
        attachment_key: str,
        tags: Sequence[str] | None,
        overwrite: bool = False,
    ) -> Flow[list[EnrollOutcome]]:
        """Enroll each machine into the console; one outcome per machine, never an exception for one machine."""
        if isinstance(machine_ids, str):
            machine_ids = [machine_ids]
        if not isinstance(attachment_key, str) or not attachment_key.isascii() or not attachment_key.isalnum():
            raise ValidationError(
                "The attachment key must be the letters and digits shown in the CrowdSec console.",
                field="attachment_key",
            )
        if name is not None and not isinstance(name, str):
            raise ValidationError("name must be a string.", field="name")
        tag_list = list(tags or [])
        if not all(isinstance(t, str) for t in tag_list):
            raise ValidationError("tags must be a list of strings.", field="tags")
        request = self.endpoints.enroll(attachment_key, name, tag_list, bool(overwrite))
        outcomes: list[EnrollOutcome] = []
        for machine_id in machine_ids:
            outcome = yield from self._enroll_one(machine_id, request, bool(overwrite))
            outcomes.append(outcome)
        return outcomes

    def _enroll_one(self, machine_id: str, request: Request, overwrite: bool) -> Flow[EnrollOutcome]:
        try:
            validate_machine_id(machine_id)
            response = yield from self.authed(machine_id, request)
        except StorageError:
            raise
        except CAPIError as exc:
            self.log.warning("Enrolling machine %s failed: %s", machine_id, exc.message)
            return EnrollOutcome(str(machine_id), EnrollStatus.FAILED, reason=exc.message)
        if response.ok:
            status, url, expire_at = parse_enroll(response, overwrite)
            self.log.info("Machine %s: %s.", machine_id, status.replace("_", " "))
            return EnrollOutcome(machine_id, status, url=url, expire_at=expire_at)
        message, _ = server_reason(response)
        if response.status_code == 403:
            reason = f"CAPI refused the attachment key (403: {message})"
        else:
            reason = error_for(response, "enroll").message
        self.log.warning("Enrolling machine %s failed: %s", machine_id, reason)
        return EnrollOutcome(machine_id, EnrollStatus.FAILED, reason=reason)

    def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> Flow[None]:
        """``POST /v3/usage-metrics`` with an ``AllMetrics`` dict; a refusal raises ``RequestRejectedError``."""
        if not isinstance(payload, dict):
            raise ValidationError("The usage metrics payload must be an AllMetrics dict.", field="payload")
        response = yield from self.authed(machine_id, self.endpoints.usage_metrics(payload))
        if not response.ok:
            raise error_for(response, "usage metrics")

    def delete_decisions(self, machine_id: str, uuids: Sequence[str]) -> Flow[None]:
        """``POST /v3/decisions/delete`` with the UUIDs of decisions deleted locally."""
        if isinstance(uuids, str) or not all(isinstance(u, str) and u for u in uuids):
            raise ValidationError("uuids must be a list of decision UUID strings.", field="uuids")
        items = list(uuids)
        if not items:
            return
        response = yield from self.authed(machine_id, self.endpoints.decisions_delete(items))
        if not response.ok:
            raise error_for(response, "decisions delete")
