"""``EmulatorAdminClient``: synchronous Python helpers over the emulator's admin API (httpx)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from cscapi.errors import CAPIError

__all__ = ["EmulatorAdminClient", "EmulatorAdminError"]


class EmulatorAdminError(CAPIError):
    """The admin API refused a request (bad token, unknown machine or list, invalid value)."""

    default_hint = "Check the admin token and the values sent; the emulator's message says what was wrong."


class EmulatorAdminClient:
    """Inspect and drive a running emulator: ``EmulatorAdminClient("http://127.0.0.1:8081/", admin_token)``.

    Why this size (38 methods): it is a thin client of the admin API, one method per endpoint (plus a few
    conveniences over them), each a request and a decode with no state of its own. Grouping them
    (``admin.lists.publish(...)``) would add a second way to call the same thing without making any method simpler;
    the flat methods are the documented API (docs/emulator.md).
    """

    def __init__(
        self, base_url: str, admin_token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {admin_token}"},
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"EmulatorAdminClient({self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> EmulatorAdminClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        response = self._client.request(method, "admin/" + path, json=json, params=clean)
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = f"{body.get('message')}: {body.get('errors')}" if body.get("errors") else body.get("message")
            except ValueError:
                detail = response.text[:200]
            raise EmulatorAdminError(
                f"admin {method} /admin/{path} failed with {response.status_code}: {detail}",
                status_code=response.status_code,
            )
        return response.json()

    # ---- inspection ------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Counts of machines, signals, decisions, lists, records, faults and internal errors."""
        return dict(self._call("GET", "state"))

    def signals(self, machine_id: str | None = None, scenario: str | None = None) -> list[dict[str, Any]]:
        """Received signals (``{machine_id, received_at, api, signal}``), optionally filtered."""
        return list(self._call("GET", "signals", params={"machine_id": machine_id, "scenario": scenario}))

    def machines(self) -> list[dict[str, Any]]:
        """Registered machines with their logins, scenarios, enrollment and ban status."""
        return list(self._call("GET", "machines"))

    def machine(self, machine_id: str) -> dict[str, Any]:
        """One machine (``EmulatorAdminError`` 404 when unknown)."""
        return dict(self._call("GET", f"machines/{quote(machine_id, safe='')}"))

    def logins(self, machine_id: str) -> list[str]:
        """The RFC 3339 times of a machine's successful logins."""
        return list(self.machine(machine_id)["logins"])

    def create_machine(self, machine_id: str, password: str) -> dict[str, Any]:
        """Register a machine directly (no CAPI call)."""
        return dict(self._call("POST", "machines", json={"machine_id": machine_id, "password": password}))

    def enrollments(self) -> list[dict[str, Any]]:
        """Accepted enrollments."""
        return list(self._call("GET", "enrollments"))

    def metrics(self, machine_id: str | None = None) -> list[dict[str, Any]]:
        """Received ``/metrics`` payloads (``{machine_id, received_at, api, body}``)."""
        return list(self._call("GET", "metrics", params={"machine_id": machine_id}))

    def usage_metrics(self, machine_id: str | None = None) -> list[dict[str, Any]]:
        """Received ``/usage-metrics`` payloads."""
        return list(self._call("GET", "usage-metrics", params={"machine_id": machine_id}))

    def deleted_decisions_received(self, machine_id: str | None = None) -> list[dict[str, Any]]:
        """Received ``/decisions/delete`` payloads (lists of decision uuids)."""
        return list(self._call("GET", "decisions-deleted", params={"machine_id": machine_id}))

    def synced_decisions_received(self, machine_id: str | None = None) -> list[dict[str, Any]]:
        """Received ``/decisions/sync`` payloads."""
        return list(self._call("GET", "decisions-synced", params={"machine_id": machine_id}))

    def requests(self) -> dict[str, dict[str, int]]:
        """How many requests each endpoint answered, by status (``0`` = dropped connection)."""
        return dict(self._call("GET", "requests"))

    # ---- community decisions ---------------------------------------------------------------------------------

    def decisions(self) -> list[dict[str, Any]]:
        """The live community decisions with their remaining seconds."""
        return list(self._call("GET", "decisions"))

    def add_decisions(self, decisions: Iterable[Mapping[str, Any]]) -> int:
        """Add or replace community decisions (``{value, scenario?, duration?, scope?}``); returns how many decisions
        the call put in force (new ones plus those renewing a decision of the same value and scenario)."""
        answer = self._call("POST", "decisions", json={"decisions": [dict(d) for d in decisions]})
        return int(answer["added"]) + int(answer["replaced"])

    def add_decision(
        self,
        value: str,
        scenario: str = "crowdsecurity/ssh-bf",
        duration: str | float = "24h",
        scope: str | None = None,
    ) -> int:
        """Add one community decision."""
        item: dict[str, Any] = {"value": value, "scenario": scenario, "duration": duration}
        if scope is not None:
            item["scope"] = scope
        return self.add_decisions([item])

    def expire_decisions(self, values: Iterable[str], scenario: str | None = None) -> int:
        """Expire the decisions on these values now (only ``scenario``'s, if given); returns how many.

        A value shows up in the next delta's ``deleted`` once none of its decisions is left."""
        body: dict[str, Any] = {"values": list(values), "scenario": scenario}
        return int(self._call("POST", "decisions/expire", json=body)["expired"])

    def delete_decisions(self, values: Iterable[str], scenario: str | None = None) -> int:
        """Delete the decisions on these values (only ``scenario``'s, if given); returns how many.

        A value shows up in the next delta's ``deleted`` once none of its decisions is left."""
        body: dict[str, Any] = {"values": list(values), "scenario": scenario}
        return int(self._call("POST", "decisions/delete", json=body)["deleted"])

    # ---- lists -----------------------------------------------------------------------------------------------

    def publish_blocklist(
        self, name: str, content: Iterable[str], *, remediation: str = "ban", scope: str = "ip", duration: str = "24h"
    ) -> dict[str, Any]:
        """Create or replace a blocklist (one IP or range per item); its link appears in the decisions stream."""
        body = {"content": list(content), "remediation": remediation, "scope": scope, "duration": duration}
        return dict(self._call("PUT", f"blocklists/{quote(name, safe='/')}", json=body))

    def remove_blocklist(self, name: str) -> None:
        """Unpublish a blocklist."""
        self._call("DELETE", f"blocklists/{quote(name, safe='/')}")

    def blocklists(self) -> list[dict[str, Any]]:
        """Published blocklists with their content."""
        return list(self._call("GET", "blocklists"))

    def publish_allowlist(
        self, name: str, items: Iterable[str | Mapping[str, Any]], *, description: str = ""
    ) -> dict[str, Any]:
        """Create or replace an allowlist; items are values or ``{value, description?, expiration?}``."""
        body = {"items": [i if isinstance(i, str) else dict(i) for i in items], "description": description}
        return dict(self._call("PUT", f"allowlists/{quote(name, safe='/')}", json=body))

    def remove_allowlist(self, name: str) -> None:
        """Unpublish an allowlist."""
        self._call("DELETE", f"allowlists/{quote(name, safe='/')}")

    def allowlists(self) -> list[dict[str, Any]]:
        """Published allowlists with their items."""
        return list(self._call("GET", "allowlists"))

    # ---- faults, tokens, bans, reset -------------------------------------------------------------------------

    def set_fault(self, endpoint: str, **settings: Any) -> dict[str, Any]:
        """Install a fault, e.g. ``set_fault("signals", error_rate=1.0, error_status=503, remaining=2)``."""
        return dict(self._call("PUT", f"faults/{quote(endpoint, safe='')}", json=settings))

    def clear_fault(self, endpoint: str) -> None:
        """Remove one endpoint's fault."""
        self._call("DELETE", f"faults/{quote(endpoint, safe='')}")

    def clear_faults(self) -> None:
        """Remove every fault."""
        self._call("DELETE", "faults")

    def faults(self) -> dict[str, dict[str, Any]]:
        """The faults in force, by endpoint."""
        return dict(self._call("GET", "faults"))

    def expire_tokens(self, machine_id: str | None = None) -> int:
        """Revoke the tokens already issued (to one machine, or all): the next call with them gets 401."""
        return int(self._call("POST", "tokens/expire", json={"machine_id": machine_id})["machines"])

    def clear_login_bans(self) -> None:
        """Lift login bans and forget login counters."""
        self._call("POST", "logins/clear-bans")

    def add_attachment_key(self, key: str) -> None:
        """Accept one more enrollment attachment key."""
        self._call("POST", "attachment-keys", json={"key": key})

    def only_listed_attachment_keys(self, only_listed: bool = True) -> None:
        """Accept only the listed attachment keys (``True``), or any well-formed key again (``False``)."""
        self._call("PUT", "attachment-keys", json={"only_listed": only_listed})

    def reset(self) -> None:
        """Forget everything and start again from the emulator's configuration."""
        self._call("POST", "reset")
