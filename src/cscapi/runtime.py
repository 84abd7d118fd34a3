"""The one sans-I/O runtime: flows are generators that yield *effects*; two drivers execute them.

How a flow is written: a generator function (``Flow[T]``) that never does I/O, never sleeps and never reads a clock
itself. It yields an effect and receives the effect's result (or has its exception thrown in at the ``yield``):

- :class:`HttpCall` -- send a ``Request`` through the driver's transport; receives a ``Response`` or a
  ``NetworkFailure``.
- :class:`Blocking` -- call a blocking function (a store, a file, a lock); :class:`StorageCall` is the same for the
  client's ``StorageInterface`` (a failure comes back as ``StorageError``).
- :class:`Compute` -- CPU-heavy pure work (parsing a stream, building an index).
- :class:`Delegate` -- call a collaborator of the driver's own flavour (a ``DecisionSource``: a ``CAPIClient`` in
  sync, an ``AsyncCAPIClient`` in async); the async driver awaits what it returns.
- :class:`Sleep` -- pause; :class:`Now` -- read a clock (``NOW``: aware UTC datetime, ``EPOCH``: float Unix seconds,
  ``MONOTONIC``: float seconds for durations). Tests drive time by giving the driver fake clocks and sleep.

How it runs: :func:`run_sync` executes each effect blocking (``CAPIClient``, ``RemediationEngine``);
:func:`run_async` awaits HTTP and ``Delegate`` results and runs ``Blocking``/``StorageCall``/``Compute`` in a worker
thread (``asyncio.to_thread``), so the event loop never runs store I/O or heavy work (``AsyncCAPIClient``,
``AsyncRemediationEngine``). These are the only two drivers in the package: the CAPI client's flows
(``cscapi._core``), the remediation engine's (``cscapi.remediation.core``) and the LAPI flows all run on them.

Errors: an exception raised by an effect (any ``BaseException``: a cancellation or Ctrl-C too) is thrown into the flow
at its ``yield``, so a flow can release what it holds with ``try/except``; a flow must never ``yield`` while handling
``GeneratorExit`` (a driver closes a flow it leaves unfinished).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from cscapi.errors import CAPIError, StorageError
from cscapi.timeutil import utcnow

if TYPE_CHECKING:
    from cscapi.protocol import NetworkFailure, Request, Response

__all__ = [
    "EPOCH",
    "MONOTONIC",
    "NOW",
    "SYSTEM_CLOCKS",
    "AsyncSender",
    "Blocking",
    "Clocks",
    "Compute",
    "Delegate",
    "Effect",
    "Flow",
    "HttpCall",
    "Now",
    "Sleep",
    "StorageCall",
    "SyncSender",
    "run_async",
    "run_sync",
]

T = TypeVar("T")


class SyncSender(Protocol):
    """What :func:`run_sync` needs to execute :class:`HttpCall` (``cscapi.transport.SyncTransport``)."""

    def send(self, request: Request) -> Response | NetworkFailure: ...


class AsyncSender(Protocol):
    """What :func:`run_async` needs to execute :class:`HttpCall` (``cscapi.transport.AsyncTransport``)."""

    async def send(self, request: Request) -> Response | NetworkFailure: ...


# ---- effects -----------------------------------------------------------------------------------------------


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", "call")


@dataclass(frozen=True)
class HttpCall:
    """Send ``request``; the flow receives a ``Response`` or a ``NetworkFailure``."""

    request: Request


@dataclass(frozen=True)
class _Call:
    """A function and its arguments (the arguments are never printed: they may hold a Machine or a password)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The called function's name (for logs and for tests driving a flow by hand)."""
        return _name(self.fn)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


@dataclass(frozen=True, repr=False)
class Blocking(_Call):
    """Call a blocking function (inline in sync, in a worker thread in async); its exception is thrown in as is."""

    def failed(self, exc: Exception) -> Exception:
        """The exception thrown into the flow when the call raised ``exc``."""
        return exc


@dataclass(frozen=True, repr=False)
class StorageCall(Blocking):
    """A blocking call on the client's storage; a failure other than a ``CAPIError`` comes back as ``StorageError``."""

    def failed(self, exc: Exception) -> Exception:
        if isinstance(exc, CAPIError):
            return exc
        error = StorageError(f"The storage call {self.name} failed: {type(exc).__name__}: {str(exc)[:200]}.")
        error.__cause__ = exc
        return error


@dataclass(frozen=True, repr=False)
class Compute(Blocking):
    """CPU-heavy pure work: inline when blocking, in a worker thread when async (the loop keeps turning)."""


@dataclass(frozen=True, repr=False)
class Delegate(_Call):
    """Call a collaborator of the driver's flavour: sync gets its result, async awaits it when it is awaitable."""


@dataclass(frozen=True)
class Sleep:
    """Pause for ``seconds`` (blocking in the sync driver, ``asyncio.sleep`` in the async one)."""

    seconds: float


@dataclass(frozen=True)
class Now:
    """Read the driver's clock: ``utc`` an aware UTC datetime, ``epoch`` float Unix seconds, ``monotonic`` float
    seconds only meaningful as differences."""

    kind: Literal["utc", "epoch", "monotonic"] = "utc"


NOW = Now()
EPOCH = Now("epoch")
MONOTONIC = Now("monotonic")
Effect = HttpCall | Blocking | Delegate | Sleep | Now
Flow = Generator[Effect, Any, T]


@dataclass(frozen=True)
class Clocks:
    """The clocks a driver answers ``Now`` effects from (tests hand in fake ones to drive time)."""

    utc: Callable[[], datetime] = utcnow
    epoch: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.perf_counter

    def read(self, now: Now) -> Any:
        if now.kind == "utc":
            return self.utc()
        if now.kind == "epoch":
            return self.epoch()
        return self.monotonic()


SYSTEM_CLOCKS = Clocks()


def _sender(transport: T | None, effect: HttpCall) -> T:
    """The driver's transport, or a ``TypeError`` thrown into a flow that sends while run without one."""
    if transport is None:
        raise TypeError(f"this flow was run without a transport and yielded {effect!r}")
    return transport


def _call(effect: Blocking) -> Any:
    """Make a blocking call (in the caller's thread); a failure comes out as ``effect.failed`` says."""
    try:
        return effect.fn(*effect.args, **effect.kwargs)
    except Exception as exc:
        raise effect.failed(exc) from exc


class _Steps:
    """The stepping both drivers share: iterating gives the flow's effects, each after sending in the previous
    ``result`` or throwing in the previous ``error``; ``Now`` effects are answered here from ``clocks``; ``value``
    is what the flow returned. Used as a context manager: a flow left unfinished is closed, so its cleanup runs."""

    def __init__(self, flow: Flow[Any], clocks: Clocks) -> None:
        self.flow = flow
        self.clocks = clocks
        self.result: Any = None
        self.error: BaseException | None = None
        self.value: Any = None

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        if getattr(self.flow, "gi_frame", None) is not None:
            self.flow.close()

    def __iter__(self) -> _Steps:
        return self

    def __next__(self) -> HttpCall | Blocking | Delegate | Sleep:
        result, error, self.result, self.error = self.result, self.error, None, None
        try:
            while True:
                effect = self.flow.send(result) if error is None else self.flow.throw(error)
                if not isinstance(effect, Now):
                    return effect
                result, error = None, None
                try:
                    result = self.clocks.read(effect)
                except BaseException as exc:
                    error = exc
        except StopIteration as stop:
            self.value = stop.value
            raise StopIteration from None


# ---- the two drivers -------------------------------------------------------------------------------------


def run_sync(
    flow: Flow[T],
    transport: SyncSender | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clocks: Clocks = SYSTEM_CLOCKS,
) -> T:
    """Run a flow to completion, executing each effect blocking."""
    with _Steps(flow, clocks) as steps:
        for effect in steps:
            try:
                if isinstance(effect, HttpCall):
                    steps.result = _sender(transport, effect).send(effect.request)
                elif isinstance(effect, Blocking):
                    steps.result = _call(effect)
                elif isinstance(effect, Delegate):
                    steps.result = effect.fn(*effect.args, **effect.kwargs)
                elif effect.seconds > 0:
                    sleep(effect.seconds)
            except BaseException as exc:
                steps.error = exc
    return steps.value  # type: ignore[no-any-return]


async def run_async(
    flow: Flow[T],
    transport: AsyncSender | None = None,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    clocks: Clocks = SYSTEM_CLOCKS,
) -> T:
    """Run a flow to completion on the event loop: HTTP and delegates awaited, blocking calls and heavy work in a
    worker thread, pauses awaited."""
    import asyncio  # on first use: a program that only runs sync flows never imports it for us

    pause = sleep or asyncio.sleep
    with _Steps(flow, clocks) as steps:
        for effect in steps:
            try:
                if isinstance(effect, Delegate):  # a collaborator's coroutine, or a plain value
                    called = effect.fn(*effect.args, **effect.kwargs)
                    steps.result = await called if isinstance(called, Awaitable) else called
                elif isinstance(effect, Blocking):
                    steps.result = await asyncio.to_thread(_call, effect)
                elif isinstance(effect, HttpCall):
                    steps.result = await _sender(transport, effect).send(effect.request)
                else:
                    await pause(max(0.0, effect.seconds))
            except BaseException as exc:
                steps.error = exc
    return steps.value  # type: ignore[no-any-return]
