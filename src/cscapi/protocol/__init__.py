"""CAPI's protocol without I/O: build requests, read responses, decide retries, read tokens.

Everything here is pure (no sockets, no storage, no sleeping), so the sync and the async client share it unchanged.
"""

from __future__ import annotations

from cscapi.protocol.endpoints import DEV_URL, PROD_URL, Endpoints, metrics_payload, normalise_base_url
from cscapi.protocol.http import (
    DEFAULT_GZIP_THRESHOLD,
    NetworkFailure,
    Request,
    Response,
    encode_json_body,
    loads_json,
    safe_url,
    user_agent,
)
from cscapi.protocol.jwt import read_claims, token_expiry
from cscapi.protocol.metrics import MetricItem, usage_metrics_payload
from cscapi.protocol.responses import (
    error_for,
    failure_error,
    is_credentials_refusal,
    parse_enroll,
    parse_json_object,
    parse_login,
    parse_stream,
    server_reason,
)
from cscapi.protocol.retry import RETRYABLE_STATUSES, RetryPolicy, is_retryable, parse_retry_after
from cscapi.protocol.wire import signal_to_wire, signals_to_wire

__all__ = [
    "DEFAULT_GZIP_THRESHOLD",
    "DEV_URL",
    "PROD_URL",
    "RETRYABLE_STATUSES",
    "Endpoints",
    "MetricItem",
    "NetworkFailure",
    "Request",
    "Response",
    "RetryPolicy",
    "encode_json_body",
    "error_for",
    "failure_error",
    "is_credentials_refusal",
    "is_retryable",
    "loads_json",
    "metrics_payload",
    "normalise_base_url",
    "parse_enroll",
    "parse_json_object",
    "parse_login",
    "parse_retry_after",
    "parse_stream",
    "read_claims",
    "safe_url",
    "server_reason",
    "signal_to_wire",
    "signals_to_wire",
    "token_expiry",
    "usage_metrics_payload",
    "user_agent",
]
