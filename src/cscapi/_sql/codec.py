"""Signals to rows and back: the whole signal is kept as JSON text, a few fields are copied into columns.

Local fields (``sent``, ``alert_id``) are not part of the payload: they live in the ``status`` and ``alert_id``
columns. Column lengths are checked here so that no database silently truncates anything (MariaDB's INSERT IGNORE
would).
"""

from __future__ import annotations

import dataclasses
import json
import uuid as uuid_module
from datetime import datetime
from typing import Any

from cscapi.errors import StorageError, ValidationError
from cscapi.models import Signal, SignalDecision, Source

from .schema import QUEUED, SENT

__all__ = ["check_length", "payload_of", "signal_from_row", "signal_row"]

_LOCAL_FIELDS = ("sent", "alert_id")
_LIMITS = {"uuid": 64, "machine_id": 128, "scenario": 255, "created_at": 64}
# One encoder for every payload: json.dumps with non-default arguments would build a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_decode = json.JSONDecoder().decode


def check_length(name: str, value: str | None, limit: int) -> None:
    """Refuse a value longer than its column (rather than let a database truncate it), or holding NUL."""
    if value is None:
        return
    if len(value) > limit:
        raise ValidationError(
            f"{name} is {len(value)} characters long; the storage accepts at most {limit}.",
            field=name,
        )
    if "\x00" in value:  # PostgreSQL cannot store NUL in text: refuse it everywhere alike
        raise ValidationError(f"{name} contains a NUL character.", field=name)


def _plain(value: Any) -> Any:
    """A JSON-ready copy of one nested model (dataclasses become dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dict(value.__dict__) if hasattr(value, "__dict__") else dataclasses.asdict(value)
    return value


def payload_of(signal: Signal) -> str:
    """The signal as compact JSON: ``dataclasses.asdict`` without the local fields (hand-rolled: 5x faster)."""
    data = dict(signal.__dict__)
    for name in _LOCAL_FIELDS:
        data.pop(name, None)
    data["source"] = _plain(data.get("source"))
    if data.get("decisions") is not None:
        data["decisions"] = [_plain(d) for d in data["decisions"]]
    if data.get("context") is not None:
        data["context"] = [_plain(c) for c in data["context"]]
    try:
        return _encode(data)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"signal {signal.uuid!r} cannot be stored as JSON: {exc}", field="signal") from None


def signal_row(signal: Signal, now: datetime | str) -> dict[str, Any]:
    """The ``signals`` row of a new signal; gives the signal a uuid4 if it has none.

    ``now`` may be given already formatted (``schema.format_utc``): a batch formats it once, not once per row.
    """
    if not isinstance(signal, Signal):
        raise ValidationError(f"expected a Signal, got {type(signal).__name__}", field="signal")
    if not signal.uuid:
        signal.uuid = str(uuid_module.uuid4())
    for name, limit in _LIMITS.items():
        value = getattr(signal, name)
        check_length(name, value if isinstance(value, str) or value is None else str(value), limit)
    return {
        "uuid": signal.uuid,
        "machine_id": signal.machine_id,
        "scenario": signal.scenario,
        "created_at": signal.created_at,
        "payload": payload_of(signal),
        "status": SENT if signal.sent else QUEUED,
        "attempts": 0,
        "added_at": now,
        "sent_at": now if signal.sent else None,
    }


def _rebuild(data: Any) -> Signal:
    """The signal of a payload: built directly when it has exactly the shape ``payload_of`` writes (fast), else
    through ``Signal.from_dict`` (older or foreign payloads: unknown keys ignored, nested values coerced)."""
    if type(data) is not dict:
        raise TypeError(f"the payload is a JSON {type(data).__name__}, not an object")
    try:
        fields = dict(data)
        source = fields.get("source")
        if type(source) is dict:
            fields["source"] = Source(**source)
        decisions = fields.get("decisions")
        if type(decisions) is list:
            fields["decisions"] = [SignalDecision(**d) for d in decisions]
        return Signal(**fields)
    except TypeError:  # an unknown key or a value of another shape
        return Signal.from_dict(data)


def signal_from_row(alert_id: int, payload: str, status: str) -> Signal:
    """Rebuild the stored signal, with its local fields."""
    try:
        signal = _rebuild(_decode(payload))
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"The stored signal with alert_id {alert_id} cannot be read ({type(exc).__name__}).",
            hint="The row was changed outside cscapi; delete it with delete_signals([alert_id]).",
        ) from None
    signal.alert_id = int(alert_id)
    signal.sent = status == SENT
    return signal
