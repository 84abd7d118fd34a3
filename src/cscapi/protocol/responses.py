"""Read CAPI's answers: map a status to the right error, and parse login, enroll and decisions-stream bodies.

Malformed stream items are skipped and counted (``on_skip`` hears each reason), never fatal: so are ranges wider
than the minimum prefix lengths (``cscapi.iputil.range_too_wide``) and durations longer than
``cscapi.timeutil.MAX_DECISION_DURATION``. A body that is not JSON where JSON is due is a clear
:class:`~cscapi.errors.ServerError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from cscapi import timeutil
from cscapi.errors import (
    AuthenticationError,
    CAPIError,
    DeadlineExceededError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    TLSVerificationError,
    TransportError,
)
from cscapi.gcpause import without_gc
from cscapi.iputil import canonical_address, canonical_range, format_range, parse_range, range_too_wide
from cscapi.models import AllowlistLink, BlocklistLink, DecisionStream, DeletedDecision, EnrollStatus, StreamDecision
from cscapi.protocol.http import NetworkFailure, Response, safe_url
from cscapi.protocol.retry import parse_retry_after
from cscapi.timeutil import parse_go_duration

__all__ = [
    "error_for",
    "failure_error",
    "is_credentials_refusal",
    "parse_enroll",
    "parse_json_object",
    "parse_login",
    "parse_stream",
    "server_detail",
    "server_reason",
]

_MAX_REASON = 300


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def server_reason(response: Response) -> tuple[str, str | None]:
    """The server's ``ErrorResponse`` ``message`` and ``errors`` (or the raw body, clipped), for messages."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and ("message" in data or "errors" in data):
        message = data.get("message")
        errors = data.get("errors")
        return (
            _clip(str(message)) if message is not None else "",
            _clip(str(errors)) if errors not in (None, "") else None,
        )
    return (_clip(response.text) if response.content else "(empty body)", None)


_CREDENTIALS_WORDING = re.compile(
    r"password|machine_id|credential|unknown machine|not found|not registered|invalid machine", re.IGNORECASE
)
_BAN_WORDING = re.compile(r"too many|\brate|\bbanned\b|\blimit", re.IGNORECASE)


def is_credentials_refusal(response: Response) -> bool:
    """True when a 403 to a login refuses the credentials (unknown machine, wrong password) rather than banning.

    Only a 403 without ``Retry-After`` whose JSON ``message``/``errors`` talks about credentials and not about a
    rate limit or a ban counts; anything else (a ``Retry-After``, rate/ban wording, another or an empty body) is a
    login ban, the safe reading (logging in again while banned prolongs the ban).
    """
    if response.status_code != 403 or response.header("retry-after") is not None:
        return False
    try:
        data = response.json()
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    text = " ".join(str(data.get(key) or "") for key in ("message", "errors"))
    return _CREDENTIALS_WORDING.search(text) is not None and _BAN_WORDING.search(text) is None


def server_detail(message: str, errors: str | None) -> str:
    """The server's ``message`` and ``errors`` joined, each said once (CAPI and the emulator often repeat the message's
    reason in ``errors``: "invalid signal: X" and "X")."""
    if not errors or errors in message:
        return message
    if not message or message in errors:
        return errors
    head, sep, tail = message.partition(": ")
    if sep and tail and errors.startswith(tail):  # "invalid signal: X" and "X; Y": "invalid signal: X; Y"
        return f"{head}: {errors}"
    return f"{message}: {errors}"


def error_for(response: Response, what: str) -> CAPIError:
    """The error a non-2xx answer to the ``what`` request means (``what``: ``login``, ``signals`` ...)."""
    status = response.status_code
    message, errors = server_reason(response)
    detail = server_detail(message, errors)
    text = f"CAPI answered {status} to the {what} request: {detail}"
    if status in (400, 413, 422):
        return RequestRejectedError(text, server_message=message, server_errors=errors, status_code=status)
    if status == 401:
        return AuthenticationError(text, status_code=status)
    if status == 403:
        return AuthenticationError(
            text,
            status_code=status,
            hint="The machine is not allowed to do this; check its credentials, enrollment and the request.",
        )
    if status == 404:
        return NotFoundError(text, status_code=status)
    if status == 429:
        return RateLimitedError(text, retry_after=parse_retry_after(response.header("retry-after")))
    if status >= 500:
        return ServerError(text, status_code=status)
    return CAPIError(text, status_code=status, hint="This answer was not expected; check the CAPI URL.")


def failure_error(failure: NetworkFailure, what: str, attempts: int) -> TransportError:
    """The error for a request that never got an HTTP answer after ``attempts`` tries."""
    tries = "1 try" if attempts == 1 else f"{attempts} tries"
    where = safe_url(failure.url) if failure.url else "CAPI"
    cls = {"deadline": DeadlineExceededError, "tls": TLSVerificationError}.get(failure.kind, TransportError)
    return cls(f"The {what} request to {where} failed after {tries}: {failure.describe()}.")


def parse_json_object(response: Response, what: str) -> dict[str, Any]:
    """The body as a JSON object; :class:`ServerError` when it is not one."""
    try:
        data = response.json()
    except ValueError:
        raise ServerError(
            f"CAPI answered {response.status_code} to the {what} request with a body that is not JSON (or not "
            f"readable JSON: {len(response.content)} bytes, content type "
            f"{response.header('content-type') or 'unknown'}).",
            status_code=response.status_code,
            hint="Check that base_url points at the CAPI root (e.g. http://127.0.0.1:8081/), not at a web page.",
        ) from None
    if not isinstance(data, dict):
        raise ServerError(
            f"CAPI answered the {what} request with JSON that is not an object ({type(data).__name__}).",
            status_code=response.status_code,
            hint="Check that base_url points at the CAPI root.",
        )
    return data


def parse_login(response: Response) -> tuple[str, str | None]:
    """The token and the ``expire`` field of a 2xx login answer."""
    data = parse_json_object(response, "login")
    token = data.get("token")
    if not isinstance(token, str) or not token:
        raise ServerError(
            "CAPI accepted the login but sent no token.",
            status_code=response.status_code,
            hint="Check that base_url points at CAPI; try again later.",
        )
    expire = data.get("expire")
    return token, expire if isinstance(expire, str) else None


def parse_enroll(response: Response, overwrite: bool) -> tuple[str, str | None, datetime | None]:
    """(status, url, expire_at) of a 2xx enroll answer: 200 without ``overwrite`` means already enrolled."""
    status = EnrollStatus.ENROLLED if overwrite or response.status_code != 200 else EnrollStatus.ALREADY_ENROLLED
    url: str | None = None
    expire_at: datetime | None = None
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        if isinstance(data.get("url"), str):
            url = data["url"]
        raw = data.get("expire_at")
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            try:
                expire_at = datetime.fromtimestamp(raw / 1000.0, timezone.utc)
            except (OverflowError, OSError, ValueError):
                expire_at = None
    return status, url, expire_at


# ---- decisions stream ------------------------------------------------------------------------------------

SkipHook = Callable[[str], None]


def _canonical_value(scope: str, value: str, *, sane: bool = False) -> str:
    """The canonical value; with ``sane``, a range too wide to act on raises ``ValueError`` too."""
    if scope == "ip":
        return canonical_address(value.strip())
    if scope == "range":
        text = value.strip()
        if not sane:
            return canonical_range(text)
        parsed = parse_range(text)
        reason = range_too_wide(*parsed)
        if reason is not None:
            raise ValueError(f"{reason}: {text[:50]!r}")
        return format_range(*parsed)
    if not value.strip():
        raise ValueError("empty value")
    return value.strip()


class _Durations:
    """Go durations parsed and bounded once each (a stream repeats the same few thousand strings)."""

    def __init__(self) -> None:
        self.cache: dict[str, float] = {}

    def seconds(self, text: object) -> float:
        """Seconds of a Go duration; ``ValueError`` if it is not one or is longer than the maximum."""
        if not isinstance(text, str):
            raise ValueError(f"the duration is a {type(text).__name__}, not a string")
        value = self.cache.get(text)
        if value is None:  # only durations within the maximum are cached (it is fixed for one parse)
            value = _bounded(parse_go_duration(text), text)
            self.cache[text] = value
        return value


def _bounded(seconds: float, text: str) -> float:
    """``seconds``, or ``ValueError`` when longer than ``cscapi.timeutil.MAX_DECISION_DURATION``."""
    limit = timeutil.MAX_DECISION_DURATION
    if seconds > limit:
        raise ValueError(f"duration {text[:40]!r} is longer than the maximum ({timeutil.format_go_duration(limit)})")
    return seconds


def _parse_new(groups: object, skip: Callable[[str], None], durations: _Durations) -> list[StreamDecision]:
    result: list[StreamDecision] = []
    if groups is None:
        return result
    if not isinstance(groups, list):
        skip(f"'new' is a {type(groups).__name__}, not a list")
        return result
    for g, group in enumerate(groups):
        if not isinstance(group, dict):
            skip(f"new[{g}] is not an object")
            continue
        scenario, scope, decisions = group.get("scenario"), group.get("scope"), group.get("decisions")
        if not isinstance(scenario, str) or not isinstance(scope, str) or not isinstance(decisions, list):
            skip(f"new[{g}] lacks scenario, scope or a decisions list")
            continue
        scope = scope.strip().lower()
        for d, item in enumerate(decisions):
            try:
                raw_value = item["value"]
                value = _canonical_value(scope, raw_value, sane=True)
                if value == raw_value:  # already canonical: share the JSON's string (the stream keeps both)
                    value = raw_value
                seconds = durations.seconds(item["duration"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                skip(f"new[{g}].decisions[{d}] is unreadable ({type(exc).__name__}: {str(exc)[:80]})")
                continue
            result.append(StreamDecision(value=value, scope=scope, scenario=scenario, duration=seconds))
    return result


def _parse_deleted(groups: object, skip: Callable[[str], None]) -> list[DeletedDecision]:
    result: list[DeletedDecision] = []
    if groups is None:
        return result
    if not isinstance(groups, list):
        skip(f"'deleted' is a {type(groups).__name__}, not a list")
        return result
    for g, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("scope"), str):
            skip(f"deleted[{g}] lacks a scope")
            continue
        values = group.get("decisions")
        if not isinstance(values, list):
            skip(f"deleted[{g}] lacks a decisions list")
            continue
        scope = group["scope"].strip().lower()
        for d, value in enumerate(values):
            try:
                result.append(DeletedDecision(value=_canonical_value(scope, value), scope=scope))
            except (TypeError, ValueError, AttributeError):
                skip(f"deleted[{g}].decisions[{d}] is not a valid {scope} value")
    return result


def _parse_links(links: object, skip: Callable[[str], None]) -> tuple[list[BlocklistLink], list[AllowlistLink]]:
    blocklists: list[BlocklistLink] = []
    allowlists: list[AllowlistLink] = []
    if links is None:
        return blocklists, allowlists
    if not isinstance(links, dict):
        skip("'links' is not an object")
        return blocklists, allowlists
    for i, item in enumerate(_link_list(links, "blocklists", skip)):
        try:
            duration = _required_str(item, "duration")
            blocklists.append(
                BlocklistLink(
                    name=_required_str(item, "name"),
                    url=_required_str(item, "url"),
                    remediation=_required_str(item, "remediation"),
                    scope=_required_str(item, "scope").lower(),
                    duration=_bounded(parse_go_duration(duration), duration),
                )
            )
        except (TypeError, ValueError) as exc:
            skip(f"links.blocklists[{i}] is unreadable ({exc})")
    for i, item in enumerate(_link_list(links, "allowlists", skip)):
        try:
            allowlists.append(
                AllowlistLink(
                    id=_required_str(item, "id"),
                    name=_required_str(item, "name"),
                    url=_required_str(item, "url"),
                    description=item.get("description") or "",
                    created_at=_optional_str(item, "created_at"),
                    updated_at=_optional_str(item, "updated_at"),
                )
            )
        except (TypeError, ValueError, AttributeError) as exc:
            skip(f"links.allowlists[{i}] is unreadable ({exc})")
    return blocklists, allowlists


def _link_list(links: dict[str, Any], key: str, skip: Callable[[str], None]) -> list[Any]:
    """``links[key]`` when it is a list; anything else but null is skipped and counted."""
    value = links.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        skip(f"links.{key} is a {type(value).__name__}, not a list")
        return []
    return value


def _required_str(item: object, key: str) -> str:
    if not isinstance(item, dict):
        raise TypeError("not an object")
    value = item.get(key)
    if isinstance(value, (int, float)) and key == "id" and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"missing {key}")
    return value


def _optional_str(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    return value if isinstance(value, str) and value else None


@without_gc  # ~100k acyclic objects: collector passes would only stall every thread (see gcpause)
def parse_stream(response: Response, *, startup: bool = False, on_skip: SkipHook | None = None) -> DecisionStream:
    """A :class:`DecisionStream` from a 2xx ``GET /v3/decisions/stream`` answer (empty or null parts allowed)."""
    data = parse_json_object(response, "decisions stream") if response.content.strip() else {}
    skipped = 0

    def skip(reason: str) -> None:
        nonlocal skipped
        skipped += 1
        if on_skip is not None:
            on_skip(reason)

    durations = _Durations()
    new = _parse_new(data.get("new"), skip, durations)
    deleted = _parse_deleted(data.get("deleted"), skip)
    blocklists, allowlists = _parse_links(data.get("links"), skip)
    return DecisionStream(
        new=new,
        deleted=deleted,
        blocklists=blocklists,
        allowlists=allowlists,
        skipped=skipped,
        startup=startup,
        raw=data,
    )
