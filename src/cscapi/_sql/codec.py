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
from typing import Any, TypeVar

from cscapi.errors import StorageError, ValidationError
from cscapi.models import Context, Signal, SignalDecision, Source

from .schema import QUEUED, SENT

__all__ = ["check_length", "payload_of", "signal_from_row", "signal_row"]

_LOCAL_FIELDS = ("sent", "alert_id")
_D = TypeVar("_D")
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
    """The signal as compact JSON: ``dataclasses.asdict`` without the local fields (hand-rolled: faster)."""
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
        "added_at": now,
        "sent_at": now if signal.sent else None,
    }


def _keys(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


_SIGNAL_KEYS = _keys(Signal) - set(_LOCAL_FIELDS)  # exactly the keys payload_of writes
_SOURCE_KEYS = _keys(Source)
_DECISION_KEYS = _keys(SignalDecision)
_CONTEXT_KEYS = _keys(Context)
# Adopting a decoded dict as an instance's __dict__ needs plain (not slotted) dataclasses.
_ADOPT = not any(hasattr(cls, "__slots__") for cls in (Signal, Source, SignalDecision, Context))
_new = object.__new__


def _adopt(cls: type[_D], data: dict[str, Any]) -> _D:
    """An instance whose fields are ``data`` (which has exactly the class's fields): no __init__ call."""
    obj = _new(cls)
    obj.__dict__ = data
    return obj


def _exact(items: Any, keys: frozenset[str]) -> bool:
    """True for None or a list of dicts with exactly these keys."""
    if items is None:
        return True
    return type(items) is list and all(type(item) is dict and item.keys() == keys for item in items)


def _rebuild(data: Any) -> Signal:
    """The signal of a decoded payload.

    A payload this version wrote (exactly ``payload_of``'s keys, nested ones too) is adopted as is: it holds the
    values of a Signal that was already built and validated, so running ``__init__`` again would change nothing
    (cheaper per signal than ``Signal.from_dict``). Any other shape (an older or foreign payload) goes through the
    constructors, then ``Signal.from_dict`` (unknown keys ignored, nested values coerced).
    """
    if type(data) is not dict:
        raise TypeError(f"the payload is a JSON {type(data).__name__}, not an object")
    if _ADOPT and data.keys() == _SIGNAL_KEYS:
        source, decisions, context = data["source"], data["decisions"], data["context"]
        if (
            (source is None or (type(source) is dict and source.keys() == _SOURCE_KEYS))
            and _exact(decisions, _DECISION_KEYS)
            and _exact(context, _CONTEXT_KEYS)
        ):
            if source is not None:
                data["source"] = _adopt(Source, source)
            if decisions is not None:
                data["decisions"] = [_adopt(SignalDecision, item) for item in decisions]
            if context is not None:
                data["context"] = [_adopt(Context, item) for item in context]
            data["sent"] = False
            data["alert_id"] = None
            return _adopt(Signal, data)
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
