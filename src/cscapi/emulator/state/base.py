"""What every part of the emulator's state shares: the refusal type, time formats, admin durations, and the
context (configuration, clock, the one lock, the state file) the parts are built on."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cscapi.emulator.config import MAX_SECONDS, EmulatorConfig
from cscapi.emulator.persistence import StateFile
from cscapi.timeutil import parse_go_duration

if TYPE_CHECKING:
    from cscapi.emulator.state.accounts import MachineRecord

__all__ = [
    "MAX_DECISION_SECONDS",
    "ApiError",
    "DecisionKey",
    "StateContext",
    "decision_seconds",
    "rfc3339",
    "rfc3339_seconds",
]


def rfc3339(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with microseconds."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_seconds(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC, whole seconds."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """A refusal with an HTTP status, turned into an ``ErrorResponse`` by the app."""

    def __init__(self, status: int, message: str, errors: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


DecisionKey = tuple[str, str, str]  # (scope, value, scenario)

#: The longest decision an admin may add (10 years): longer ones are typos, and would overflow date arithmetic.
MAX_DECISION_SECONDS = MAX_SECONDS


def decision_seconds(raw: Any, where: str) -> float:
    """A duration from admin input (a Go duration such as ``"24h"``, or seconds) in ``(0, 10 years]``.

    ``ApiError(400)`` naming ``where`` otherwise: not a duration, negative or zero, NaN, infinite, or absurdly long
    (``"99999999999h"``, ``1e308``), which would overflow date arithmetic later.
    """
    shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:40] + "..."
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ApiError(400, f"{where}: {shown} is not a duration", "send a Go duration like 24h, or seconds")
    try:
        seconds = parse_go_duration(raw) if isinstance(raw, str) else float(raw)
    except (ValueError, OverflowError):
        raise ApiError(400, f"{where}: {shown} is not a Go duration like 24h") from None
    if not 0 < seconds <= MAX_DECISION_SECONDS:  # also refuses NaN
        raise ApiError(
            400, f"{where}: {shown} is out of range", "a duration must be more than 0s and at most 87600h (10 years)"
        )
    return seconds


class StateContext:
    """The configuration, the clock, the one re-entrant lock every part takes, and the state file (or ``None``).

    One lock for all parts: a pull reads the community list, the lists and a machine at once, and the parts call
    each other while holding it, so per-part locks would only add lock-order risks.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.clock = config.clock or time.time
        self.lock = threading.RLock()
        self.store = StateFile(config.state_path) if config.state_path else None

    def save_machine(self, m: MachineRecord) -> None:
        """Persist one machine (no-op without a state file)."""
        if self.store is not None:
            self.store.save_machine(m.machine_id, asdict(m))
