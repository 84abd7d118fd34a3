"""Machine credential policy: id and password formats, and when a stored token may still be used.

Pure functions shared by ``cscapi.utils`` (generators), ``cscapi._core`` (login flow) and the CLI.
"""

from __future__ import annotations

import functools
import re
import secrets
import string
from collections.abc import Iterable
from datetime import datetime, timedelta

from cscapi.errors import ValidationError
from cscapi.models import Machine

__all__ = [
    "MACHINE_ID_LENGTH",
    "MAX_PREFIX_LENGTH",
    "PASSWORD_LENGTH",
    "is_valid_machine_id",
    "random_machine_id",
    "random_password",
    "scenario_set",
    "scenarios_key",
    "token_is_live",
    "token_is_usable",
    "validate_machine_id",
    "validate_machine_id_prefix",
]

MACHINE_ID_LENGTH = 48
"""CAPI's login takes exactly 48 alphanumeric characters."""
MAX_PREFIX_LENGTH = 16
PASSWORD_LENGTH = 64

_ID_ALPHABET = string.ascii_lowercase + string.digits
_PASSWORD_ALPHABET = string.ascii_letters + string.digits
_MACHINE_ID = re.compile(r"[a-zA-Z0-9]{48}")
_PREFIX = re.compile(r"[a-z0-9]{0,16}")


def validate_machine_id_prefix(prefix: str, field: str = "prefix") -> str:
    """Check a machine id prefix: lowercase letters and digits, at most 16 characters (it counts in the 48)."""
    if not isinstance(prefix, str) or _PREFIX.fullmatch(prefix) is None:
        raise ValidationError(
            f"Invalid machine id prefix {prefix!r}: use at most {MAX_PREFIX_LENGTH} lowercase letters and digits.",
            field=field,
        )
    return prefix


@functools.lru_cache(maxsize=1024)
def is_valid_machine_id(machine_id: str) -> bool:
    """True for exactly 48 ASCII letters or digits (cached: a process sees few machine ids)."""
    return _MACHINE_ID.fullmatch(machine_id) is not None


def validate_machine_id(machine_id: object, field: str = "machine_id") -> str:
    """Check a machine id: exactly 48 letters or digits, as CAPI's login requires."""
    if not isinstance(machine_id, str) or not is_valid_machine_id(machine_id):
        shown = machine_id if isinstance(machine_id, str) and len(machine_id) <= 80 else type(machine_id).__name__
        raise ValidationError(
            f"Invalid machine id {shown!r}: it must be exactly {MACHINE_ID_LENGTH} letters or digits.",
            field=field,
            hint="Use cscapi.utils.generate_machine_id() or generate_machine_id_from_key(); nothing was sent.",
        )
    return machine_id


def random_machine_id(prefix: str = "") -> str:
    """``prefix`` followed by random lowercase letters and digits (CSPRNG), 48 characters in all."""
    validate_machine_id_prefix(prefix)
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(MACHINE_ID_LENGTH - len(prefix)))


def random_password(length: int = PASSWORD_LENGTH) -> str:
    """A password of ``length`` random letters and digits from the operating system's CSPRNG."""
    if length < 16:
        raise ValidationError("A machine password needs at least 16 characters.", field="length")
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def scenarios_key(scenarios: Iterable[str]) -> str:
    """The sorted, comma-joined scenario set stored with a token (``Machine.scenarios``)."""
    return ",".join(sorted(set(scenarios)))


def scenario_set(key: str | None) -> frozenset[str]:
    """The scenarios a stored token was obtained with (the inverse of :func:`scenarios_key`)."""
    return frozenset(name for name in (key or "").split(",") if name)


def token_is_live(machine: Machine, now: datetime, latency_offset: float) -> bool:
    """True when the machine holds a token with a known expiry that is not within ``latency_offset`` s of it."""
    if not machine.token or machine.token_expires_at is None:
        return False
    return now < machine.token_expires_at - timedelta(seconds=latency_offset)


def token_is_usable(machine: Machine, scenarios: str | Iterable[str], now: datetime, latency_offset: float) -> bool:
    """True when the stored token can be sent for a call needing ``scenarios`` (a key or a collection).

    It must be live (see :func:`token_is_live`) and have been obtained with **at least** those scenarios: a token
    declaring more is fine, so calls needing different subsets never log in again one after the other. A token
    without a known expiry is never reused (we cannot tell whether it is still valid).
    """
    if not token_is_live(machine, now, latency_offset):
        return False
    wanted = scenario_set(scenarios) if isinstance(scenarios, str) else frozenset(scenarios)
    return wanted <= scenario_set(machine.scenarios)
