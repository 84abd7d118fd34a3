"""What the emulator received: signals (deduplicated by uuid per machine) and recorded payloads (metrics, usage
metrics, decision deletes and syncs, enrollments)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from cscapi.emulator.state.accounts import MachineRecord
from cscapi.emulator.state.base import StateContext, rfc3339

__all__ = ["Inbox"]


class Inbox:
    """Received signals and payloads, oldest first; written to the state file as they arrive."""

    def __init__(self, ctx: StateContext) -> None:
        self.ctx = ctx
        self.clear()

    def clear(self) -> None:
        """Forget everything received."""
        self.signals: list[dict[str, Any]] = []
        self.signal_uuids: dict[str, set[str]] = defaultdict(set)
        self.records: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def load(self) -> None:
        """Read the signals and records back from the state file."""
        store = self.ctx.store
        assert store is not None
        for rec in store.rows("signals"):
            self.signals.append(rec)
            u = rec["signal"].get("uuid")
            if isinstance(u, str):
                self.signal_uuids[rec["machine_id"]].add(u)
        for kind, body in store.records():
            self.records[kind].append(body)

    def record(self, kind: str, body: dict[str, Any]) -> None:
        """Keep one record of ``kind`` (the caller holds the lock)."""
        self.records[kind].append(body)
        if self.ctx.store is not None:
            self.ctx.store.add_record(kind, body)

    def add_signals(self, m: MachineRecord, items: list[dict[str, Any]], api: str) -> tuple[int, int]:
        """Record signals, skipping uuids this machine already sent; returns ``(accepted, duplicates)``."""
        with self.ctx.lock:
            now = self.ctx.clock()
            seen = self.signal_uuids[m.machine_id]
            rows: list[dict[str, Any]] = []
            duplicates = 0
            for item in items:
                u = item.get("uuid")
                if isinstance(u, str) and u:
                    if u in seen:
                        duplicates += 1
                        continue
                    seen.add(u)
                rows.append({"machine_id": m.machine_id, "received_at": now, "api": api, "signal": item})
            self.signals.extend(rows)
            if rows:
                m.signals_count += len(rows)
                if self.ctx.store is not None:
                    self.ctx.store.add_signals(rows)
                    self.ctx.save_machine(m)
            return len(rows), duplicates

    def record_payload(self, kind: str, m: MachineRecord, body: Any, api: str) -> None:
        """Keep a received payload (``metrics``, ``usage_metrics``, ``decisions_delete``, ``decisions_sync``)."""
        with self.ctx.lock:
            self.record(
                kind, {"machine_id": m.machine_id, "received_at": rfc3339(self.ctx.clock()), "api": api, "body": body}
            )

    def query_signals(self, machine_id: str | None = None, scenario: str | None = None) -> list[dict[str, Any]]:
        """Received signals, oldest first, optionally for one machine and/or one scenario."""
        with self.ctx.lock:
            out = []
            for rec in self.signals:
                if machine_id is not None and rec["machine_id"] != machine_id:
                    continue
                if scenario is not None and rec["signal"].get("scenario") != scenario:
                    continue
                out.append({**rec, "received_at": rfc3339(rec["received_at"])})
            return out
