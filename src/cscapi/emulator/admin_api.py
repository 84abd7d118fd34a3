"""The admin API under ``/admin/``: inspect what the emulator received and drive what it serves.

Token-protected (``Authorization: Bearer <admin token>``), off the CAPI paths, never subject to faults.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cscapi.emulator.bodies import read_json
from cscapi.emulator.config import ENDPOINTS, FaultSpec
from cscapi.emulator.responses import dumps, error_response
from cscapi.emulator.state import ApiError, EmulatorState, rfc3339
from cscapi.errors import ConfigurationError

__all__ = ["admin_routes"]

AdminHandler = Callable[[EmulatorState, Request], Awaitable[Any]]


def parse_fault_body(endpoint: str, body: Any) -> FaultSpec:
    """Validate an admin fault request; ``ApiError`` 400 names what is wrong."""
    if endpoint != "*" and endpoint not in ENDPOINTS:
        raise ApiError(400, f"unknown endpoint {endpoint!r}", "known: *, " + ", ".join(ENDPOINTS))
    if not isinstance(body, dict):
        raise ApiError(400, "a fault must be a JSON object")
    try:
        return FaultSpec.from_dict(body)
    except (ConfigurationError, TypeError) as exc:
        raise ApiError(400, "invalid fault", str(exc)) from None


def check_admin(state: EmulatorState, request: Request) -> None:
    """401 unless the request carries ``Authorization: Bearer <admin token>``."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else header.strip()
    if not token or not hmac.compare_digest(token.encode(), state.config.admin_token.encode()):
        raise ApiError(401, "Unauthorized", "the admin API needs 'Authorization: Bearer <admin token>'")


_ADMIN_MAX_BODY = 64 * 1024 * 1024  # admin bodies publish whole lists: larger than CAPI's, still bounded


async def _json_body(request: Request, timeout: float | None = None) -> Any:
    """The admin request's JSON body (gzip accepted, nesting bounded); an empty body reads as ``{}``."""
    return await read_json(request, _ADMIN_MAX_BODY, empty={}, timeout=timeout)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _public_list(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in {"created_at", "updated_at"}}
    out["created_at"] = rfc3339(body["created_at"])
    out["updated_at"] = rfc3339(body["updated_at"])
    return out


async def get_state(state: EmulatorState, request: Request) -> Any:
    return state.summary()


async def post_reset(state: EmulatorState, request: Request) -> Any:
    state.reset()
    return {"message": "state reset"}


async def get_signals(state: EmulatorState, request: Request) -> Any:
    q = request.query_params
    return state.query_signals(q.get("machine_id") or None, q.get("scenario") or None)


def _ban_of(state: EmulatorState, machine_id: str) -> float | None:
    """The end of a machine's login ban, if one is in force (``per="machine"`` counting)."""
    until = state.login_bans.get(machine_id)
    return until if until is not None and until > state.clock() else None


async def get_machines(state: EmulatorState, request: Request) -> Any:
    with state.lock:
        return [m.public(_ban_of(state, m.machine_id)) for m in state.machines.values()]


async def get_machine(state: EmulatorState, request: Request) -> Any:
    machine_id = request.path_params["machine_id"]
    with state.lock:
        m = state.machines.get(machine_id)
        if m is None:
            raise ApiError(404, f"machine {machine_id} not found")
        return m.public(_ban_of(state, m.machine_id))


async def post_machine(state: EmulatorState, request: Request) -> Any:
    body = _object(await _json_body(request))
    machine_id, password = body.get("machine_id"), body.get("password")
    if not isinstance(machine_id, str) or not machine_id.isalnum() or not isinstance(password, str) or not password:
        raise ApiError(400, "machine_id (letters and digits) and password (non-empty) are required")
    m = await run_in_threadpool(state.register, machine_id, password)
    return m.public(None)


async def post_clear_bans(state: EmulatorState, request: Request) -> Any:
    state.clear_login_bans()
    return {"message": "login bans cleared"}


async def post_expire_tokens(state: EmulatorState, request: Request) -> Any:
    body = _object(await _json_body(request))
    machine_id = body.get("machine_id")
    if machine_id is not None and not isinstance(machine_id, str):
        raise ApiError(400, "machine_id must be a string")
    return {"machines": state.expire_tokens(machine_id)}


async def get_enrollments(state: EmulatorState, request: Request) -> Any:
    with state.lock:
        return list(state.records.get("enrollments", []))


async def post_attachment_key(state: EmulatorState, request: Request) -> Any:
    key = _object(await _json_body(request)).get("key")
    if not isinstance(key, str) or not key.isalnum() or not key.isascii():
        raise ApiError(400, "key must be ASCII letters and digits")
    state.add_attachment_key(key)
    return {"message": "attachment key added"}


async def put_attachment_keys(state: EmulatorState, request: Request) -> Any:
    only_listed = _object(await _json_body(request)).get("only_listed")
    if not isinstance(only_listed, bool):
        raise ApiError(400, "only_listed must be true or false")
    state.set_only_listed_keys(only_listed)
    with state.lock:
        return {"only_listed": state.only_listed_keys, "listed": len(state.attachment_keys)}


def _records(kind: str) -> AdminHandler:
    async def handler(state: EmulatorState, request: Request) -> Any:
        machine_id = request.query_params.get("machine_id")
        with state.lock:
            return [r for r in state.records.get(kind, []) if not machine_id or r["machine_id"] == machine_id]

    return handler


async def get_decisions(state: EmulatorState, request: Request) -> Any:
    return state.list_decisions()


async def post_decisions(state: EmulatorState, request: Request) -> Any:
    body = await _json_body(request)
    items = body.get("decisions") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise ApiError(400, 'send {"decisions": [{"value": ..., "scenario"?, "duration"?, "scope"?}]}')
    decisions, replaced = state.add_decisions(items)
    return {"added": len(decisions) - replaced, "replaced": replaced, "version": state.version}


def _values(body: Any) -> tuple[list[str], str | None]:
    values = body.get("values") if isinstance(body, dict) else body
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ApiError(400, 'send {"values": ["<ip or range>", ...], "scenario"?: "<only this scenario\'s>"}')
    scenario = body.get("scenario") if isinstance(body, dict) else None
    if scenario is not None and not isinstance(scenario, str):
        raise ApiError(400, "scenario must be a string")
    return values, scenario


async def post_expire_decisions(state: EmulatorState, request: Request) -> Any:
    values, scenario = _values(await _json_body(request))
    return {"expired": state.remove_decisions(values, expire=True, scenario=scenario)}


async def post_delete_decisions(state: EmulatorState, request: Request) -> Any:
    values, scenario = _values(await _json_body(request))
    return {"deleted": state.remove_decisions(values, scenario=scenario)}


async def get_blocklists(state: EmulatorState, request: Request) -> Any:
    with state.lock:
        return [_public_list(b) for b in state.blocklists.values()]


async def put_blocklist(state: EmulatorState, request: Request) -> Any:
    body = _object(await _json_body(request))
    allowed = {"content", "remediation", "scope", "duration"}
    unknown = set(body) - allowed
    if unknown:
        raise ApiError(400, f"unknown blocklist field(s): {', '.join(sorted(unknown))}")
    content = body.get("content", [])
    if not isinstance(content, (list, str)):
        raise ApiError(400, "content must be a list of values (or text, one value per line)")
    kwargs = {k: body[k] for k in ("remediation", "scope", "duration") if k in body}
    return _public_list(state.publish_blocklist(request.path_params["name"], content, **kwargs))


async def put_allowlist(state: EmulatorState, request: Request) -> Any:
    body = _object(await _json_body(request))
    unknown = set(body) - {"items", "description"}
    if unknown:
        raise ApiError(400, f"unknown allowlist field(s): {', '.join(sorted(unknown))}")
    items = body.get("items", [])
    if not isinstance(items, list):
        raise ApiError(400, "items must be a list")
    description = body.get("description", "")
    return _public_list(state.publish_allowlist(request.path_params["name"], items, description))


async def get_allowlists(state: EmulatorState, request: Request) -> Any:
    with state.lock:
        return [_public_list(a) for a in state.allowlists.values()]


def _remove(kind: str) -> AdminHandler:
    async def handler(state: EmulatorState, request: Request) -> Any:
        name = request.path_params["name"]
        if not state.remove_list(kind, name):
            raise ApiError(404, f"{kind} {name!r} not found")
        return {"message": f"{kind} removed"}

    return handler


async def get_faults(state: EmulatorState, request: Request) -> Any:
    with state.lock:
        return {k: v.to_dict() for k, v in state.faults.items()}


async def put_fault(state: EmulatorState, request: Request) -> Any:
    endpoint = request.path_params["endpoint"]
    spec = parse_fault_body(endpoint, await _json_body(request))
    state.set_fault(endpoint, spec)
    return {endpoint: spec.to_dict()}


async def delete_fault(state: EmulatorState, request: Request) -> Any:
    state.clear_faults(request.path_params["endpoint"])
    return {"message": "fault cleared"}


async def delete_faults(state: EmulatorState, request: Request) -> Any:
    state.clear_faults()
    return {"message": "faults cleared"}


async def get_requests(state: EmulatorState, request: Request) -> Any:
    with state.lock:
        out: dict[str, dict[str, int]] = {}
        for (endpoint, status), count in state.request_counts.items():
            out.setdefault(endpoint, {})[str(status)] = count
        return out


def _route(path: str, handler: AdminHandler, method: str, state: EmulatorState) -> Route:
    async def endpoint(request: Request) -> Response:
        try:
            check_admin(state, request)
            result = await handler(state, request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.errors, exc.headers)
        return Response(dumps(result), media_type="application/json")

    return Route(path, endpoint, methods=[method])


def admin_routes(state: EmulatorState) -> list[Route]:
    """Every ``/admin/...`` route, bound to ``state``."""
    table: list[tuple[str, AdminHandler, str]] = [
        ("/admin/state", get_state, "GET"),
        ("/admin/reset", post_reset, "POST"),
        ("/admin/signals", get_signals, "GET"),
        ("/admin/machines", get_machines, "GET"),
        ("/admin/machines", post_machine, "POST"),
        ("/admin/machines/{machine_id}", get_machine, "GET"),
        ("/admin/logins/clear-bans", post_clear_bans, "POST"),
        ("/admin/tokens/expire", post_expire_tokens, "POST"),
        ("/admin/enrollments", get_enrollments, "GET"),
        ("/admin/attachment-keys", post_attachment_key, "POST"),
        ("/admin/attachment-keys", put_attachment_keys, "PUT"),
        ("/admin/metrics", _records("metrics"), "GET"),
        ("/admin/usage-metrics", _records("usage_metrics"), "GET"),
        ("/admin/decisions-deleted", _records("decisions_delete"), "GET"),
        ("/admin/decisions-synced", _records("decisions_sync"), "GET"),
        ("/admin/decisions", get_decisions, "GET"),
        ("/admin/decisions", post_decisions, "POST"),
        ("/admin/decisions/expire", post_expire_decisions, "POST"),
        ("/admin/decisions/delete", post_delete_decisions, "POST"),
        ("/admin/blocklists", get_blocklists, "GET"),
        ("/admin/blocklists/{name:path}", put_blocklist, "PUT"),
        ("/admin/blocklists/{name:path}", _remove("blocklist"), "DELETE"),
        ("/admin/allowlists", get_allowlists, "GET"),
        ("/admin/allowlists/{name:path}", put_allowlist, "PUT"),
        ("/admin/allowlists/{name:path}", _remove("allowlist"), "DELETE"),
        ("/admin/faults", get_faults, "GET"),
        ("/admin/faults", delete_faults, "DELETE"),
        ("/admin/faults/{endpoint}", put_fault, "PUT"),
        ("/admin/faults/{endpoint}", delete_fault, "DELETE"),
        ("/admin/requests", get_requests, "GET"),
    ]
    return [_route(path, handler, method, state) for path, handler, method in table]
