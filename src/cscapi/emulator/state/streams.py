"""The decision-stream answers (``GET /v3/decisions/stream`` and ``/v2/decisions/stream``), made from the community
list and the published lists; each pull moves the machine's position on. Full v3 answers are cached."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cscapi.emulator.state.accounts import Accounts, MachineRecord
from cscapi.emulator.state.base import StateContext
from cscapi.emulator.state.community import Community, CommunityDecision
from cscapi.emulator.state.lists import Lists
from cscapi.timeutil import format_go_duration

__all__ = ["Streams"]


class Streams:
    """Builds pull answers; keeps the cached full-list JSON (per scenario set) and whole v3 answers."""

    def __init__(self, ctx: StateContext, accounts: Accounts, community: Community, lists: Lists) -> None:
        self.ctx = ctx
        self.accounts = accounts
        self.community = community
        self.lists = lists
        self._snapshots: dict[tuple[str, ...] | None, tuple[int, float, str]] = {}
        self._responses: dict[tuple[Any, ...], bytes] = {}

    def clear(self) -> None:
        """Forget the cached answers."""
        self._snapshots.clear()
        self._responses.clear()

    def _scenario_filter(self, m: MachineRecord) -> tuple[str, ...] | None:
        """The scenarios this machine's list is tailored to (``tailor_to_scenarios``), or ``None`` for all."""
        return tuple(m.scenarios) if self.ctx.config.tailor_to_scenarios else None

    def _snapshot_json(self, now: float, only: tuple[str, ...] | None) -> tuple[str, tuple[Any, ...]]:
        """The full list as JSON, rebuilt when the list changed or the cached one is ``snapshot_max_age`` old."""
        snap = self._snapshots.get(only)
        max_age = self.ctx.config.snapshot_max_age if self.ctx.config.snapshot_cache else 0.0
        if snap is not None and snap[0] == self.community.version and 0.0 <= now - snap[1] < max_age:
            return snap[2], (snap[0], snap[1], only)
        chosen: Iterable[CommunityDecision] = self.community.decisions.values()
        if only is not None:
            wanted = set(only)
            chosen = (d for d in self.community.decisions.values() if d.scenario in wanted)
        text = self.community.groups_json(chosen, now)
        if snap is not None and snap[0] != self.community.version:
            self._snapshots.clear()
            self._responses.clear()
        if len(self._snapshots) >= 16:  # a handful of scenario sets at most; forget the rest
            self._snapshots.clear()
            self._responses.clear()
        self._snapshots[only] = (self.community.version, now, text)
        return text, (self.community.version, now, only)

    def stream_v3(
        self, m: MachineRecord, *, startup: bool, community_pull: bool, additional_pull: bool, base_url: str
    ) -> bytes:
        """The JSON body of ``GET /v3/decisions/stream`` for this machine, and its pull position moves on.

        Full (startup) answers are cached per list version for up to ``snapshot_max_age`` seconds.
        """
        with self.ctx.lock:
            self.community.expire_due()
            now = self.ctx.clock()
            m.last_pull_at = now
            if community_pull and (startup or m.last_pull_version is None):
                new_json, ident = self._snapshot_json(now, self._scenario_filter(m))
                m.last_pull_version = self.community.version
                self.ctx.save_machine(m)
                key = (ident, self.lists.lists_version, base_url, additional_pull)
                body = self._responses.get(key)
                if body is None:
                    links = json.dumps(self.lists.links(base_url, additional_pull), separators=(",", ":"))
                    body = ('{"new":' + new_json + ',"deleted":[],"links":' + links + "}").encode()
                    if self.ctx.config.snapshot_cache:
                        if len(self._responses) >= 8:  # stale answers (older snapshots, older lists) go here
                            self._responses.clear()
                        self._responses[key] = body
                return body
            new_json = "[]"
            deleted_json = "[]"
            if community_pull:
                assert m.last_pull_version is not None
                new, gone = self.community.changes_since(m.last_pull_version, self._scenario_filter(m))
                new_json = self.community.groups_json(new, now)
                by_scope: dict[str, dict[str, None]] = {}  # ordered sets: a value once, however many decisions left
                for stone in gone:
                    by_scope.setdefault(stone["scope"], {})[stone["value"]] = None
                deleted_json = json.dumps(
                    [{"scope": scope, "decisions": list(values)} for scope, values in by_scope.items()],
                    separators=(",", ":"),
                )
                m.last_pull_version = self.community.version
            links = json.dumps(self.lists.links(base_url, additional_pull), separators=(",", ":"))
            self.ctx.save_machine(m)
            self.community.prune_tombstones(self.accounts.machines.values())
            return ('{"new":' + new_json + ',"deleted":' + deleted_json + ',"links":' + links + "}").encode()

    def stream_v2(self, m: MachineRecord, *, startup: bool, community_pull: bool, additional_pull: bool) -> bytes:
        """The flat, LAPI-style ``GET /v2/decisions/stream`` answer (protocol notes §6.4): no links, lists inline."""
        with self.ctx.lock:
            self.community.expire_due()
            now = self.ctx.clock()
            new: list[dict[str, Any]] = []
            deleted: list[dict[str, Any]] = []
            if community_pull:
                only = self._scenario_filter(m)
                if startup or m.last_pull_version is None:
                    chosen: Iterable[CommunityDecision] = [
                        d for d in self.community.decisions.values() if only is None or d.scenario in only
                    ]
                    gone: list[dict[str, Any]] = []
                else:
                    chosen, gone = self.community.changes_since(m.last_pull_version, only)
                for d in chosen:
                    new.append(
                        {
                            "id": d.id,
                            "uuid": d.uuid,
                            "origin": "CAPI",
                            "type": "ban",
                            "scope": d.scope.capitalize(),
                            "value": d.value,
                            "scenario": d.scenario,
                            "duration": format_go_duration(max(1, round(d.expires_at - now))),
                            "simulated": False,
                        }
                    )
                for stone in gone:
                    deleted.append(
                        {
                            "id": stone["id"],
                            "uuid": stone["uuid"],
                            "origin": "CAPI",
                            "type": "ban",
                            "scope": stone["scope"].capitalize(),
                            "value": stone["value"],
                            "scenario": stone["scenario"],
                            "duration": "0s",
                            "simulated": False,
                        }
                    )
                m.last_pull_version = self.community.version
            if additional_pull:
                self.lists.v2_changes(m, startup, now, new, deleted)
            m.last_pull_at = now
            self.ctx.save_machine(m)
            return json.dumps({"new": new, "deleted": deleted}, separators=(",", ":")).encode()
