"""Helpers shared by the storage tests (no tests here): signal factories and a storage fixture factory."""

from __future__ import annotations

import uuid
from typing import Any

from cscapi.models import Signal

MACHINE_A = "a" * 48
MACHINE_B = "b" * 48


def make_signal(i: int = 0, machine_id: str = MACHINE_A, **overrides: Any) -> Signal:
    """A realistic decision signal (ban 24h) with a fresh uuid."""
    data: dict[str, Any] = {
        "scenario": "crowdsecurity/ssh-bf",
        "source": {"scope": "ip", "value": f"192.0.2.{i % 250}", "ip": f"192.0.2.{i % 250}", "cn": "FR"},
        "machine_id": machine_id,
        "created_at": "2023-11-17T10:20:46.123456Z",
        "start_at": "2023-11-17T10:20:40.000001Z",
        "stop_at": "2023-11-17T10:20:46.000000Z",
        "uuid": str(uuid.uuid4()),
        "message": f"attack {i}",
        "scenario_version": "0.3",
        "scenario_hash": "abc",
        "decisions": [{"duration": "24h", "type": "ban", "scope": "ip", "value": f"192.0.2.{i % 250}", "id": 7}],
        "context": [{"key": "target_user", "value": "root"}],
    }
    data.update(overrides)
    return Signal.from_dict(data)


def make_signals(n: int, machine_id: str = MACHINE_A, start: int = 0) -> list[Signal]:
    return [make_signal(i, machine_id) for i in range(start, start + n)]
