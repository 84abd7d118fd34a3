"""Emulator settings: one dataclass, readable from a JSON or TOML file and from command-line flags.

Only the standard library is imported here, so ``from cscapi.emulator import EmulatorConfig`` stays cheap.
"""

from __future__ import annotations

import importlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cscapi.emulator.jsonlimits import loads_limited
from cscapi.errors import ConfigurationError

__all__ = [
    "ENDPOINTS",
    "EmulatorConfig",
    "FaultSpec",
    "LoginRateLimit",
    "load_config_file",
    "parse_fault_option",
]

#: Endpoint names used for fault injection and request counters. ``*`` in a fault applies to all of them.
ENDPOINTS: tuple[str, ...] = (
    "register",
    "login",
    "enroll",
    "reset",
    "signals",
    "decisions_stream",
    "decisions_delete",
    "decisions_sync",
    "metrics",
    "usage_metrics",
    "blocklist_download",
    "allowlist_download",
)


#: The longest duration any setting accepts (10 years): longer ones are typos and overflow date arithmetic.
MAX_SECONDS = 10 * 365 * 86400


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class FaultSpec:
    """What goes wrong on one endpoint (fractions are probabilities in ``[0, 1]``, drawn from a seeded RNG).

    Checked in this order: ``latency`` (always added), ``drop_rate`` (the connection is closed with no response),
    ``rate_limit_rate`` (429 with ``Retry-After: retry_after``), ``error_rate`` (``error_status``, a 5xx).
    ``token_lifetime`` (login only, or ``*``): tokens issued while it is set stop working after that many seconds,
    although their ``exp`` claims the normal lifetime ("tokens that expire early").
    ``remaining``: apply to that many requests only, then the fault clears itself (``None`` = until cleared).
    """

    error_rate: float = 0.0
    error_status: int = 500
    rate_limit_rate: float = 0.0
    retry_after: int = 30
    latency: float = 0.0
    drop_rate: float = 0.0
    token_lifetime: float | None = None
    remaining: int | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "rate_limit_rate", "drop_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
                raise ConfigurationError(f"fault {name} must be a number between 0 and 1, got {value!r}")
            setattr(self, name, float(value))
        if not isinstance(self.error_status, int) or not 500 <= self.error_status <= 599:
            raise ConfigurationError(f"fault error_status must be a 5xx status, got {self.error_status!r}")
        if not isinstance(self.retry_after, int) or not 0 <= self.retry_after <= MAX_SECONDS:
            raise ConfigurationError(
                f"fault retry_after must be a whole number of seconds between 0 and {MAX_SECONDS}, "
                f"got {self.retry_after!r}"
            )
        if not _number(self.latency) or not 0 <= self.latency <= 300:  # `not <=` also refuses NaN
            raise ConfigurationError(f"fault latency must be between 0 and 300 seconds, got {self.latency!r}")
        self.latency = float(self.latency)
        if self.token_lifetime is not None and (
            not _number(self.token_lifetime) or not 0 <= self.token_lifetime <= MAX_SECONDS
        ):
            raise ConfigurationError(
                f"fault token_lifetime must be between 0 and {MAX_SECONDS} seconds, got {self.token_lifetime!r}"
            )
        if self.remaining is not None and (not isinstance(self.remaining, int) or self.remaining < 1):
            raise ConfigurationError(f"fault remaining must be a positive integer, got {self.remaining!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultSpec:
        """Build from a mapping; an unknown key is a ``ConfigurationError`` naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown fault setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every setting."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class LoginRateLimit:
    """CAPI's login rate limit (protocol notes §9): too many logins in ``window`` seconds gives 403 and a ban.

    The threshold depends on the machine: enrolled or not, sharing signals or not (the strictest documented
    numbers by default). ``per`` is ``"machine"`` (each machine counted alone) or ``"ip"`` (the source address,
    as the real CAPI does for free accounts). A ban ends at a fixed time: attempts while banned are refused without
    moving it, so an engine that retries every 30 minutes recovers on its own. ``retry_extends_ban`` makes each
    attempt restart the ban instead, as one draft of CrowdSec's documentation says.
    """

    enabled: bool = True
    window: float = 50 * 60
    ban: float = 60 * 60
    threshold: int = 5
    threshold_sharing: int = 10
    threshold_enrolled: int = 10
    threshold_enrolled_sharing: int = 20
    per: str = "machine"
    retry_extends_ban: bool = False

    def __post_init__(self) -> None:
        if self.per not in {"machine", "ip"}:
            raise ConfigurationError(f"login_rate_limit.per must be 'machine' or 'ip', got {self.per!r}")
        for name in ("threshold", "threshold_sharing", "threshold_enrolled", "threshold_enrolled_sharing"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"login_rate_limit.{name} must be a positive integer, got {value!r}")
        for name in ("window", "ban"):
            value = getattr(self, name)
            if not _number(value) or not 0 < value <= MAX_SECONDS:
                raise ConfigurationError(
                    f"login_rate_limit.{name} must be a positive number of seconds, at most {MAX_SECONDS} (10 years)"
                )

    def limit_for(self, *, enrolled: bool, sharing: bool) -> int:
        """How many logins are allowed in one window for a machine in that situation."""
        if enrolled:
            return self.threshold_enrolled_sharing if sharing else self.threshold_enrolled
        return self.threshold_sharing if sharing else self.threshold

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoginRateLimit:
        """Build from a mapping; an unknown key is a ``ConfigurationError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(f"unknown login_rate_limit setting(s) {', '.join(unknown)}")
        return cls(**dict(data))


def _random_admin_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told at start. All of it can also be changed at run time via the admin API.

    Community blocklist: ``community_file`` (one value per line, or JSON) if given, else ``community_size``
    generated decisions, reproducible from ``seed``, their scenarios drawn from a realistic set or only from
    ``community_scenarios`` (e.g. the scenarios a demo's client declares, since the list is tailored to them).
    ``blocklists`` / ``allowlists`` are published lists:
    ``{"name": ..., "content": [values], "remediation": "ban", "scope": "ip", "duration": "24h"}`` and
    ``{"name": ..., "description": ..., "items": [{"value": ..., "description"?, "expiration"?}]}``.
    ``state_path``: ``None`` keeps state in memory; a file path keeps it in SQLite across restarts.
    ``snapshot_cache``: full (startup) stream answers are built once per list change and reused for up to
    ``snapshot_max_age`` seconds (durations then read up to that much long); ``False`` rebuilds every answer.
    ``tailor_to_scenarios`` (on by default): each machine only gets the community decisions of the scenarios it
    sent at login, as the real CAPI tailors the list; ``False`` gives every machine the whole list.
    Slow or many clients (the server, not the in-process app): at most ``max_connections`` open connections
    (more get 503), ``header_timeout`` seconds to send a request's headers, ``body_timeout`` for its body (408
    after), ``keep_alive_timeout`` idle seconds between requests, and at most ``max_inflight_body_bytes`` of
    request bodies buffered at once across all requests (503 with ``Retry-After`` beyond; the last eighth of it, at
    most 1 MiB, is kept for bodies of up to 64 KiB, so that slow large senders never starve a normal request).
    Enrollment accepts any well-formed attachment key (the swagger's ``^[a-zA-Z0-9]+$``) unless
    ``only_listed_attachment_keys`` is set: then only ``attachment_keys`` (and keys the admin API adds) are accepted.
    ``clock`` replaces ``time.time`` (tests only; not settable from a file).
    """

    seed: int = 0
    community_size: int = 1000
    community_file: str | None = None
    community_scenarios: Sequence[str] | None = None
    token_lifetime: float = 3600.0
    attachment_keys: Sequence[str] = field(default=(), repr=False)  # secrets, like the admin token
    only_listed_attachment_keys: bool = False
    login_rate_limit: LoginRateLimit = field(default_factory=LoginRateLimit)
    admin_token: str = field(default_factory=_random_admin_token, repr=False)
    state_path: str | None = None
    faults: dict[str, FaultSpec] = field(default_factory=dict)
    blocklists: list[dict[str, Any]] = field(default_factory=list)
    allowlists: list[dict[str, Any]] = field(default_factory=list)
    max_batch: int = 250
    max_body_bytes: int = 4 * 1024 * 1024
    snapshot_cache: bool = True
    snapshot_max_age: float = 5.0
    tailor_to_scenarios: bool = True
    max_connections: int = 512
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: int = 5
    max_inflight_body_bytes: int = 64 * 1024 * 1024
    clock: Callable[[], float] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.login_rate_limit, Mapping):
            self.login_rate_limit = LoginRateLimit.from_dict(self.login_rate_limit)
        if isinstance(self.attachment_keys, str):
            self.attachment_keys = (self.attachment_keys,)
        self.attachment_keys = tuple(self.attachment_keys)
        for key in self.attachment_keys:
            if not isinstance(key, str) or not key.isalnum() or not key.isascii():
                raise ConfigurationError("attachment keys must be non-empty ASCII letters and digits")
        if self.community_scenarios is not None:
            if isinstance(self.community_scenarios, str) or not all(
                isinstance(n, str) and n for n in self.community_scenarios
            ):
                raise ConfigurationError("community_scenarios must be a list of scenario names")
            self.community_scenarios = tuple(self.community_scenarios)
        faults: dict[str, FaultSpec] = {}
        for endpoint, spec in dict(self.faults).items():
            if endpoint != "*" and endpoint not in ENDPOINTS:
                raise ConfigurationError(f"unknown fault endpoint {endpoint!r}; known: *, {', '.join(ENDPOINTS)}")
            faults[endpoint] = spec if isinstance(spec, FaultSpec) else FaultSpec.from_dict(spec)
        self.faults = faults
        if not isinstance(self.community_size, int) or self.community_size < 0 or self.community_size > 5_000_000:
            raise ConfigurationError(f"community_size must be between 0 and 5,000,000, got {self.community_size!r}")
        if not _number(self.token_lifetime) or not 0 < self.token_lifetime <= MAX_SECONDS:
            raise ConfigurationError(
                f"token_lifetime must be a positive number of seconds, at most {MAX_SECONDS} (10 years), "
                f"got {self.token_lifetime!r}"
            )
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ConfigurationError(f"max_batch must be a positive integer, got {self.max_batch!r}")
        if not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 1024:
            raise ConfigurationError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes!r}")
        for name in ("max_connections", "keep_alive_timeout", "max_inflight_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        for name in ("header_timeout", "body_timeout"):
            value = getattr(self, name)
            if not _number(value) or not 0 < value <= 3600:
                raise ConfigurationError(f"{name} must be more than 0 and at most 3600 seconds, got {value!r}")
        if not self.admin_token or not isinstance(self.admin_token, str):
            raise ConfigurationError("admin_token must be a non-empty string")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmulatorConfig:
        """Build from a mapping as read from a config file; unknown keys are a ``ConfigurationError``."""
        known = {f.name for f in fields(cls)} - {"clock"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown emulator setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ConfigurationError(f"invalid emulator setting: {exc}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config file (``.toml`` as TOML, anything else as JSON) for ``EmulatorConfig.from_dict``."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read emulator config file {p}: {exc.strerror}") from None
    if p.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            try:
                tomllib = importlib.import_module("tomli")
            except ImportError:
                raise ConfigurationError(
                    "TOML config files need Python 3.11+ or the 'tomli' package; use a JSON file instead"
                ) from None
        try:
            data = tomllib.loads(text)
        except RecursionError:
            raise ConfigurationError(f"{p} is not valid TOML: nested too deeply") from None
        except ValueError as exc:
            raise ConfigurationError(f"{p} is not valid TOML: {exc}") from None
    else:
        try:
            data = loads_limited(text)
        except ValueError as exc:
            raise ConfigurationError(f"{p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{p} must hold a table/object of settings at the top level")
    return data


def _parse_scalar(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in {"none", "null"}:
        return None
    if lowered in {"true", "false"}:
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(f"fault values must be numbers, got {text!r}") from None


def parse_fault_option(option: str) -> tuple[str, FaultSpec]:
    """Parse a ``--fault`` flag ``ENDPOINT:key=value[,...]``, e.g. ``signals:error_rate=0.5,error_status=503``."""
    endpoint, sep, rest = option.partition(":")
    endpoint = endpoint.strip()
    if not sep or not endpoint or not rest.strip():
        raise ConfigurationError(f"--fault expects ENDPOINT:key=value[,key=value], got {option!r}")
    if endpoint != "*" and endpoint not in ENDPOINTS:
        raise ConfigurationError(f"unknown fault endpoint {endpoint!r}; known: *, {', '.join(ENDPOINTS)}")
    settings: dict[str, Any] = {}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ConfigurationError(f"--fault setting {part!r} must look like key=value")
        settings[key.strip()] = _parse_scalar(value)
    return endpoint, FaultSpec.from_dict(settings)
