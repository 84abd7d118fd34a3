"""Turn validated models into CAPI's JSON shapes: only fields CAPI defines, ``None`` left out.

Local fields (``sent``, ``alert_id``: the local queue id) never go on the wire; ``context`` and ``decisions`` are left
out when empty, as the official clients do.
"""

from __future__ import annotations

from typing import Any

from cscapi.models import Signal

__all__ = ["signal_to_wire", "signals_to_wire"]

_SOURCE_FIELDS = ("scope", "value", "ip", "range", "as_number", "as_name", "cn", "latitude", "longitude")
_DECISION_FIELDS = ("id", "uuid", "duration", "until", "origin", "scenario", "scope", "value", "type", "simulated")


def signal_to_wire(signal: Signal) -> dict[str, Any]:
    """One ``AddSignalsRequestItem`` dict for a signal that went through ``cscapi.signals.validate_signal``."""
    item: dict[str, Any] = {
        "scenario": signal.scenario,
        "scenario_hash": signal.scenario_hash or "",
        "scenario_version": signal.scenario_version or "",
        "message": signal.message or "",
        "start_at": signal.start_at,
        "stop_at": signal.stop_at,
    }
    if signal.scenario_trust:
        item["scenario_trust"] = signal.scenario_trust
    if signal.created_at:
        item["created_at"] = signal.created_at
    if signal.machine_id:
        item["machine_id"] = signal.machine_id
    if signal.uuid:
        item["uuid"] = signal.uuid
    if signal.kind:
        item["kind"] = signal.kind
    source = signal.source
    if source is not None:
        item["source"] = {k: v for k in _SOURCE_FIELDS if (v := getattr(source, k)) is not None}
    if signal.decisions:
        decisions = []
        for decision in signal.decisions:
            d = {k: v for k in _DECISION_FIELDS if (v := getattr(decision, k)) is not None}
            d.setdefault("id", 0)
            decisions.append(d)
        item["decisions"] = decisions
    if signal.context:
        item["context"] = [{"key": c.key, "value": c.value if c.value is not None else ""} for c in signal.context]
    return item


def signals_to_wire(signals: list[Signal]) -> list[dict[str, Any]]:
    """The ``AddSignalsRequest`` array for a batch."""
    return [signal_to_wire(s) for s in signals]
