"""What every flow group shares: the wiring (storage, config, endpoints, retry policy) and the primitive steps.

The primitive steps are small flows of :mod:`cscapi.runtime` effects: a storage call, the time, a request with
retries (backoff, jitter, Retry-After read against the runtime's clock), and the release of what a flow holds (a
claim, a login lock) safe on every exit, including a flow closed mid-way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from cscapi._config import CAPIClientConfig
from cscapi.errors import CAPIError, StorageError
from cscapi.models import Machine
from cscapi.protocol import (
    Endpoints,
    NetworkFailure,
    Request,
    Response,
    RetryPolicy,
    error_for,
    failure_error,
    safe_url,
)
from cscapi.runtime import NOW, Flow, HttpCall, Sleep, StorageCall
from cscapi.storage import StorageInterface

__all__ = ["LOGIN_REFUSED", "FlowBase"]

T = TypeVar("T")

LOGIN_REFUSED = "CAPI refused the login"
"""Start of ``Machine.failure_reason`` while a machine whose credentials CAPI refused waits out ``failing_cooldown``:
no login is attempted for it meanwhile (CAPI counts failed logins towards its ban too)."""


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


class _LeaseLost(Exception):
    """Raised by ``Core._request`` when its ``before`` hook says no signal of the request is still ours to send."""


_Before = Callable[[Request], Flow["Request | None"]]


def _release_name(release: StorageCall) -> str:
    if getattr(release.fn, "__name__", "") == "release_claim":
        return f"release {len(release.args[1])} claimed signals"
    return f"release the login lock of machine {release.args[0]}"


class Holdings:
    """What the flows of one client hold right now (login locks, claimed signals), each with the storage calls that
    give it back: ``take`` hands them to a caller abandoning a flow that cannot run its own cleanup (a worker thread
    stuck in I/O at shutdown), so other senders need not wait for the lock's or the lease's lapse."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[object, Callable[[], list[StorageCall]]] = {}

    def hold(self, releases: Callable[[], list[StorageCall]]) -> object:
        """Record a holding; ``releases()`` gives the calls that release it. Returns the key to ``drop`` it with."""
        key = object()
        with self._guard:
            self._held[key] = releases
        return key

    def drop(self, key: object) -> bool:
        """Forget a holding its flow is about to release itself; False when ``take`` released it already."""
        with self._guard:
            return self._held.pop(key, None) is not None

    def take(self) -> list[StorageCall]:
        """Every holding's release calls, forgotten here: the caller makes them."""
        with self._guard:
            found, self._held = list(self._held.values()), {}
        return [call for releases in found for call in releases()]


class FlowBase:
    """The wiring shared by the flow groups of one ``Core`` and the primitive steps they are written with."""

    def __init__(
        self, storage: StorageInterface, config: CAPIClientConfig, endpoints: Endpoints, retry: RetryPolicy
    ) -> None:
        self.storage = storage
        self.config = config
        self.log: logging.Logger = config.logger
        self.endpoints = endpoints
        self.retry = retry
        self.scenarios = list(config.scenarios)
        self._config_scenarios = frozenset(self.scenarios)
        self.held = Holdings()  # a flow group acting as machines shares its AuthFlows' (see SignalFlows)

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

    def _holding(self, body: Flow[T], release: StorageCall) -> Flow[T]:
        """Run ``body``, then ``release`` whatever happens (a ``try/finally`` that is safe to close).

        A flow closed mid-way (``close()``: a discarded task, a SIGTERM unwinding a driver) gets ``GeneratorExit``
        and must not yield again ("generator ignored GeneratorExit"): the release is then called directly.
        """
        key = self.held.hold(lambda: [release])  # for an abandoning caller: ``Holdings.take``
        try:
            result = yield from body
        except GeneratorExit:
            if self.held.drop(key):
                self._release_now(release)
            raise
        except BaseException:
            if self.held.drop(key):
                yield from self._release(release)
            raise
        if self.held.drop(key):
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
