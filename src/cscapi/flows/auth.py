"""Machines: register, log in (one login at a time per machine, through the storage's login lock), stored login
bans and refused-login cool-downs, and sending a request with a machine's token (a 401 logs in once more)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cscapi._version import __version__
from cscapi.errors import (
    AuthenticationError,
    CAPIError,
    LoginBannedError,
    ResponseTooLargeError,
    StorageError,
    ValidationError,
)
from cscapi.flows._base import LOGIN_REFUSED, FlowBase, _Before, _copy_error, _login_refused
from cscapi.machines import (
    random_machine_id,
    random_password,
    scenario_set,
    scenarios_key,
    token_is_live,
    token_is_usable,
    validate_machine_id,
)
from cscapi.models import Machine
from cscapi.protocol import (
    Request,
    Response,
    error_for,
    is_credentials_refusal,
    metrics_payload,
    parse_login,
    parse_retry_after,
    read_claims,
    server_reason,
    token_expiry,
)
from cscapi.runtime import MONOTONIC, Flow, Sleep, StorageCall

if TYPE_CHECKING:
    from cscapi._config import CAPIClientConfig
    from cscapi.protocol import Endpoints, RetryPolicy
    from cscapi.storage import StorageInterface

__all__ = ["LOGIN_BAN_SECONDS", "AuthFlows"]

LOGIN_BAN_SECONDS = 3600.0
"""CAPI bans logins for an hour after too many (403 on login)."""
_LOCK_POLL = (0.05, 0.25)  # losers of the login lock re-read the token every 50-250 ms
_UNKNOWN_EXPIRY = timedelta(minutes=5)  # a token with neither ``exp`` nor ``expire`` is reused this long at most


class AuthFlows(FlowBase):
    """Register, log in, login bans and locks, authenticated sends: what every other flow group calls to act as a
    machine. Holds the process's recent login failures (shared with the callers that waited for them)."""

    def __init__(
        self, storage: StorageInterface, config: CAPIClientConfig, endpoints: Endpoints, retry: RetryPolicy
    ) -> None:
        super().__init__(storage, config, endpoints, retry)
        self._login_failures: dict[str, tuple[float, CAPIError]] = {}  # machine id -> (monotonic time, error)

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

    def default_machine_id(self) -> Flow[str]:
        """The first stored machine's id, or a newly generated and registered machine's."""
        machines = yield from self._store(self.storage.list_machines)
        if machines:
            return str(machines[0].machine_id)
        machine = yield from self.register_machine()
        return machine.machine_id
