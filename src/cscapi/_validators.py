"""The one check per setting shared by every configuration layer: ``CAPIClientConfig``, the CLI/agent settings
(``cscapi.settings``) and ``AgentConfig`` call these same functions, so a value is judged the same way everywhere.

Each takes an already typed value (the settings layer converts text from TOML, the environment or a flag first) and
returns it (normalised) or raises :class:`~cscapi.errors.ConfigurationError` naming the setting and the rule. Only the
standard library and light cscapi modules are imported at module level: ``cscapi --help`` reads this module.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

from cscapi.errors import ConfigurationError
from cscapi.limits import (
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_REFRESH_JITTER,
    MAX_BATCH,
    MAX_RETRIES,
    MIN_REFRESH_INTERVAL,
)

__all__ = [
    "UA_PREFIX_CHARS",
    "UA_PREFIX_MAX_LENGTH",
    "check_batch_size",
    "check_byte_cap",
    "check_deadline",
    "check_machine_id_prefix",
    "check_max_retries",
    "check_refresh",
    "check_scenarios",
    "check_timeout",
    "check_user_agent_prefix",
]

#: The User-Agent is ``{prefix}-capi-py-sdk/{version}``: the prefix is part of an RFC 9110 product token, so it is
#: restricted to a safe subset of ``tchar`` (no space, ``/``, ``(``, ``;``, quote, control or non-ASCII character).
UA_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
UA_PREFIX_MAX_LENGTH = 64


def check_user_agent_prefix(value: object) -> str:
    """``user_agent_prefix``: at most 64 letters, digits, ``.``, ``_`` or ``-`` (empty: no prefix)."""
    if not isinstance(value, str) or len(value) > UA_PREFIX_MAX_LENGTH or not set(value) <= UA_PREFIX_CHARS:
        raise ConfigurationError(
            f"user_agent_prefix {value!r} is invalid: use at most {UA_PREFIX_MAX_LENGTH} letters, digits, '.', '_' "
            "or '-'.",
            hint="It becomes the first word of the User-Agent header, for example: myapp.",
        )
    return value


def _integer(name: str, value: object, low: int, high: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(f"{name} must be an integer from {low} to {high}{why}, not {value!r}.")
    return value


def check_batch_size(value: object) -> int:
    """``batch_size`` (signals per POST): an integer from 1 to ``MAX_BATCH`` (250, CAPI's limit); more is refused."""
    return _integer("batch_size", value, 1, MAX_BATCH, f" (CAPI accepts at most {MAX_BATCH} signals per POST)")


def check_max_retries(value: object) -> int:
    """``max_retries``: an integer from 0 to ``MAX_RETRIES`` (20)."""
    return _integer("max_retries", value, 0, MAX_RETRIES)


def check_timeout(value: object) -> Any:
    """``timeout``: a positive number of seconds, or an ``httpx.Timeout`` whose set parts are positive (this module
    never imports httpx: the CLI settings, which pass numbers, stay light)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and value > 0:
            return value
    elif (httpx := sys.modules.get("httpx")) is not None and isinstance(value, httpx.Timeout):
        # an httpx.Timeout means httpx is imported already
        for part in ("connect", "read", "write", "pool"):
            seconds = getattr(value, part)
            if seconds is not None and (not math.isfinite(seconds) or seconds <= 0):
                raise ConfigurationError(
                    f"timeout.{part} must be a positive number of seconds (or None), not {seconds!r}."
                )
        return value
    raise ConfigurationError(
        f"timeout must be a positive number of seconds or an httpx.Timeout, not {_short(value)}.",
        hint="e.g. timeout=30 or timeout=httpx.Timeout(30, connect=5); a request that gets no answer in time "
        "is retried, then raises TransportError.",
    )


def check_deadline(value: object) -> float:
    """``deadline``: the total seconds one request may take (redirects included), a finite number of at least 1 ms."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0.001:
        return value
    raise ConfigurationError(
        f"deadline must be a number of seconds >= 0.001, not {_short(value)}.",
        hint="It bounds a whole request, a slow download included (the default is 600 s).",
    )


CACHE_DURATION_MIN = 1
CACHE_DURATION_MAX = 86400


def check_cache_duration(name: str, value: object) -> float:
    """A LAPI live-mode cache duration (``bad_ip_cache_duration``, ``clean_ip_cache_duration``): 1 to 86400 seconds,
    the one rule for ``LapiClient`` and the settings."""
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and CACHE_DURATION_MIN <= value <= CACHE_DURATION_MAX
    ):
        return float(value)
    raise ConfigurationError(
        f"{name} must be a number of seconds from {CACHE_DURATION_MIN} to {CACHE_DURATION_MAX}, not {_short(value)}.",
        hint="It is how long a live-mode LAPI answer about an IP stays cached (docs/lapi.md).",
    )


def check_byte_cap(name: str, value: object) -> int:
    """A decompressed size cap (``max_stream_bytes``, ``max_link_bytes``): a whole number of bytes, at least 1."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigurationError(
        f"{name} must be an integer >= 1 (bytes), not {_short(value)}.",
        hint="An answer larger than this once decompressed is refused (ResponseTooLargeError), nothing applied.",
    )


def check_refresh(interval: float, jitter: float) -> None:
    """A pull never comes sooner than CAPI's minimum: ``refresh_interval - refresh_jitter >= MIN_REFRESH_INTERVAL``."""
    effective = interval - jitter
    if not math.isfinite(effective) or effective < MIN_REFRESH_INTERVAL:
        raise ConfigurationError(
            f"refresh_interval - refresh_jitter is {effective:g} s, under CAPI's minimum of {MIN_REFRESH_INTERVAL} s",
            hint="Raise refresh_interval or lower refresh_jitter (the defaults are "
            f"{DEFAULT_REFRESH_INTERVAL:g} and {DEFAULT_REFRESH_JITTER:g}).",
        )


def check_machine_id_prefix(value: object, name: str = "machine_id_prefix") -> str:
    """Prefix of generated machine ids: lowercase letters and digits, at most 16 (it counts inside the 48)."""
    from cscapi.errors import ValidationError
    from cscapi.machines import validate_machine_id_prefix

    try:
        return validate_machine_id_prefix(value, name)  # type: ignore[arg-type]  # checked there
    except ValidationError as exc:
        raise ConfigurationError(exc.message, hint="It counts inside the 48 characters of a machine id.") from None


def check_scenarios(values: object, *, allow_empty: bool = False) -> list[str]:
    """Scenario names (``author/name``), duplicates removed in order; an empty list only when ``allow_empty``."""
    from cscapi.errors import ValidationError
    from cscapi.signals import validate_scenario

    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ConfigurationError(
            f"scenarios must be a list of scenario names such as ['crowdsecurity/ssh-bf'], not {values!r}."
        )
    result: list[str] = []
    for name in values:
        try:
            validate_scenario(name)
        except ValidationError:
            raise ConfigurationError(
                f"invalid scenario name {_short(name)}",
                hint="Scenarios are written author/name with letters, digits, _ and -, e.g. crowdsecurity/ssh-bf.",
            ) from None
        if name not in result:
            result.append(name)
    if not result and not allow_empty:
        raise ConfigurationError(
            "scenarios must not be empty: CAPI tailors the community blocklist to the scenarios you declare."
        )
    return result


def _short(value: object) -> str:
    """``repr`` of a refused value, cut at 80 characters (an error message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
