"""Published blocklists and allowlists: publishing, removal, the v3 pull's download links, and the v2 pull's inline
list entries (only what changed since the machine's previous pull)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from cscapi.emulator.community import normalise_value
from cscapi.emulator.state.accounts import MachineRecord
from cscapi.emulator.state.base import ApiError, StateContext, decision_seconds, rfc3339_seconds
from cscapi.timeutil import parse_go_duration, parse_timestamp

__all__ = ["Lists"]

#: A v2 list entry is sent again when the engine's copy would expire within this (LAPI's 2 h pull + 15 min).
_V2_REFRESH_MARGIN = 2 * 3600 + 15 * 60


class Lists:
    """The published lists by id; ``lists_version`` counts every change (it keys the cached pull answers)."""

    def __init__(self, ctx: StateContext) -> None:
        self.ctx = ctx
        self.lists_version = 0
        self.clear()

    def clear(self) -> None:
        """Unpublish every list (``lists_version`` goes on counting)."""
        self.blocklists: dict[str, dict[str, Any]] = {}
        self.allowlists: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        """Read the published lists back from the state file."""
        store = self.ctx.store
        assert store is not None
        for body in store.lists("blocklist"):
            self.blocklists[body["id"]] = body
        for body in store.lists("allowlist"):
            self.allowlists[body["id"]] = body

    @staticmethod
    def list_id(name: str) -> str:
        """A stable, URL-safe id for a list name."""
        return hashlib.sha256(name.encode()).hexdigest()[:24]

    def _bump_time(self, previous: float | None) -> float:
        now = self.ctx.clock()
        # Last-Modified has one-second resolution: make each change visible to If-Modified-Since.
        return now if previous is None else max(now, float(int(previous)) + 1.0)

    def publish_blocklist(
        self, name: str, content: Iterable[str], remediation: str = "ban", scope: str = "ip", duration: str = "24h"
    ) -> dict[str, Any]:
        """Create or replace a blocklist (one IP or CIDR per item); 400 names the first bad value."""
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "blocklist name must be a non-empty string")
        for label, value in (("remediation", remediation), ("scope", scope)):
            if not isinstance(value, str) or not value:
                raise ApiError(400, f"blocklist {label} must be a non-empty string")
        if not isinstance(duration, str):
            raise ApiError(400, f"blocklist duration {duration!r} is not a positive Go duration like 24h")
        decision_seconds(duration, "blocklist duration")
        if isinstance(content, str):
            content = content.splitlines()
        lines: list[str] = []
        for i, raw in enumerate(content):
            if not isinstance(raw, str):
                raise ApiError(400, f"content[{i}] must be a string")
            if not raw.strip():
                continue
            try:
                lines.append(normalise_value(raw)[0])
            except ValueError:
                raise ApiError(400, f"content[{i}]: {raw!r} is not an IP address or range") from None
        with self.ctx.lock:
            now = self.ctx.clock()
            fields = {"remediation": remediation, "scope": scope, "duration": duration, "content": lines}
            return self._put_list("blocklist", name, now, fields)

    def publish_allowlist(self, name: str, items: Iterable[Any] = (), description: str = "") -> dict[str, Any]:
        """Create or replace an allowlist; items are values or ``{value, description?, expiration?}``."""
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "allowlist name must be a non-empty string")
        if not isinstance(description, str):
            raise ApiError(400, "allowlist description must be a string")
        with self.ctx.lock:
            now = self.ctx.clock()
            entries: list[dict[str, Any]] = []
            for i, item in enumerate(items):
                entry = {"value": item} if isinstance(item, str) else item
                if not isinstance(entry, dict):
                    raise ApiError(400, f"items[{i}] must be a string or an object")
                try:
                    value = normalise_value(entry.get("value", ""))[0]
                except (ValueError, TypeError):
                    raise ApiError(
                        400, f"items[{i}].value: {entry.get('value')!r} is not an IP address or range"
                    ) from None
                out: dict[str, Any] = {
                    "value": value,
                    "description": str(entry.get("description") or ""),
                    "created_at": entry.get("created_at") or rfc3339_seconds(now),
                }
                expiration = entry.get("expiration")
                if expiration is not None:
                    try:
                        out["expiration"] = parse_timestamp(expiration).strftime("%Y-%m-%dT%H:%M:%SZ")
                    except ValueError:
                        raise ApiError(400, f"items[{i}].expiration: {expiration!r} is not an RFC 3339 time") from None
                entries.append(out)
            return self._put_list("allowlist", name, now, {"description": description, "items": entries})

    def _put_list(self, kind: str, name: str, now: float, fields: dict[str, Any]) -> dict[str, Any]:
        """Store a list under its id (creation time kept, update time moved on), count the change, persist it."""
        lists = self.blocklists if kind == "blocklist" else self.allowlists
        list_id = self.list_id(name)
        previous = lists.get(list_id)
        body = {
            "id": list_id,
            "name": name,
            **fields,
            "created_at": previous["created_at"] if previous else now,
            "updated_at": self._bump_time(previous["updated_at"] if previous else None),
        }
        lists[list_id] = body
        self.lists_version += 1
        if self.ctx.store is not None:
            self.ctx.store.save_list(kind, list_id, body)
        return body

    def remove_list(self, kind: str, name_or_id: str) -> bool:
        """Unpublish a blocklist or allowlist by name or id; False when there was none."""
        with self.ctx.lock:
            lists = self.blocklists if kind == "blocklist" else self.allowlists
            list_id = name_or_id if name_or_id in lists else self.list_id(name_or_id)
            if lists.pop(list_id, None) is None:
                return False
            self.lists_version += 1
            if self.ctx.store is not None:
                self.ctx.store.save_list(kind, list_id, None)
            return True

    def links(self, base_url: str, additional_pull: bool) -> dict[str, Any]:
        """The ``links`` of a v3 pull: where to download each list (blocklists only with ``additional_pull``)."""
        blocklists = (
            [
                {
                    "name": bl["name"],
                    "url": f"{base_url}downloads/blocklists/{bl['id']}",
                    "remediation": bl["remediation"],
                    "scope": bl["scope"],
                    "duration": bl["duration"],
                }
                for bl in self.blocklists.values()
            ]
            if additional_pull
            else []
        )
        allowlists = [
            {
                "id": al["id"],
                "name": al["name"],
                "description": al["description"],
                "url": f"{base_url}downloads/allowlists/{al['id']}",
                "created_at": rfc3339_seconds(al["created_at"]),
                "updated_at": rfc3339_seconds(al["updated_at"]),
            }
            for al in self.allowlists.values()
        ]
        return {"blocklists": blocklists, "allowlists": allowlists}

    def v2_changes(
        self, m: MachineRecord, startup: bool, now: float, new: list[dict[str, Any]], deleted: list[dict[str, Any]]
    ) -> None:
        """Published-list entries for a v2 pull, inline (v2 has no links): only what changed since this machine's
        previous pull (everything with ``startup``), and a ``deleted`` entry for each value no list holds any more.

        An entry already sent is sent again once the engine's copy (``duration`` from when it was sent) would run
        out before the next pull (LAPI pulls every 2 h; 15 min of margin, as LAPI refetches v3 links).
        """
        current: dict[str, tuple[dict[str, Any], str]] = {}
        for bl in self.blocklists.values():
            for line in bl["content"]:
                key = json.dumps([bl["name"], bl["scope"], line, bl["remediation"], bl["duration"]])
                current.setdefault(key, (bl, line))
        held = {(bl["scope"].lower(), line) for bl, line in current.values()}
        sent = m.v2_list_entries
        reported: set[tuple[str, str, str]] = set()
        for key in [k for k in sent if k not in current]:
            del sent[key]
            name, scope, value, remediation, _duration = json.loads(key)
            # 1.4.6 deletes every `lists` decision on the value: only once no list holds it any more
            if (scope.lower(), value) in held or (scope.lower(), value, remediation) in reported:
                continue
            reported.add((scope.lower(), value, remediation))
            deleted.append(
                {
                    "origin": "lists",
                    "type": remediation,
                    "scope": scope.capitalize(),
                    "value": value,
                    "scenario": name,
                    "duration": "0s",
                    "simulated": False,
                }
            )
        for key, (bl, line) in current.items():
            sent_at = sent.get(key)
            if not startup and sent_at is not None:
                seconds = parse_go_duration(bl["duration"])
                if sent_at + seconds - _V2_REFRESH_MARGIN > now:
                    continue
            sent[key] = now
            new.append(
                {
                    "origin": "lists",
                    "type": bl["remediation"],
                    "scope": bl["scope"].capitalize(),
                    "value": line,
                    "scenario": bl["name"],
                    "duration": bl["duration"],
                    "simulated": False,
                }
            )
