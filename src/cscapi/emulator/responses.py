"""JSON and ``ErrorResponse`` helpers shared by the CAPI endpoints and the admin API."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

__all__ = ["dumps", "error_response", "json_response"]


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; ``body`` may already be JSON text or bytes."""
    content = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else dumps(body)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def error_response(
    status: int, message: str, errors: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """The swagger's ``ErrorResponse``: ``message`` always, ``errors`` always a string (empty when no detail)."""
    return json_response(status, {"message": message, "errors": errors or ""}, headers)
