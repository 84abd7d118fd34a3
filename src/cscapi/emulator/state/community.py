"""The community blocklist: decisions keyed ``(scope, value, scenario)``, their expiry, tombstones and versions
(what deltas are computed from)."""

from __future__ import annotations

import heapq
import json
import uuid as uuid_mod
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from cscapi.emulator.community import DEFAULT_SCENARIO, SeedDecision, normalise_value
from cscapi.emulator.state.accounts import MachineRecord
from cscapi.emulator.state.base import ApiError, DecisionKey, StateContext, decision_seconds, rfc3339

__all__ = ["Community", "CommunityDecision"]

_TOMBSTONE_PRUNE_AT = 50_000


def _int_duration(seconds: int) -> str:
    """Whole seconds as a Go duration (``86399`` -> ``23h59m59s``), like ``format_go_duration`` but faster."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(slots=True)
class CommunityDecision:
    """One community-blocklist decision, alive until ``expires_at``; ``version`` orders changes for deltas."""

    id: int
    uuid: str
    value: str
    scope: str
    scenario: str
    expires_at: float
    created_at: float
    version: int
    value_json: str = ""

    def __post_init__(self) -> None:
        if not self.value_json:
            v = self.value
            plain = v.isascii() and v.isprintable() and '"' not in v and "\\" not in v
            self.value_json = f'"{v}"' if plain else json.dumps(v)

    @property
    def key(self) -> DecisionKey:
        """``(scope, value, scenario)``: what identifies a community decision."""
        return (self.scope, self.value, self.scenario)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (persistence)."""
        out = asdict(self)
        del out["value_json"]
        return out


class Community:
    """The live decisions (insertion order is version order: deltas rely on it), their expiry heap, and the
    tombstones of removed ones."""

    def __init__(self, ctx: StateContext) -> None:
        self.ctx = ctx
        self.clear()

    def clear(self) -> None:
        """An empty list at version 0."""
        # Community decisions and their tombstones are keyed (scope, value, scenario): one value can carry the
        # decisions of several scenarios, as on the real CAPI. Insertion order is version order (deltas rely on it).
        self.decisions: dict[DecisionKey, CommunityDecision] = {}
        self.tombstones: dict[DecisionKey, dict[str, Any]] = {}
        self._live: dict[tuple[str, str], set[str]] = {}  # (scope, value) -> scenarios of its live decisions
        self._heap: list[tuple[float, int, DecisionKey]] = []
        self.version = 0
        self._next_id = 1

    def load(self, meta: dict[str, Any]) -> None:
        """Read the decisions and tombstones back from the state file."""
        store = self.ctx.store
        assert store is not None
        self.version = int(meta.get("version", 0))
        for body in sorted(store.rows("decisions"), key=lambda d: d["version"]):
            d = CommunityDecision(**body)
            self._put(d)
            heapq.heappush(self._heap, (d.expires_at, d.id, d.key))
            self._next_id = max(self._next_id, d.id + 1)
        for body in sorted(store.rows("tombstones"), key=lambda t: t["version"]):
            self.tombstones[(body["scope"], body["value"], body["scenario"])] = body

    def add_seeds(self, seeds: list[SeedDecision], now: float) -> None:
        """Bulk-load already canonical seed decisions (start and reset): no re-parsing of values."""
        self.version += 1
        for s in seeds:
            d = CommunityDecision(
                self._next_id, s.uuid, s.value, s.scope, s.scenario, now + s.remaining, now, self.version
            )
            self._next_id += 1
            self._put(d)
        self._heap = [(d.expires_at, d.id, key) for key, d in self.decisions.items()]
        heapq.heapify(self._heap)
        if self.ctx.store is not None:
            self.ctx.store.save_decisions([d.to_dict() for d in self.decisions.values()], [], [], self.version)

    def _put(self, d: CommunityDecision) -> bool:
        """Insert ``d`` (last in version order), replacing a decision with the same key; True if it replaced one."""
        key = d.key
        replaced = self.decisions.pop(key, None) is not None
        self.decisions[key] = d
        self._live.setdefault((d.scope, d.value), set()).add(d.scenario)
        return replaced

    def _is_live(self, scope: str, value: str, only: set[str] | None = None) -> bool:
        """Whether ``value`` still has a live decision (among the scenarios in ``only``, when given)."""
        scenarios = self._live.get((scope, value))
        if not scenarios:
            return False
        return only is None or not scenarios.isdisjoint(only)

    def add_decisions(
        self, items: Iterable[dict[str, Any]], now: float | None = None
    ) -> tuple[list[CommunityDecision], int]:
        """Add or replace community decisions: ``{value, scope?, scenario?, duration (Go string or seconds), uuid?}``.

        A decision is identified by ``(scope, value, scenario)``: decisions of other scenarios on the same value are
        kept; one with the same scenario is replaced (its duration restarts). Within one call, a later item with
        the same key wins. Returns ``(decisions put in force, how many of them replaced a live one)``.
        Raises ``ApiError(400)`` naming the first bad item; nothing is applied then.
        """
        with self.ctx.lock:
            now = self.ctx.clock() if now is None else now
            prepared: dict[DecisionKey, tuple[float, str | None]] = {}
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ApiError(400, f"decisions[{i}] must be an object")
                if item.get("scope") is not None and not isinstance(item["scope"], str):
                    raise ApiError(400, f"decisions[{i}].scope must be a string such as ip or range")
                try:
                    value, scope = normalise_value(item.get("value", ""), item.get("scope"))
                except (ValueError, TypeError) as exc:
                    raise ApiError(400, f"decisions[{i}].value: not an IP address or range ({exc})") from None
                scenario = item.get("scenario") or DEFAULT_SCENARIO
                if not isinstance(scenario, str):
                    raise ApiError(400, f"decisions[{i}].scenario must be a string")
                seconds = decision_seconds(item.get("duration", 86400.0), f"decisions[{i}].duration")
                u = item.get("uuid")
                key = (scope, value, scenario)
                prepared.pop(key, None)  # a later item with the same key wins
                prepared[key] = (seconds, u if isinstance(u, str) else None)
            self.version += 1
            added: list[CommunityDecision] = []
            replaced = 0
            for (scope, value, scenario), (seconds, u) in prepared.items():
                key = (scope, value, scenario)
                self.tombstones.pop(key, None)
                d = CommunityDecision(
                    self._next_id, u or str(uuid_mod.uuid4()), value, scope, scenario, now + seconds, now, self.version
                )
                self._next_id += 1
                replaced += self._put(d)
                heapq.heappush(self._heap, (d.expires_at, d.id, key))
                added.append(d)
            if self.ctx.store is not None:
                self.ctx.store.save_decisions([d.to_dict() for d in added], [], [], self.version)
            return added, replaced

    def _tombstone(self, keys: list[DecisionKey], expire: bool) -> int:
        """Turn the decisions under ``keys`` into tombstones (one new version); returns how many existed."""
        self.version += 1
        stones = []
        now = self.ctx.clock()
        for key in keys:
            d = self.decisions.pop(key, None)
            if d is None:
                continue
            scenarios = self._live.get((d.scope, d.value))
            if scenarios is not None:
                scenarios.discard(d.scenario)
                if not scenarios:
                    del self._live[(d.scope, d.value)]
            stone = {
                "scope": d.scope,
                "value": d.value,
                "scenario": d.scenario,
                "uuid": d.uuid,
                "id": d.id,
                "version": self.version,
                "removed_at": now,
                "reason": "expired" if expire else "deleted",
            }
            self.tombstones.pop(key, None)
            self.tombstones[key] = stone
            stones.append(stone)
        if stones and self.ctx.store is not None:
            self.ctx.store.save_decisions([], stones, [], self.version)
        return len(stones)

    def remove_decisions(self, values: Iterable[str], *, expire: bool = False, scenario: str | None = None) -> int:
        """Delete (or mark expired) the community decisions on these values (only ``scenario``'s, when given);
        returns how many decisions existed."""
        with self.ctx.lock:
            wanted = set()
            for v in values:
                try:
                    wanted.add(normalise_value(v)[0])
                except (ValueError, TypeError):
                    wanted.add(str(v))
            keys = [k for k in self.decisions if k[1] in wanted and (scenario is None or k[2] == scenario)]
            return self._tombstone(keys, expire)

    def expire_due(self) -> int:
        """Turn every decision whose time has come into a tombstone (cheap when nothing is due)."""
        with self.ctx.lock:
            now = self.ctx.clock()
            due: list[DecisionKey] = []
            while self._heap and self._heap[0][0] <= now:
                _, did, key = heapq.heappop(self._heap)
                d = self.decisions.get(key)
                if d is not None and d.id == did:
                    due.append(key)
            return self._tombstone(due, True) if due else 0

    def list_decisions(self) -> list[dict[str, Any]]:
        """The live community decisions with their remaining seconds."""
        with self.ctx.lock:
            self.expire_due()
            now = self.ctx.clock()
            return [
                {
                    "id": d.id,
                    "uuid": d.uuid,
                    "value": d.value,
                    "scope": d.scope,
                    "scenario": d.scenario,
                    "remaining": max(0.0, d.expires_at - now),
                    "until": rfc3339(d.expires_at),
                }
                for d in self.decisions.values()
            ]

    def groups_json(self, decisions: Iterable[CommunityDecision], now: float) -> str:
        """The v3 ``new`` array: decisions grouped by (scenario, scope), durations from ``now``."""
        groups: dict[tuple[str, str], list[str]] = {}
        memo: dict[int, str] = {}
        for d in decisions:
            remaining = round(d.expires_at - now)
            if remaining < 1:
                remaining = 1
            dur = memo.get(remaining)
            if dur is None:
                dur = memo[remaining] = _int_duration(remaining)
            key = (d.scenario, d.scope)
            bucket = groups.get(key)
            if bucket is None:
                bucket = groups[key] = []
            bucket.append('{"value":' + d.value_json + ',"duration":"' + dur + '"}')
        parts = [
            '{"scenario":'
            + json.dumps(scenario)
            + ',"scope":'
            + json.dumps(scope)
            + ',"decisions":['
            + ",".join(items)
            + "]}"
            for (scenario, scope), items in groups.items()
        ]
        return "[" + ",".join(parts) + "]"

    def changes_since(
        self, since: int, only: tuple[str, ...] | None = None
    ) -> tuple[list[CommunityDecision], list[dict[str, Any]]]:
        """Decisions put in force and tombstones laid since version ``since`` (among ``only``'s scenarios)."""
        wanted = set(only) if only is not None else None
        new: list[CommunityDecision] = []
        for d in reversed(self.decisions.values()):
            if d.version <= since:
                break
            if wanted is None or d.scenario in wanted:
                new.append(d)
        new.reverse()
        # `deleted` removes every CAPI decision on a value (protocol notes §6.2): a value is only reported once none
        # of its decisions this machine is served remains, however many of them were removed.
        gone: list[dict[str, Any]] = []
        for stone in reversed(self.tombstones.values()):
            if stone["version"] <= since:
                break
            if (wanted is None or stone["scenario"] in wanted) and not self._is_live(
                stone["scope"], stone["value"], wanted
            ):
                gone.append(stone)
        gone.reverse()
        return new, gone

    def prune_tombstones(self, machines: Iterable[MachineRecord]) -> None:
        """Drop the tombstones every machine has pulled past, once there are many."""
        if len(self.tombstones) < _TOMBSTONE_PRUNE_AT:
            return
        pulled = [m.last_pull_version for m in machines if m.last_pull_version is not None]
        floor = min(pulled) if pulled else self.version
        drop: list[DecisionKey] = []
        for key, stone in self.tombstones.items():  # ordered by version: stop at the first one still needed
            if stone["version"] > floor:
                break
            drop.append(key)
        for k in drop:
            del self.tombstones[k]
        if drop and self.ctx.store is not None:
            self.ctx.store.save_decisions([], [], drop, self.version)
