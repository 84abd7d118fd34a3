"""Build and validate signals before they are queued: one place that decides what a correct signal looks like.

``validate_signal`` returns a normalised copy (canonical IPs, RFC 3339 UTC timestamps with microseconds, uuids,
defaults filled in) or raises :class:`~cscapi.errors.ValidationError` naming the bad field, whatever it is given
(any JSON, nested arbitrarily deep: never a ``TypeError``, ``OverflowError`` or ``RecursionError``). Naive datetimes are
read as UTC, never as local time. ``create_signal`` builds a *whisper* (no decision) or a *decision* signal and never
overwrites a value the caller gave.
"""

from __future__ import annotations

import functools
import math
import re
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeGuard, cast

from cscapi.errors import InvalidArgumentError, InvalidIPError, ValidationError
from cscapi.iputil import canonical_address, canonical_range
from cscapi.machines import is_valid_machine_id, validate_machine_id
from cscapi.models import Context, Signal, SignalDecision, Source
from cscapi.timeutil import (
    GO_MAX_DURATION,
    format_go_duration,
    format_rfc3339,
    parse_go_duration,
    parse_timestamp,
    utcnow,
)

__all__ = [
    "SCENARIO_PATTERN",
    "as_signal_list",
    "canonical_ip",
    "canonical_network",
    "create_signal",
    "is_canonical",
    "validate_scenario",
    "validate_scenarios",
    "validate_signal",
    "validate_signals",
]

SCENARIO_PATTERN = re.compile(r"[A-Za-z0-9_-]+/[A-Za-z0-9_-]+")
"""``owner/name``, e.g. ``crowdsecurity/ssh-bf``."""

_MAX_TEXT = 4096
# Fast paths for values already in canonical form (what create_signal produces): checked, not re-rendered.
_CANONICAL_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", re.ASCII)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _shown(value: object) -> str:
    """A short repr of any value for a message: clipped, and never a RecursionError on a deeply nested one."""
    if isinstance(value, str):
        return repr(value[:100])
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**30 else "a very large integer"
    return f"a {type(value).__name__}"


@functools.lru_cache(maxsize=4096)
def _good_scenario(name: str) -> bool:
    return len(name) <= 255 and SCENARIO_PATTERN.fullmatch(name) is not None


def validate_scenario(name: object, field: str = "scenario") -> str:
    """Check a scenario name (``owner/name`` of letters, digits, ``_`` and ``-``)."""
    if not isinstance(name, str) or not _good_scenario(name):
        raise ValidationError(
            f"Invalid scenario name {_shown(name)}: expected 'owner/name' such as 'crowdsecurity/ssh-bf' "
            "(letters, digits, '_' and '-').",
            field=field,
        )
    return name


def validate_scenarios(names: object, field: str = "scenarios") -> list[str]:
    """Check a non-empty list of scenario names; returns it as a list (duplicates removed, order kept)."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ValidationError(
            "scenarios must be a list of scenario names such as ['crowdsecurity/ssh-bf'].", field=field
        )
    result: list[str] = []
    for name in names:
        validate_scenario(name, field)
        if name not in result:
            result.append(name)
    if not result:
        raise ValidationError(
            "scenarios must not be empty: CAPI tailors the community blocklist to the scenarios you declare.",
            field=field,
        )
    return result


@functools.lru_cache(maxsize=16384)
def _canonical_ip_text(value: str) -> str | None:
    try:
        return canonical_address(value.strip())
    except ValueError:
        return None


def canonical_ip(value: object, field: str = "source.value") -> str:
    """The canonical text of an IP address (lowercase, compressed IPv6; an IPv4-mapped IPv6 becomes IPv4)."""
    if not isinstance(value, str):
        raise InvalidIPError(f"Invalid IP address {_shown(value)}: expected a string.", field=field)
    text = _canonical_ip_text(value)
    if text is None:
        raise InvalidIPError(f"Invalid IP address {value[:100]!r}.", field=field)
    return text


@functools.lru_cache(maxsize=4096)
def _canonical_range_text(value: str) -> str | None:
    try:
        return canonical_range(value.strip())
    except ValueError:
        return None


def canonical_network(value: object, field: str = "source.value") -> str:
    """The canonical text of a CIDR range (host bits cleared: ``10.0.0.7/8`` becomes ``10.0.0.0/8``)."""
    if not isinstance(value, str) or "/" not in value:
        raise InvalidIPError(
            f"Invalid IP range {_shown(value)}: expected CIDR notation such as 192.0.2.0/24 or 2001:db8::/32.",
            field=field,
            hint="Pass a range in CIDR notation, or use scope 'ip' for a single address.",
        )
    text = _canonical_range_text(value)
    if text is None:
        raise InvalidIPError(
            f"Invalid IP range {value[:100]!r}.",
            field=field,
            hint="Pass a range in CIDR notation such as 192.0.2.0/24 or 2001:db8::/32.",
        )
    return text


@functools.lru_cache(maxsize=8192)
def _is_canonical_timestamp(value: str) -> bool:
    """True for ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` naming a real date and time (month 13 is refused)."""
    if len(value) != 27 or _CANONICAL_TS.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value[:-1])
    except ValueError:
        return False
    return True


def _timestamp(value: object, field: str) -> str:
    if isinstance(value, str) and _is_canonical_timestamp(value):
        return value
    try:
        return format_rfc3339(parse_timestamp(value))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValidationError(f"Invalid timestamp in {field}: {exc}.", field=field) from None


def _uuid(value: object, field: str) -> str:
    if value is None or value == "":
        return str(uuidlib.uuid4())
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        if not isinstance(value, (str, uuidlib.UUID)):
            raise ValueError
        return str(uuidlib.UUID(str(value)))
    except ValueError:
        raise ValidationError(f"Invalid UUID in {field}: {_shown(value)}.", field=field) from None


def _text(value: object, field: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, not {type(value).__name__}.", field=field)
    if len(value) > _MAX_TEXT:
        raise ValidationError(f"{field} is too long ({len(value)} characters, at most {_MAX_TEXT}).", field=field)
    return value


def _duration(value: object, field: str) -> str:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds) or seconds < 0 or seconds > GO_MAX_DURATION:
            raise ValidationError(
                f"{field} must be a positive duration of at most {GO_MAX_DURATION:.0f} seconds (Go's limit), "
                f"not {_shown(value)}.",
                field=field,
            )
        return format_go_duration(seconds)
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a Go duration such as '4h' or '24h', not {_shown(value)}.", field=field)
    try:
        seconds = parse_go_duration(value)
    except ValueError as exc:
        raise ValidationError(
            f"{field} {value[:64]!r} is not a usable Go duration ({exc}; expected e.g. '4h', '1h30m', '3600s').",
            field=field,
        ) from None
    if seconds < 0:
        raise ValidationError(f"{field} must not be negative ({value[:64]!r}).", field=field)
    return value.strip()


def _source(source: object) -> Source:
    if source is None:
        raise ValidationError("The signal has no source: give the attacker's IP or range.", field="source")
    if isinstance(source, Mapping):
        source = Source.from_dict(source)
    if not isinstance(source, Source):
        raise ValidationError(f"source must be a Source or a dict, not {type(source).__name__}.", field="source")
    value = source.value if source.value not in (None, "") else (source.ip or source.range)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("The signal's source has no value (the attacker's IP or range).", field="source.value")
    if source.scope is not None and not isinstance(source.scope, str):
        raise ValidationError(f"source.scope must be a string, not {_shown(source.scope)}.", field="source.scope")
    scope = (source.scope or ("range" if "/" in value else "ip")).strip().lower()
    ip = _text(source.ip, "source.ip") or None  # kept as given unless the scope says it is the value (below)
    rng = _text(source.range, "source.range") or None
    if scope == "ip":
        value = canonical_ip(value)
        ip = canonical_ip(ip, "source.ip") if ip else value
    elif scope == "range":
        value = canonical_network(value)
        rng = canonical_network(rng, "source.range") if rng else value
    elif not scope:
        raise ValidationError("The signal's source has an empty scope.", field="source.scope")
    else:
        value = _text(value.strip(), "source.value")
    as_number = source.as_number
    if as_number is not None and not isinstance(as_number, str):
        if isinstance(as_number, int) and not isinstance(as_number, bool) and abs(as_number) < 2**64:
            as_number = str(as_number)
        else:
            raise ValidationError(
                f"source.as_number must be a string or int, not {_shown(as_number)}.", field="source.as_number"
            )
    lat = _coordinate(source.latitude, "source.latitude", 90.0)
    lon = _coordinate(source.longitude, "source.longitude", 180.0)
    return Source(
        scope=scope,
        value=value,
        ip=ip or None,
        range=rng or None,
        as_number=as_number or None,
        as_name=_text(source.as_name, "source.as_name") or None,
        cn=_text(source.cn, "source.cn") or None,
        latitude=lat,
        longitude=lon,
    )


def _coordinate(value: object, field: str, bound: float) -> float | None:
    if value is None:
        return None
    try:
        if not isinstance(value, (int, float, str)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError(f"{field} must be a number, not {_shown(value)}.", field=field) from None
    if not math.isfinite(number) or abs(number) > bound:
        raise ValidationError(f"{field} must be between -{bound:g} and {bound:g}, not {_shown(value)}.", field=field)
    return number


def _decision(item: object, index: int, signal: Signal, source: Source, start_at: str) -> SignalDecision:
    prefix = f"decisions[{index}]"
    if isinstance(item, Mapping):
        item = SignalDecision.from_dict(item)
    if not isinstance(item, SignalDecision):
        raise ValidationError(f"{prefix} must be a SignalDecision or a dict.", field=prefix)
    if item.duration is None:
        raise ValidationError(
            f"{prefix}.duration is missing (a Go duration such as '24h').", field=f"{prefix}.duration"
        )
    duration = _duration(item.duration, f"{prefix}.duration")
    if item.scope is not None and not isinstance(item.scope, str):
        raise ValidationError(f"{prefix}.scope must be a string, not {_shown(item.scope)}.", field=f"{prefix}.scope")
    scope = (item.scope or source.scope or "ip").strip().lower()
    value = item.value if item.value not in (None, "") else source.value
    if scope == "ip":
        value = canonical_ip(value, f"{prefix}.value")
    elif scope == "range":
        value = canonical_network(value, f"{prefix}.value")
    elif not isinstance(value, str) or not value:
        raise ValidationError(f"{prefix}.value is missing.", field=f"{prefix}.value")
    dtype = _text(item.type, f"{prefix}.type", "ban") or "ban"
    until = item.until
    if until not in (None, ""):
        until = _timestamp(until, f"{prefix}.until")
    else:
        try:
            until = format_rfc3339(parse_timestamp(start_at) + timedelta(seconds=parse_go_duration(duration)))
        except OverflowError:
            raise ValidationError(
                f"{prefix}.duration {duration!r} from start_at {start_at} ends after the year 9999.",
                field=f"{prefix}.duration",
            ) from None
    if item.id is not None and (not isinstance(item.id, int) or isinstance(item.id, bool)):
        raise ValidationError(f"{prefix}.id must be an integer.", field=f"{prefix}.id")
    if item.simulated is not None and not isinstance(item.simulated, bool):
        raise ValidationError(f"{prefix}.simulated must be true or false.", field=f"{prefix}.simulated")
    scenario = item.scenario if item.scenario not in (None, "") else signal.scenario
    return SignalDecision(
        duration=duration,
        uuid=_uuid(item.uuid, f"{prefix}.uuid"),
        scenario=_text(scenario, f"{prefix}.scenario"),
        origin=_text(item.origin, f"{prefix}.origin", "crowdsec") or "crowdsec",
        scope=scope,
        simulated=bool(item.simulated),
        until=until,
        id=item.id if item.id is not None else 0,
        type=dtype,
        value=value,
    )


def _context(context: object) -> list[Context] | None:
    if context is None:
        return None
    items: Iterable[Any]
    if isinstance(context, Mapping):
        items = [Context(key=str(k), value=v) for k, v in context.items()]
    elif isinstance(context, (list, tuple)):
        items = context
    else:
        raise ValidationError("context must be a dict or a list of {key, value} items.", field="context")
    result: list[Context] = []
    for index, item in enumerate(items):
        ctx = Context.from_dict(item) if isinstance(item, Mapping) else item
        if not isinstance(ctx, Context) or not isinstance(ctx.key, str) or not ctx.key:
            raise ValidationError(f"context[{index}] needs a non-empty string key.", field=f"context[{index}].key")
        value = ctx.value
        if value is None:
            value = ""
        elif not isinstance(value, str):
            try:
                value = str(value)
            except (RecursionError, ValueError):  # nested thousands deep; an int of more than 4300 digits
                raise ValidationError(
                    f"context[{index}].value cannot be turned into text ({type(value).__name__} nested too deeply "
                    "or too large).",
                    field=f"context[{index}].value",
                ) from None
        result.append(Context(key=ctx.key, value=_text(value, f"context[{index}].value")))
    return result or None


def _alert_id(value: object) -> int | None:
    """The local queue id: None or an int (the storage sets it)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValidationError(f"alert_id must be an integer or None, not {_shown(value)}.", field="alert_id")


def _default_message(scenario: str, source: Source, start_at: str) -> str:
    return f"{source.scope.capitalize() if source.scope else 'Ip'} {source.value} performed '{scenario}' at {start_at}"


def _from_mapping(data: Mapping[str, Any]) -> Signal:
    """``Signal.from_dict`` with the shapes it iterates checked first (a ``ValidationError``, not a ``TypeError``)."""
    for name in ("decisions", "context"):
        part = data.get(name)
        if part is not None and not isinstance(part, (list, tuple, Mapping)):
            raise ValidationError(f"{name} must be a list, not {type(part).__name__}.", field=name)
    try:
        return Signal.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"The signal cannot be read: {type(exc).__name__}.", field="signal") from None


def validate_signal(signal: Signal | Mapping[str, Any], *, now: datetime | None = None) -> Signal:
    """A normalised copy of ``signal``, or :class:`ValidationError` naming the first bad field.

    Fills what CAPI requires and the caller left out: ``created_at`` (now), ``start_at``/``stop_at`` (``created_at``),
    ``uuid`` (v4), ``message``, and each decision's ``uuid``, ``origin``, ``scope``/``value`` (source) and ``until``.
    """
    if isinstance(signal, Mapping):
        signal = _from_mapping(signal)
    if not isinstance(signal, Signal):
        raise ValidationError(f"Expected a Signal, got {type(signal).__name__}.", field="signal")
    scenario = validate_scenario(signal.scenario)
    machine_id = validate_machine_id(signal.machine_id)
    source = _source(signal.source)
    created_at = _timestamp(signal.created_at, "created_at") if signal.created_at else format_rfc3339(now or utcnow())
    start_at = _timestamp(signal.start_at, "start_at") if signal.start_at else created_at
    stop_at = _timestamp(signal.stop_at, "stop_at") if signal.stop_at else created_at
    if stop_at < start_at:
        raise ValidationError(f"stop_at ({stop_at}) is before start_at ({start_at}).", field="stop_at")
    decisions = None
    if signal.decisions:
        if not isinstance(signal.decisions, (list, tuple)):
            raise ValidationError("decisions must be a list.", field="decisions")
        decisions = [_decision(d, i, signal, source, start_at) for i, d in enumerate(signal.decisions)]
    message = _text(signal.message, "message") or _default_message(scenario, source, start_at)
    kind = _text(signal.kind, "kind") or None
    return Signal(
        scenario=scenario,
        source=source,
        machine_id=machine_id,
        created_at=created_at,
        start_at=start_at,
        stop_at=stop_at,
        uuid=_uuid(signal.uuid, "uuid"),
        message=message,
        scenario_hash=_text(signal.scenario_hash, "scenario_hash"),
        scenario_version=_text(signal.scenario_version, "scenario_version"),
        scenario_trust=_text(signal.scenario_trust, "scenario_trust", "manual") or "manual",
        decisions=decisions,
        context=_context(signal.context),
        kind=kind,
        sent=False,
        alert_id=_alert_id(signal.alert_id),
    )


def _short_text(value: object) -> bool:
    return type(value) is str and len(value) <= _MAX_TEXT


def _optional_text(value: object) -> bool:
    """None, or a non-empty string short enough (what ``_text(...) or None`` leaves unchanged)."""
    return value is None or (type(value) is str and 0 < len(value) <= _MAX_TEXT)


def _canonical_coordinate(value: object, bound: float) -> bool:
    return value is None or (type(value) is float and math.isfinite(value) and abs(value) <= bound)


def _canonical_source(source: object) -> bool:
    """True when ``_source`` would return an equal Source: a canonical ip (or range) scope and clean optional fields."""
    if type(source) is not Source:
        return False
    value = source.value
    if type(value) is not str:
        return False
    if source.scope == "ip":
        if source.range is not None or _canonical_ip_text(value) != value:
            return False
        ip = source.ip  # validation fills a missing ip in with the value, and canonicalises a given one
        if type(ip) is not str or (ip != value and _canonical_ip_text(ip) != ip):
            return False
    elif source.scope == "range":
        if source.ip is not None or "/" not in value or _canonical_range_text(value) != value:
            return False
        if source.range != value:
            return False
    else:
        return False
    return (
        (source.as_number is None or (type(source.as_number) is str and source.as_number != ""))
        and _optional_text(source.as_name)
        and _optional_text(source.cn)
        and _canonical_coordinate(source.latitude, 90.0)
        and _canonical_coordinate(source.longitude, 180.0)
    )


@functools.lru_cache(maxsize=1024)
def _canonical_duration(value: str) -> bool:
    """True for a Go duration ``_duration`` keeps as it is (no surrounding spaces, not negative)."""
    if value != value.strip():
        return False
    try:
        return parse_go_duration(value) >= 0
    except ValueError:
        return False


def _canonical_decision(item: object, source: Source) -> bool:
    """True when ``_decision`` would return an equal decision (all defaults already filled in)."""
    if type(item) is not SignalDecision:
        return False
    scope, value, until, duration = item.scope, item.value, item.until, item.duration
    if type(scope) is not str or scope != source.scope or type(value) is not str:
        return False
    if scope == "ip":
        if _canonical_ip_text(value) != value:
            return False
    elif scope != "range" or "/" not in value or _canonical_range_text(value) != value:
        return False
    return (
        type(duration) is str
        and _canonical_duration(duration)
        and type(until) is str
        and _is_canonical_timestamp(until)
        and type(item.uuid) is str
        and _CANONICAL_UUID.fullmatch(item.uuid) is not None
        and type(item.id) is int
        and type(item.simulated) is bool
        and _optional_text(item.type)
        and item.type is not None
        and _optional_text(item.scenario)
        and item.scenario is not None
        and _optional_text(item.origin)
        and item.origin is not None
    )


def _canonical_context(context: object) -> bool:
    if context is None:
        return True
    if type(context) is not list or not context:
        return False
    for item in context:
        if type(item) is not Context or type(item.key) is not str or not item.key or not _short_text(item.value):
            return False
    return True


def is_canonical(signal: object) -> TypeGuard[Signal]:
    """True when ``validate_signal(signal)`` would return a signal equal to ``signal`` (checked, not rebuilt).

    The fast path of :func:`validate_signals` for what ``create_signal`` produced: every field is checked with the
    same rules as the full validation (cached for scenario names, machine ids, IPs, durations and timestamps), but
    no object is built. Anything not already in canonical form goes through the full validation.
    """
    if type(signal) is not Signal or signal.sent is not False:
        return False
    created_at, start_at, stop_at = signal.created_at, signal.start_at, signal.stop_at
    scenario, machine_id, uuid = signal.scenario, signal.machine_id, signal.uuid
    return (
        type(scenario) is str
        and _good_scenario(scenario)
        and type(machine_id) is str
        and is_valid_machine_id(machine_id)
        and type(created_at) is str
        and _is_canonical_timestamp(created_at)
        and type(start_at) is str
        and _is_canonical_timestamp(start_at)
        and type(stop_at) is str
        and _is_canonical_timestamp(stop_at)
        and stop_at >= start_at
        and type(uuid) is str
        and _CANONICAL_UUID.fullmatch(uuid) is not None
        and _optional_text(signal.message)
        and signal.message is not None
        and _short_text(signal.scenario_hash)
        and _short_text(signal.scenario_version)
        and _optional_text(signal.scenario_trust)
        and signal.scenario_trust is not None
        and _optional_text(signal.kind)
        and _canonical_source(signal.source)
        and _canonical_context(signal.context)
        and _canonical_decisions(signal.decisions, signal.source)  # type: ignore[arg-type]
    )


def _canonical_decisions(decisions: object, source: Source) -> bool:
    if decisions is None:
        return True
    if type(decisions) is not list or not decisions:
        return False
    return all(_canonical_decision(item, source) for item in decisions)


def as_signal_list(signals: object, argument: str = "signals") -> list[Any]:
    """``signals`` as a list: one signal (a ``Signal`` or a dict) or an iterable of them.

    Anything else (``None``, a number, a string) raises :class:`~cscapi.errors.InvalidArgumentError` naming
    ``argument``: a ``ValidationError`` that is also a ``TypeError`` (what iterating it used to raise).
    """
    if isinstance(signals, (Signal, Mapping)):
        return [signals]
    if isinstance(signals, (str, bytes, bytearray)) or not isinstance(signals, Iterable):
        raise InvalidArgumentError(
            f"{argument} must be a list of signals (Signal objects or dicts), not {type(signals).__name__}.",
            field=argument,
            hint="Pass e.g. [create_signal('192.0.2.1', 'crowdsecurity/ssh-bf', machine_id=...)]; nothing was stored.",
        )
    return list(signals)


def validate_signals(signals: Iterable[Signal | Mapping[str, Any]], *, reuse: bool = False) -> list[Signal]:
    """Validate every signal first; a :class:`ValidationError` names the signal's index and the bad field.

    With ``reuse=True`` a signal already in canonical form (see :func:`is_canonical`, e.g. straight from
    ``create_signal``) is returned itself instead of a copy: what ``add_signals`` does, since it hands the list to the
    storage at once. The others are normalised copies, as always.
    """
    signals = as_signal_list(signals)
    now = utcnow()
    result: list[Signal] = []
    for index, signal in enumerate(signals):
        if reuse and is_canonical(signal):
            result.append(signal)
            continue
        try:
            result.append(validate_signal(signal, now=now))
        except ValidationError as exc:
            field = f"signals[{index}].{exc.field}" if exc.field else f"signals[{index}]"
            raise type(exc)(f"Signal #{index}: {exc.message}", field=field, hint=exc.hint) from None
    return result


_SOURCE_KEYS = ("as_number", "as_name", "cn", "latitude", "longitude")


def create_signal(
    attacker_ip: str,
    scenario: str,
    created_at: str | datetime | None = None,
    machine_id: str | None = None,
    context: Mapping[str, Any] | list[Any] | None = None,
    decisions: list[SignalDecision | Mapping[str, Any]] | None = None,
    *,
    decision_type: str | None = None,
    duration: str | float | timedelta | None = None,
    **kwargs: Any,
) -> Signal:
    """Build a validated signal about ``attacker_ip`` (an IP or a CIDR range) for ``scenario``.

    A *whisper* by default (no decision). Pass ``decision_type="ban", duration="24h"`` for a *decision* signal (one
    decision, uuid v4, origin ``crowdsec``, scope and value from the source), or ``decisions=[...]`` yourself.
    Other keywords are signal fields (``scenario_version``, ``scenario_hash``, ``scenario_trust``, ``message``,
    ``uuid``, ``start_at``, ``stop_at``, ``kind``), a ``source=`` dict or :class:`Source`, or source fields
    (``as_number``, ``as_name``, ``cn``, ``latitude``, ``longitude``, ``scope``). Nothing you give is overwritten.
    """
    source_arg = kwargs.pop("source", None)
    source_fields = {k: kwargs.pop(k) for k in _SOURCE_KEYS if k in kwargs}
    scope = kwargs.pop("scope", None)
    if isinstance(source_arg, Mapping):
        source = Source.from_dict(source_arg)
    elif isinstance(source_arg, Source):
        source = Source(**{f: getattr(source_arg, f) for f in Source.__dataclass_fields__})
    elif source_arg is None:
        source = Source()
    else:
        raise ValidationError("source must be a dict or a Source.", field="source")
    if source.value in (None, ""):
        source.value = attacker_ip
    if source.scope in (None, "") and scope:
        source.scope = scope
    for key, value in source_fields.items():
        if getattr(source, key) is None:
            setattr(source, key, value)
    unknown = set(kwargs) - set(Signal.__dataclass_fields__) - {"sent", "alert_id"}
    if unknown:
        raise ValidationError(
            f"create_signal got unknown argument(s): {', '.join(sorted(unknown))}.", field=sorted(unknown)[0]
        )
    if decision_type is not None or duration is not None:
        if decisions:
            raise ValidationError(
                "Pass either decisions=[...] or decision_type/duration, not both.", field="decision_type"
            )
        wanted = duration if duration is not None else "24h"
        decisions = [SignalDecision(type=decision_type or "ban", duration=_duration(wanted, "duration"))]
    if decisions is not None and not isinstance(decisions, (list, tuple)):
        raise ValidationError(f"decisions must be a list, not {type(decisions).__name__}.", field="decisions")
    created = created_at if created_at is None or isinstance(created_at, str) else _timestamp(created_at, "created_at")
    signal = Signal(
        scenario=scenario,
        source=source,
        machine_id=machine_id,
        created_at=created,
        context=_context(context),
        decisions=cast("list[SignalDecision]", list(decisions)) if decisions else None,
        **kwargs,
    )
    return validate_signal(signal)
