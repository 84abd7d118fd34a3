"""The Local API's bouncer protocol without I/O: build the requests, read and check the answers.

Answers are read against the LAPI swagger's ``Decision`` / ``DecisionsStreamResponse`` / ``GetDecisionsResponse``
shapes with the same sanity rules as the CAPI stream (:mod:`cscapi.protocol.responses`): canonical values, ranges no
wider than ``cscapi.iputil.MIN_PREFIX_V4``/``MIN_PREFIX_V6``, durations bounded by
``cscapi.timeutil.MAX_DECISION_DURATION``; an unreadable item is skipped and counted (``on_skip`` hears why), never
fatal. A body that is not the expected JSON is a :class:`~cscapi.errors.ServerError`. Decisions keep LAPI's origins
(``crowdsec``, ``cscli``, ``CAPI``, ``lists:<name>``, ``console`` ...) and types (``ban``, ``captcha``, custom).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cscapi.errors import (
    AuthenticationError,
    CAPIError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidIPError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    TLSVerificationError,
    TransportError,
)
from cscapi.iputil import canonical_address
from cscapi.models import DecisionStream, DeletedDecision, StreamDecision
from cscapi.protocol.http import NetworkFailure, Request, Response, encode_json_body, loads_json, safe_url
from cscapi.protocol.responses import _canonical_value, _Durations, server_reason
from cscapi.protocol.retry import parse_retry_after

__all__ = [
    "DEFAULT_SCOPES",
    "MAX_FIELD_CHARS",
    "LapiDecision",
    "decisions_request",
    "lapi_error_for",
    "lapi_failure_error",
    "normalise_lapi_url",
    "parse_decisions",
    "parse_lapi_stream",
    "stream_request",
    "usage_metrics_request",
]

DEFAULT_SCOPES = ("ip", "range")
"""The scopes a bouncer asks for by default (country needs a GeoIP database)."""
MAX_FIELD_CHARS = 255
"""Longest origin, type, scope or scenario accepted from LAPI; a longer one makes the item skipped."""
SkipHook = Callable[[str], None]
_COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True, slots=True)
class LapiDecision:
    """One decision from ``GET /v1/decisions``: scope lowercased, value canonical, ``duration`` in seconds left."""

    id: int | None
    origin: str
    type: str
    scope: str
    value: str
    scenario: str
    duration: float


def normalise_lapi_url(base_url: str) -> str:
    """``base_url`` with one trailing slash and without ``/v1/``; refuses what is not an http(s) URL."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigurationError("The LAPI base_url must be a non-empty URL such as http://127.0.0.1:8080/.")
    url = base_url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"The LAPI base_url {safe_url(url)!r} is not an http(s) URL.",
            hint="Give the LAPI root, e.g. http://127.0.0.1:8080/ (the listen_uri of its config.yaml).",
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(f"The LAPI base_url {safe_url(url)!r} must not carry a query or a fragment.")
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    return url + "/"


def _csv(name: str, values: Iterable[str] | None) -> str | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    items = [str(v).strip() for v in values]
    if any(not v or "," in v for v in items):
        raise ConfigurationError(f"{name}: each item must be a non-empty string without a comma (got {items!r}).")
    return ",".join(items) if items else None


def _add_filters(params: dict[str, str], **filters: Iterable[str] | None) -> None:
    """Each filter given (a list of values) as one comma-separated query parameter of its name."""
    for name, values in filters.items():
        text = _csv(name, values)
        if text:
            params[name] = text


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-Api-Key": api_key} if api_key else {}


def stream_request(
    base_url: str,
    *,
    api_key: str | None,
    startup: bool,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    origins: Sequence[str] | None = None,
    scenarios_containing: Sequence[str] | None = None,
    scenarios_not_containing: Sequence[str] | None = None,
) -> Request:
    """``GET /v1/decisions/stream?startup=...&scopes=...`` (and the optional filters)."""
    params = {"startup": "true" if startup else "false"}
    _add_filters(
        params,
        scopes=scopes,
        origins=origins,
        scenarios_containing=scenarios_containing,
        scenarios_not_containing=scenarios_not_containing,
    )
    return Request("GET", base_url + "v1/decisions/stream", "decisions stream", _headers(api_key), params=params)


def decisions_request(
    base_url: str,
    *,
    api_key: str | None,
    ip: str | None = None,
    range_: str | None = None,
    country: str | None = None,
    origins: Sequence[str] | None = None,
    scenarios_containing: Sequence[str] | None = None,
    scenarios_not_containing: Sequence[str] | None = None,
) -> Request:
    """``GET /v1/decisions?ip=...`` (or ``range=``, or ``scope=country&value=``): the decisions on that address or
    range, ranges containing it included (LAPI matches an IP against its ranges), or on that country."""
    params: dict[str, str] = {}
    try:
        if country is not None:
            code = country.strip().upper()
            if not _COUNTRY_CODE.match(code):
                raise ConfigurationError(f"not an ISO 3166 country code: {country[:20]!r}")
            params["scope"], params["value"] = "country", code
        elif ip is not None:
            params["ip"] = canonical_address(ip)
        elif range_ is not None:
            params["range"] = _canonical_value("range", range_)
        else:
            raise ConfigurationError("decisions_request needs ip= or range_=")
    except (TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, ConfigurationError):
            raise
        what = "ip" if ip is not None else "range"
        raise InvalidIPError(f"not an IP {what}: {str(ip if ip is not None else range_)[:60]!r}", field=what) from None
    _add_filters(
        params,
        origins=origins,
        scenarios_containing=scenarios_containing,
        scenarios_not_containing=scenarios_not_containing,
    )
    return Request("GET", base_url + "v1/decisions", "decisions", _headers(api_key), params=params)


def usage_metrics_request(base_url: str, *, api_key: str | None, payload: dict[str, Any]) -> Request:
    """``POST /v1/usage-metrics`` with an ``AllMetrics`` body (LAPI 1.6+; 1.4.6 answers 404)."""
    body, headers = encode_json_body(payload)
    headers.update(_headers(api_key))
    return Request("POST", base_url + "v1/usage-metrics", "usage metrics", headers, content=body)


# ---- answers ---------------------------------------------------------------------------------------------


def _json_body(response: Response, what: str) -> Any:
    if not response.content.strip():
        return None
    try:
        return loads_json(response.content)
    except ValueError:
        raise ServerError(
            f"LAPI answered {response.status_code} to the {what} request with a body that is not JSON "
            f"({len(response.content)} bytes, content type {response.header('content-type') or 'unknown'}).",
            status_code=response.status_code,
            hint="Check that base_url points at the LAPI root (e.g. http://127.0.0.1:8080/), not at a web page.",
        ) from None


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"missing {key}")
    value = value.strip()
    if len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"{key} is longer than {MAX_FIELD_CHARS} characters")
    return value


def _read_decision(item: object, durations: _Durations, *, need_duration: bool) -> LapiDecision:
    """One swagger ``Decision``; ``ValueError``/``TypeError`` says why it is unreadable."""
    if not isinstance(item, dict):
        raise TypeError("not an object")
    scope = _text(item, "scope").lower()
    raw_value = item.get("value")
    if not isinstance(raw_value, str):
        raise ValueError("missing value")
    if len(raw_value) > MAX_FIELD_CHARS:
        raise ValueError(f"value is longer than {MAX_FIELD_CHARS} characters")
    if scope == "country":
        value = raw_value.strip().upper()
        if not _COUNTRY_CODE.match(value):
            raise ValueError(f"not an ISO 3166 country code: {raw_value[:20]!r}")
    else:
        value = _canonical_value(scope, raw_value, sane=need_duration)
    seconds = 0.0
    if need_duration:
        seconds = durations.seconds(item.get("duration"))
    ident = item.get("id")
    return LapiDecision(
        id=ident if isinstance(ident, int) and not isinstance(ident, bool) else None,
        origin=_text(item, "origin"),
        type=_text(item, "type"),
        scope=scope,
        value=value,
        scenario=_text(item, "scenario"),
        duration=seconds,
    )


def _decision_list(data: object, where: str, skip: SkipHook, *, need_duration: bool) -> list[LapiDecision]:
    if data is None:
        return []
    if not isinstance(data, list):
        skip(f"{where} is a {type(data).__name__}, not a list")
        return []
    durations = _Durations()
    result: list[LapiDecision] = []
    for i, item in enumerate(data):
        try:
            result.append(_read_decision(item, durations, need_duration=need_duration))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            skip(f"{where}[{i}] is unreadable ({type(exc).__name__}: {str(exc)[:80]})")
    return result


def parse_lapi_stream(response: Response, *, startup: bool = False, on_skip: SkipHook | None = None) -> DecisionStream:
    """A :class:`DecisionStream` from a 2xx ``GET /v1/decisions/stream``: ``new`` keeps each decision's origin and
    type; ``deleted`` names the decision (origin, scenario, type) so only that one goes. ``null`` parts are empty."""
    data = _json_body(response, "decisions stream")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ServerError(
            f"LAPI answered the decisions stream request with JSON that is not an object ({type(data).__name__}).",
            status_code=response.status_code,
            hint="Check that base_url points at the LAPI root.",
        )
    skipped = 0

    def skip(reason: str) -> None:
        nonlocal skipped
        skipped += 1
        if on_skip is not None:
            on_skip(reason)

    new = [
        StreamDecision(
            value=d.value,
            scope=d.scope,
            scenario=d.scenario,
            duration=d.duration,
            type=d.type,
            origin=d.origin,
            id=d.id,
        )
        for d in _decision_list(data.get("new"), "new", skip, need_duration=True)
    ]
    deleted = [
        DeletedDecision(value=d.value, scope=d.scope, scenario=d.scenario, type=d.type, origin=d.origin, id=d.id)
        for d in _decision_list(data.get("deleted"), "deleted", skip, need_duration=False)
    ]
    return DecisionStream(new=new, deleted=deleted, skipped=skipped, startup=startup, raw=data)


def parse_decisions(response: Response, *, on_skip: SkipHook | None = None) -> list[LapiDecision]:
    """The decisions of a 2xx ``GET /v1/decisions`` (``null`` when there are none); unreadable ones skipped."""
    data = _json_body(response, "decisions")
    return _decision_list(data, "decisions", on_skip or (lambda _reason: None), need_duration=True)


def lapi_error_for(response: Response, what: str) -> CAPIError:
    """The typed error a non-2xx LAPI answer to the ``what`` request means."""
    status = response.status_code
    message, errors = server_reason(response)
    detail = f"{message}: {errors}" if errors else message
    text = f"LAPI answered {status} to the {what} request: {detail}"
    if status in (401, 403):
        return AuthenticationError(
            text,
            status_code=status,
            hint="LAPI refused the bouncer's credentials: check the API key (`cscli bouncers list`, "
            "`cscli bouncers add NAME` prints a new one) or the TLS client certificate.",
        )
    if status == 404:
        return NotFoundError(text, status_code=status, hint="This LAPI does not offer this endpoint (too old?).")
    if status in (400, 413, 422):
        return RequestRejectedError(text, server_message=message, server_errors=errors, status_code=status)
    if status == 429:
        return RateLimitedError(text, retry_after=parse_retry_after(response.header("retry-after")))
    if status >= 500:
        return ServerError(text, status_code=status)
    return CAPIError(text, status_code=status, hint="This answer was not expected; check the LAPI URL.")


def lapi_failure_error(failure: NetworkFailure, what: str, attempts: int) -> TransportError:
    """The error for a LAPI request that never got an HTTP answer after ``attempts`` tries."""
    tries = "1 try" if attempts == 1 else f"{attempts} tries"
    where = safe_url(failure.url) if failure.url else "LAPI"
    cls = {"deadline": DeadlineExceededError, "tls": TLSVerificationError}.get(failure.kind, TransportError)
    return cls(
        f"The {what} request to {where} failed after {tries}: {failure.describe()}.",
        hint="Is CrowdSec's Local API running and listening there (`cscli lapi status`)?",
    )
