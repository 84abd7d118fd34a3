"""The Local API's watcher protocol without I/O: the login request and answer, and LAPI alerts built from the
``Signal``s the CAPI client queues (the swagger's ``WatcherAuthRequest``, ``WatcherAuthResponse`` and ``Alert``).

A signal becomes one alert: its source (``Ip`` or ``Range`` scope, as CrowdSec writes it, so the engine's profiles
and bouncers treat it like a local detection), scenario and its hash/version, message, timestamps, context as the
alert's meta and one event's meta, and its decisions (type, duration, origin, ``Ip``/``Range`` scope). An alert with
decisions is flagged ``remediation`` (LAPI keeps the decisions it carries); a whisper is an alert only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cscapi.errors import ServerError
from cscapi.models import Signal
from cscapi.protocol.http import Request, Response, encode_json_body, loads_json
from cscapi.timeutil import format_rfc3339, parse_timestamp

__all__ = ["ALERTS_PATH", "LOGIN_PATH", "alert_from_signal", "alerts_request", "login_request", "parse_login"]

LOGIN_PATH = "v1/watchers/login"
ALERTS_PATH = "v1/alerts"
_NO_GZIP = 1 << 62  # LAPI 1.4.6 reads plain JSON bodies only
_SCOPES = {"ip": "Ip", "range": "Range"}


def _scope(value: str | None, default: str) -> str:
    """CrowdSec's spelling of a scope (``Ip``, ``Range``); another scope is kept as given."""
    if not value:
        return default
    return _SCOPES.get(value.lower(), value)


def _time(value: str | None, fallback: datetime) -> str:
    """An RFC 3339 timestamp LAPI parses; a missing or unreadable one is ``fallback``."""
    if value:
        try:
            return format_rfc3339(parse_timestamp(value))
        except ValueError:
            pass
    return format_rfc3339(fallback)


def alert_from_signal(
    signal: Signal,
    *,
    machine_id: str,
    now: datetime,
    events_count: int = 1,
    capacity: int = 0,
    leakspeed: str = "0s",
) -> dict[str, Any]:
    """The ``Alert`` (LAPI swagger) for one queued signal; ``now`` dates what the signal leaves undated."""
    source = signal.source
    ip = source.ip if source is not None else None
    network = source.range if source is not None else None
    scope = _scope(source.scope if source is not None else None, "Range" if network and not ip else "Ip")
    value = (source.value if source is not None else None) or (ip if scope == "Ip" else network) or ip or network or ""
    wire_source: dict[str, Any] = {"scope": scope, "value": value}
    if source is not None:
        for name in ("ip", "range", "as_number", "as_name", "cn", "latitude", "longitude"):
            field_value = getattr(source, name)
            if field_value not in (None, ""):
                wire_source[name] = field_value
    created = _time(signal.created_at, now)
    start = _time(signal.start_at, parse_timestamp(created))
    stop = _time(signal.stop_at, parse_timestamp(created))
    meta = [
        {"key": str(c.key), "value": str(c.value)}
        for c in (signal.context or [])
        if c.key is not None and c.value is not None
    ]
    decisions = [
        {
            "origin": d.origin or "crowdsec",
            "type": d.type or "ban",
            "scope": _scope(d.scope, scope),
            "value": d.value or value,
            "duration": d.duration or "4h",
            "scenario": d.scenario or signal.scenario or "",
            "simulated": False,
        }
        for d in (signal.decisions or [])
    ]
    alert: dict[str, Any] = {
        "uuid": signal.uuid or "",
        "machine_id": machine_id,
        "scenario": signal.scenario or "",
        "scenario_hash": signal.scenario_hash or "",
        "scenario_version": signal.scenario_version or "",
        "message": signal.message or f"{value} triggered {signal.scenario}",
        "events_count": int(events_count),
        "start_at": start,
        "stop_at": stop,
        "capacity": int(capacity),
        "leakspeed": str(leakspeed),
        "simulated": False,
        "remediation": bool(decisions),
        "events": [{"timestamp": stop, "meta": [{"key": "source_ip", "value": value}, *meta]}],
        "source": wire_source,
        "meta": meta,
        "decisions": decisions,
    }
    if signal.kind:
        alert["kind"] = signal.kind
    return alert


def login_request(base_url: str, machine_id: str | None, password: str | None, scenarios: Sequence[str]) -> Request:
    """``POST /v1/watchers/login``: machine id and password, or (TLS client certificate) the scenarios only."""
    payload: dict[str, Any] = {"scenarios": list(scenarios)}
    if machine_id is not None:
        payload.update(machine_id=machine_id, password=password or "")
    body, headers = encode_json_body(payload, _NO_GZIP)
    return Request("POST", base_url + LOGIN_PATH, "watcher login", headers, content=body)


def alerts_request(base_url: str, alerts: list[dict[str, Any]]) -> Request:
    """``POST /v1/alerts`` with an ``AddAlertsRequest`` body (the caller adds the bearer token)."""
    body, headers = encode_json_body(alerts, _NO_GZIP)
    return Request("POST", base_url + ALERTS_PATH, "alerts", headers, content=body, authenticated=True)


def parse_login(response: Response) -> tuple[str, datetime | None]:
    """The token and its expiry (None: unknown) of a ``WatcherAuthResponse``; a typed error if unreadable."""
    try:
        data = loads_json(response.content)
    except ValueError:
        data = None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token or not token.isprintable():
        raise ServerError(
            f"LAPI answered {response.status_code} to the watcher login without a token.",
            status_code=response.status_code,
            hint="Check that base_url points at the LAPI root (e.g. http://127.0.0.1:8080/).",
        )
    expire = data.get("expire") if isinstance(data, dict) else None
    try:
        expires_at = parse_timestamp(expire) if isinstance(expire, str) and expire else None
    except ValueError:
        expires_at = None
    return token, expires_at
