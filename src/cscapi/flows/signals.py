"""Signals: validate and queue them, then send the queue (claims under a lease, batches per machine, bisection of a
refused batch down to the signal to quarantine, failing machines cooled down), and prune a failing machine's queue."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from cscapi._text import plural
from cscapi.errors import (
    CAPIError,
    ConfigurationError,
    LoginBannedError,
    MachineCoolingDownError,
    RequestRejectedError,
    StorageError,
)
from cscapi.flows._base import FlowBase, _Before, _chunks, _LeaseLost, _login_refused
from cscapi.flows.auth import AuthFlows
from cscapi.limits import MAX_BATCH
from cscapi.machines import token_is_usable
from cscapi.models import Machine, SendReport, SendTally, Signal
from cscapi.protocol import Request, error_for, signals_to_wire
from cscapi.protocol.responses import server_detail
from cscapi.runtime import Flow, StorageCall
from cscapi.signals import as_signal_list, validate_signals
from cscapi.storage import Claim, StorageInterface, check_destinations, queue_signals

__all__ = ["MAX_BATCH_SIZE", "SignalFlows"]

MAX_BATCH_SIZE = MAX_BATCH  # the one copy lives in cscapi.limits
_CLAIM_BATCHES = 4  # claim up to 4 POSTs' worth of signals per storage round trip


def _batch_size(batch_size: object) -> int:
    """Signals per POST, 1 to 250; larger values are capped (the legacy ``batch_size=5000`` was a fetch size)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(
            f"batch_size must be a positive integer (at most {MAX_BATCH_SIZE} go in one request), not {batch_size!r}."
        )
    return min(batch_size, MAX_BATCH_SIZE)


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


def _within_lease(request: Request, batch: _Batch, now: datetime, lease: float) -> Request:
    """``request`` with a deadline ending a tenth of a lease before the claim's lease (at least half a lease is left
    when a try starts): a dripped answer is cut, and the try retried, while the signals are still this sender's."""
    left = (batch.expires_at - now).total_seconds() - lease / 10
    return request.with_deadline(max(left, 0.001))


class SignalFlows(FlowBase):
    """``add_signals``, ``send_signals`` and ``prune_failing_machines_signals``, acting as machines through ``auth``."""

    def __init__(self, auth: AuthFlows) -> None:
        super().__init__(auth.storage, auth.config, auth.endpoints, auth.retry)
        self.auth = auth
        self.held = auth.held  # one registry per client: ``release_locks`` gives back claims and login locks alike

    def add_signals(self, signals: Iterable[Signal], destinations: Sequence[str] | str = ("capi",)) -> Flow[int]:
        """Validate every signal, then queue them all in one storage call (for each of ``destinations``: ``capi``,
        ``lapi``; a storage without destinations is called as before for CAPI); returns how many rows were new."""
        wanted = check_destinations(destinations)
        originals = as_signal_list(signals)  # None, 5: InvalidArgumentError naming the argument, not a TypeError
        validated = validate_signals(originals, reuse=True)  # canonical signals are checked, not copied
        if not validated:
            return 0
        count: int = yield from self._store(queue_signals, self.storage, validated, wanted)
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
        key = self.held.hold(lambda: _open_claims(self.storage, batches))  # for an abandoning caller
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
            self.held.drop(key)
            for release in _open_claims(self.storage, batches):
                self._release_now(release)
            raise
        except BaseException:
            self.held.drop(key)
            for release in _open_claims(self.storage, batches):
                yield from self._release(release)
            raise
        self.held.drop(key)
        for release in _open_claims(self.storage, batches):
            yield from self._release(release)
        report.failed_machines.update(failed)
        held = yield from self._held_machines(set(failed))
        report.errors.update(held)
        self.log.info(
            "send_signals: %d sent, %d quarantined, %s, %s.",
            report.sent,
            report.quarantined,
            plural(report.batches, "POST"),
            plural(len(failed), "failing machine"),
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
                    self.auth._check_ban(machine, now)
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
                machine = yield from self.auth.login(machine_id)
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
                    machine = yield from self.auth.login(machine_id)  # expired during a long run
                before = self._still_held(batch, held)
                response, machine = yield from self.auth._send_as(machine, request, before=before)
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
                    reason = error.message
                    if isinstance(error, RequestRejectedError):  # the server's words, each said once
                        reason = server_detail(error.server_message or "", error.server_errors) or reason
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
        Every try's deadline ends a tenth of a lease before the lease does (``_within_lease``): a POST whose answer
        drips never outlives the lease, so no second sender can claim its signals while it is in flight.
        """

        def before(request: Request) -> Flow[Request | None]:
            if not batch.open:  # given back by an abandoning caller (``release_locks``): nothing here is ours
                return None
            now = yield from self._now()
            lease = float(self.config.claim_lease)
            if batch.expires_at - now >= timedelta(seconds=lease / 2):
                return _within_lease(request, batch, now, lease)
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
                return _within_lease(request, batch, now, lease)
            held.part = part
            if not any(s.alert_id is not None for s in part):
                return None
            narrowed = self.endpoints.signals(signals_to_wire(part))
            auth = request.headers.get("Authorization")
            narrowed = narrowed if auth is None else narrowed.with_header("Authorization", auth)
            return _within_lease(narrowed, batch, now, lease)

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
        self.log.info("Deleted %s of %s.", plural(deleted, "queued signal"), plural(len(failing), "failing machine"))
        return deleted
