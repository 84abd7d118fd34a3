"""The settings of the ``cscapi`` command and agent (``cscapi.settings``; ``cscapi.config`` is an alias kept for
imports written before it was renamed): one table of settings, four layers, and where each value came from.

Precedence, highest first: command-line flags > environment (``CSCAPI_*``) > the TOML config file > defaults.
``load_settings`` returns a :class:`Settings` that remembers the source of every value, so ``cscapi config show``
can say why a value is what it is. Each setting shared with ``CAPIClientConfig`` or ``AgentConfig`` is checked by the
same function (:mod:`cscapi._validators`), limits come from :mod:`cscapi.limits`. Only the standard library and
those light modules are imported here (``tomllib`` when a file is read): ``cscapi --help`` stays fast.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cscapi._validators import (
    check_batch_size,
    check_byte_cap,
    check_cache_duration,
    check_deadline,
    check_machine_id_prefix,
    check_max_retries,
    check_refresh,
    check_scenarios,
    check_timeout,
    check_user_agent_prefix,
)
from cscapi.errors import ConfigurationError
from cscapi.limits import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_LINK_BYTES,
    DEFAULT_MAX_STREAM_BYTES,
    DEFAULT_METRICS_INTERVAL,
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_REFRESH_JITTER,
    DEV_URL,
    MAX_BATCH,
    MAX_PUSH_INTERVAL,
    MAX_RETRIES,
    MIN_METRICS_INTERVAL,
    MIN_PUSH_INTERVAL,
    MIN_REFRESH_INTERVAL,
    PROD_URL,
)
from cscapi.redact import mask_url

__all__ = [
    "CAPI_DEV_URL",
    "CAPI_PROD_URL",
    "DEFAULT_EMULATOR_URL",
    "MIN_REFRESH_INTERVAL",
    "SETTINGS",
    "Setting",
    "Settings",
    "default_config_path",
    "default_data_dir",
    "load_settings",
    "mask_secret",
    "render_config_file",
    "resolve_target",
    "validate_scenario",
    "write_config_file",
]

CAPI_PROD_URL = PROD_URL
CAPI_DEV_URL = DEV_URL
DEFAULT_EMULATOR_URL = "http://127.0.0.1:8081/"
ENV_PREFIX = "CSCAPI_"
#: ``CSCAPI_*`` variables that are not settings: the config file, the data directory, and the storage's encryption key
#: (read by ``SQLStorage`` itself).
_OTHER_ENV = ("config", "data_dir", "storage_key", "storage_url", "base_url")
#: Variables other parts of cscapi read, honoured as lower-priority aliases: ``CSCAPI_BASE_URL`` (read by
#: ``CAPIClientConfig`` when no base_url is given) and ``CSCAPI_STORAGE_URL`` (used in docs/storage.md).
ENV_ALIASES: dict[str, tuple[str, ...]] = {"target": ("CSCAPI_BASE_URL",), "storage": ("CSCAPI_STORAGE_URL",)}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# ---- paths --------------------------------------------------------------------------------------------------------


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/cscapi/config.toml`` (``~/.config/cscapi/config.toml`` when unset)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "cscapi" / "config.toml"


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the default SQLite files live: ``$XDG_DATA_HOME/cscapi`` (``~/.local/share/cscapi`` when unset)."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base) / "cscapi"


# ---- value parsing ------------------------------------------------------------------------------------------------


def validate_scenario(name: str) -> str:
    """Return ``name`` if it is a valid scenario name (``author/name``), else raise ``ConfigurationError``."""
    return check_scenarios([name])[0]


def resolve_target(target: str, emulator_url: str = DEFAULT_EMULATOR_URL) -> str:
    """The CAPI root URL (ending with ``/``) for a target: ``emulator``, ``dev``, ``prod`` or an http(s) URL."""
    key = target.strip().lower()
    if key == "prod":
        return CAPI_PROD_URL
    if key == "dev":
        return CAPI_DEV_URL
    if key == "emulator":
        return _check_url(emulator_url, "emulator_url")
    return _check_url(target.strip(), "target")


def _check_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"invalid {name} {mask_url(value)!r}",
            hint="Use emulator, dev, prod, or an http(s):// URL of a CAPI root such as http://127.0.0.1:8081/.",
        )
    return value if value.endswith("/") else value + "/"


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"{name} must be true or false, not {value!r}")


def _number(kind: type, name: str, value: Any, low: float | None, high: float | None) -> Any:
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a number, not {value!r}")
    try:
        number = kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{name} must be {'an integer' if kind is int else 'a number'}, not {value!r}"
        ) from None
    if kind is int and isinstance(value, float) and value != int(value):
        raise ConfigurationError(f"{name} must be an integer, not {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"between {low:g} and {high:g}" if low is not None and high is not None else f"at least {low:g}"
        raise ConfigurationError(f"{name} must be {bounds}, not {value!r}")
    return number


def _parse_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(part).strip() if not isinstance(part, str) else part.strip() for part in value]
    else:
        raise ConfigurationError(f"{name} must be a list of strings, not {value!r}")
    return [item for item in items if item]


def _parse_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {value!r}")
    return value.strip()


# ---- the settings table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: its name (also the TOML key and, upper-cased, the ``CSCAPI_`` env suffix), section and rules."""

    name: str
    section: str
    kind: str  # "str", "int", "float", "bool", "list"
    default: Any
    help: str
    secret: bool = False
    uri: bool = False
    low: float | None = None
    high: float | None = None
    check: Callable[[Any], Any] | None = field(default=None, compare=False)
    key: str = ""
    """The TOML key inside its section when it differs from the name (``[source] mode`` is ``lapi_mode``)."""

    @property
    def file_key(self) -> str:
        """The key written in the TOML file's section."""
        return self.key or self.name

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        """The command-line flag that sets it (where a command offers one)."""
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """Convert and check a raw value (from TOML, the environment or a flag)."""
        if self.kind == "bool":
            parsed: Any = _parse_bool(self.name, value)
        elif self.kind == "int":
            parsed = _number(int, self.name, value, self.low, self.high)
        elif self.kind == "float":
            parsed = _number(float, self.name, value, self.low, self.high)
        elif self.kind == "list":
            parsed = _parse_list(self.name, value)
        else:
            parsed = _parse_str(self.name, value)
        return self.check(parsed) if self.check is not None else parsed


def _check_target(value: str) -> str:
    if value.lower() in ("emulator", "dev", "prod"):
        return value.lower()
    _check_url(value, "target")
    return value


def _check_machine_id(value: str) -> str:
    if not value:
        return value
    from cscapi.errors import ValidationError
    from cscapi.machines import validate_machine_id

    try:
        return validate_machine_id(value)
    except ValidationError as exc:
        raise ConfigurationError(exc.message, hint="`cscapi machines list` shows the stored machines.") from None


def _check_storage(value: str) -> str:
    if value and "://" not in value:
        raise ConfigurationError(
            f"invalid storage URI {mask_url(value)!r}",
            hint="Use a SQLAlchemy URL such as sqlite:////var/lib/cscapi/cscapi.db or postgresql+psycopg://user@host/db.",
        )
    return value


def _check_store(value: str) -> str:
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme == "memory":
        # the CLI's commands and the agent are separate processes: a per-process store would hold nothing they share
        raise ConfigurationError(
            "the decision store memory:// lives inside one process, so the command line and the agent cannot share it",
            hint="Use sqlite:////path/decisions.db (one host) or redis://host:6379/0 (many hosts); memory:// is for "
            "a RemediationEngine inside your own program.",
        )
    if scheme not in ("sqlite", "redis", "rediss", "unix"):
        raise ConfigurationError(
            f"invalid decision store URI {mask_url(value)!r}",
            hint="Use sqlite:////path/decisions.db or redis://host:6379/0.",
        )
    return value


def _check_source(value: str) -> str:
    kind = value.lower()
    if kind not in ("capi", "lapi"):
        raise ConfigurationError(
            f"source must be capi or lapi, not {value!r}",
            hint="capi: CrowdSec's Central API (community blocklist); lapi: a local CrowdSec engine (docs/lapi.md).",
        )
    return kind


def _check_lapi_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"invalid lapi_url {mask_url(value)!r}",
            hint="Use the http(s):// URL of the CrowdSec Local API, e.g. http://127.0.0.1:8080/ (`cscli lapi status`).",
        )
    return value if value.endswith("/") else value + "/"


def _check_signal_destinations(value: list[str]) -> list[str]:
    wanted: list[str] = []
    for item in value:
        for name in ("capi", "lapi") if item.strip().lower() == "both" else (item.strip().lower(),):
            if name not in ("capi", "lapi"):
                raise ConfigurationError(
                    f"signal destination must be capi, lapi or both, not {item!r}",
                    hint="capi: CrowdSec's Central API; lapi: a local CrowdSec engine (its machine: lapi_machine_id).",
                )
            if name not in wanted:
                wanted.append(name)
    return wanted or ["capi"]


def _check_lapi_mode(value: str) -> str:
    mode = value.lower()
    if mode not in ("stream", "live"):
        raise ConfigurationError(
            f"lapi mode must be stream or live, not {value!r}",
            hint="stream: pull every decision at refresh_interval; live: ask the LAPI for each new IP (docs/lapi.md).",
        )
    return mode


def _check_log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigurationError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {value!r}")
    return level


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "target",
        "capi",
        "str",
        "emulator",
        "Which CAPI to talk to: emulator (a local `cscapi emulator`), dev, prod, or the URL of a CAPI root.",
        uri=True,
        check=_check_target,
    ),
    Setting(
        "emulator_url",
        "capi",
        "str",
        DEFAULT_EMULATOR_URL,
        'Where `target = "emulator"` points: the URL `cscapi emulator` listens on.',
        uri=True,
        check=lambda v: _check_url(v, "emulator_url"),
    ),
    Setting(
        "scenarios",
        "capi",
        "list",
        [],
        "The scenarios this machine detects (author/name); sent at login, CAPI tailors the blocklist to them.",
        check=lambda v: check_scenarios(v, allow_empty=True),
    ),
    Setting(
        "machine_id",
        "capi",
        "str",
        "",
        "Which stored machine to use; empty means the first one (`cscapi machines register` creates it).",
        check=_check_machine_id,
    ),
    Setting(
        "machine_id_prefix",
        "capi",
        "str",
        "",
        "Prefix of newly generated machine ids (counted inside the 48 characters CAPI requires).",
        check=check_machine_id_prefix,
    ),
    Setting(
        "user_agent_prefix",
        "capi",
        "str",
        "",
        "Your product's name, sent first in the User-Agent so CrowdSec can tell integrations apart.",
        check=check_user_agent_prefix,
    ),
    Setting(
        "timeout",
        "capi",
        "float",
        10.0,
        "Seconds before a CAPI request times out (a positive number).",
        check=check_timeout,
    ),
    Setting(
        "max_retries",
        "capi",
        "int",
        3,
        "Retries on network errors, 429 and 5xx (with backoff).",
        low=0,
        high=MAX_RETRIES,
        check=check_max_retries,
    ),
    Setting(
        "deadline",
        "capi",
        "float",
        DEFAULT_DEADLINE,
        "Total seconds one CAPI request or list download may take, redirects included (a server dripping its "
        "answer is cut, then retried).",
        check=check_deadline,
    ),
    Setting(
        "max_stream_bytes",
        "capi",
        "int",
        DEFAULT_MAX_STREAM_BYTES,
        "Largest decisions stream accepted, in bytes once decompressed (a bigger one is refused, nothing applied).",
        check=lambda v: check_byte_cap("max_stream_bytes", v),
    ),
    Setting(
        "max_link_bytes",
        "capi",
        "int",
        DEFAULT_MAX_LINK_BYTES,
        "Largest blocklist/allowlist download accepted, in bytes once decompressed.",
        check=lambda v: check_byte_cap("max_link_bytes", v),
    ),
    Setting("verify_tls", "capi", "bool", True, "Verify CAPI's TLS certificate (never turn this off in production)."),
    Setting(
        "ca_bundle", "capi", "str", "", "A CA bundle file to verify CAPI's certificate with (empty: the system's)."
    ),
    Setting("proxy", "capi", "str", "", "An HTTP(S) proxy URL for CAPI requests (empty: none).", secret=True, uri=True),
    Setting(
        "enroll_key",
        "capi",
        "str",
        "",
        "The console attachment key used by `cscapi machines enroll` (Security Engines > Enroll in the console).",
        secret=True,
    ),
    Setting(
        "storage",
        "storage",
        "str",
        "",
        "Signal queue and machine credentials (SQLAlchemy URL). Empty: sqlite in the data directory.",
        uri=True,
        check=_check_storage,
    ),
    Setting(
        "decision_store",
        "storage",
        "str",
        "",
        "The decisions cache shared with your workers: sqlite:///path or redis://host/0. Empty: sqlite in the data "
        "directory.",
        uri=True,
        check=lambda v: _check_store(v) if v else v,
    ),
    Setting(
        "decision_key_prefix",
        "storage",
        "str",
        "cscapi:",
        "Redis decision store only: every key lives under this prefix (the same in the agent and your workers).",
    ),
    Setting(
        "push_interval",
        "agent",
        "float",
        MIN_PUSH_INTERVAL,
        "`cscapi run`: seconds between two pushes of queued signals (10 s to 10 min, as CAPI asks).",
        low=MIN_PUSH_INTERVAL,
        high=MAX_PUSH_INTERVAL,
    ),
    Setting(
        "refresh_interval",
        "agent",
        "float",
        DEFAULT_REFRESH_INTERVAL,
        "`cscapi run`: seconds between two decision pulls (CAPI documents 2 h; never under 1 h 30).",
        low=MIN_REFRESH_INTERVAL,
        high=86400,
    ),
    Setting(
        "refresh_jitter",
        "agent",
        "float",
        DEFAULT_REFRESH_JITTER,
        "`cscapi run`: each pull is moved by a random amount up to this many seconds, either way.",
        low=0,
        high=1800,
    ),
    Setting(
        "metrics_interval",
        "agent",
        "float",
        DEFAULT_METRICS_INTERVAL,
        "`cscapi run`: seconds between two metrics pushes (CAPI's engine uses 30 min).",
        low=MIN_METRICS_INTERVAL,
        high=86400,
    ),
    Setting(
        "batch_size",
        "agent",
        "int",
        50,
        f"Signals per POST (1 to {MAX_BATCH}; CrowdSec's engine sends 50).",
        check=check_batch_size,  # no low/high here: the one rule's message (naming CAPI's limit) is the one shown
    ),
    Setting(
        "health_port",
        "agent",
        "int",
        0,
        "`cscapi run`: serve a JSON health report on 127.0.0.1:PORT (0: off; a health line is logged instead).",
        low=0,
        high=65535,
    ),
    Setting("log_level", "agent", "str", "INFO", "DEBUG, INFO, WARNING or ERROR.", check=_check_log_level),
    Setting(
        "source",
        "source",
        "str",
        "capi",
        "Where decisions come from: capi (the Central API, community blocklist) or lapi (a local CrowdSec engine).",
        check=_check_source,
        key="kind",
    ),
    Setting(
        "lapi_url",
        "source",
        "str",
        "http://127.0.0.1:8080/",
        "The CrowdSec Local API URL (source = lapi).",
        uri=True,
        check=_check_lapi_url,
    ),
    Setting(
        "lapi_api_key",
        "source",
        "str",
        "",
        "The bouncer key printed by `cscli bouncers add NAME` (or use lapi_cert + lapi_key).",
        secret=True,
    ),
    Setting("lapi_cert", "source", "str", "", "TLS client certificate file for the LAPI (instead of an API key)."),
    Setting("lapi_key", "source", "str", "", "The private key file of lapi_cert."),
    Setting("lapi_ca", "source", "str", "", "A CA file to verify the LAPI's https certificate (empty: the system's)."),
    Setting(
        "lapi_machine_id",
        "source",
        "str",
        "",
        "Watcher: the machine name given to `cscli machines add NAME` (checked by `cscapi lapi status`).",
    ),
    Setting(
        "lapi_password",
        "source",
        "str",
        "",
        "Watcher: that machine's password (`cscli machines add NAME --password ...`).",
        secret=True,
    ),
    Setting(
        "lapi_mode",
        "source",
        "str",
        "stream",
        "stream: pull every decision each refresh_interval; live: ask the LAPI about each IP on a cache miss.",
        check=_check_lapi_mode,
        key="mode",
    ),
    Setting(
        "lapi_refresh_interval",
        "source",
        "float",
        10.0,
        "Seconds between two LAPI stream pulls by `cscapi run` (no CAPI minimum for a LAPI).",
        low=1,
        high=86400,
        key="refresh_interval",
    ),
    Setting(
        "bad_ip_cache_duration",
        "source",
        "float",
        120.0,
        "Live mode: seconds a LAPI decision on an IP stays cached (or its remaining time, if shorter).",
        check=lambda v: check_cache_duration("bad_ip_cache_duration", v),
        low=1,
        high=86400,
    ),
    Setting(
        "clean_ip_cache_duration",
        "source",
        "float",
        60.0,
        "Live mode: seconds a clean LAPI answer for an IP stays cached.",
        check=lambda v: check_cache_duration("clean_ip_cache_duration", v),
        low=1,
        high=86400,
    ),
    Setting(
        "signal_destinations",
        "signals",
        "list",
        ["capi"],
        "Where queued signals go: capi, lapi (the [source] lapi_url, as lapi_machine_id) or both; `cscapi run` "
        "pushes to each.",
        check=_check_signal_destinations,
        key="destinations",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_BY_KEY = {(s.section, s.file_key): s for s in SETTINGS}
SECTIONS = ("capi", "storage", "agent", "source", "signals")


# ---- masking ------------------------------------------------------------------------------------------------------


def mask_secret(value: str) -> str:
    """``****`` plus the last two characters of a long secret, so two keys can be told apart without leaking them."""
    if not value:
        return ""
    return "****" + value[-2:] if len(value) >= 12 else "****"


# ---- effective settings -------------------------------------------------------------------------------------------


@dataclass(repr=False)
class Settings:
    """The effective settings: ``values[name]`` and ``sources[name]`` (``file PATH``, ``env VAR``, ``flag``).

    Attribute access reads a value: ``settings.target``. ``config_path`` is the file that was read (or would be).
    ``repr()`` and ``str()`` show every value as ``config show`` does: secrets and URL passwords masked.
    """

    values: dict[str, Any]
    sources: dict[str, str]
    config_path: Path
    config_found: bool
    data_dir: Path
    warnings: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        shown = ", ".join(f"{spec.name}={self.display(spec.name)!r}" for spec in SETTINGS)
        return f"Settings({shown}, config_path={str(self.config_path)!r})"

    @property
    def display_base_url(self) -> str:
        """The CAPI root URL as printed: a password in it (or in its query string) masked."""
        return mask_url(self.base_url)

    def source(self, name: str) -> str:
        """Where the value of ``name`` came from."""
        return self.sources[name]

    @property
    def base_url(self) -> str:
        """The CAPI root URL the target resolves to."""
        return resolve_target(self.values["target"], self.values["emulator_url"])

    @property
    def is_lapi(self) -> bool:
        """True when decisions come from a local CrowdSec engine (``source = lapi``; ``source()`` names origins)."""
        return bool(self.values["source"] == "lapi")

    @property
    def is_real_capi(self) -> bool:
        """True when the target is CrowdSec's dev or prod CAPI."""
        return self.base_url in (CAPI_PROD_URL, CAPI_DEV_URL)

    @property
    def storage_uri(self) -> str:
        """The signal storage URL (the default SQLite file when unset)."""
        uri: str = self.values["storage"]
        return uri or f"sqlite:///{self.data_dir / 'cscapi.db'}"

    @property
    def decision_store_uri(self) -> str:
        """The decision store URI (the default SQLite file when unset)."""
        uri: str = self.values["decision_store"]
        return uri or f"sqlite:///{self.data_dir / 'decisions.db'}"

    def require_scenarios(self) -> list[str]:
        """The scenarios, or a ``ConfigurationError`` saying how to set them."""
        scenarios: list[str] = self.values["scenarios"]
        if not scenarios:
            raise ConfigurationError(
                "no scenarios are configured",
                hint="Run `cscapi init`, set CSCAPI_SCENARIOS=author/name,... or pass --scenario author/name.",
            )
        return scenarios

    def display(self, name: str) -> str:
        """A value as ``config show`` prints it: secrets masked, lists comma-joined, empty values explained."""
        spec = _BY_NAME[name]
        value = self.values[name]
        if name == "storage" and not value:
            return self.storage_uri
        if name == "decision_store" and not value:
            return self.decision_store_uri
        if spec.kind == "list":
            return ", ".join(value)
        if spec.kind == "bool":
            return "true" if value else "false"
        if spec.kind == "float":
            return f"{value:g}"
        text = str(value)
        if spec.uri:
            text = mask_url(text)
        if spec.secret and not spec.uri:
            text = mask_secret(text)
        return text

    def as_dict(self, *, mask: bool = True) -> dict[str, Any]:
        """Every setting with its value and source, for ``config show --json`` (secrets masked unless asked)."""
        out: dict[str, Any] = {}
        for spec in SETTINGS:
            value = self.values[spec.name]
            if spec.name == "storage":
                value = self.storage_uri
            elif spec.name == "decision_store":
                value = self.decision_store_uri
            if mask and (spec.secret or spec.uri) and isinstance(value, str) and value:
                value = mask_url(value) if spec.uri else mask_secret(value)
            out[spec.name] = {"value": value, "source": self.sources[spec.name]}
        return out


def _flatten_file(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Read the file's ``[section] key = value`` tables (top-level keys are accepted too)."""
    flat: dict[str, Any] = {}

    def put(key: str, value: Any, where: str, section: str = "") -> None:
        spec = _BY_KEY.get((section, key)) or _BY_NAME.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, list(_BY_NAME), n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            raise ConfigurationError(
                f"unknown setting {where}{key!r} in {path}",
                hint=hint + "`cscapi config show` lists every setting.",
            )
        flat[spec.name] = value

    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise ConfigurationError(
                    f"unknown section [{key}] in {path}", hint=f"Sections are {', '.join(SECTIONS)}."
                )
            for sub, subvalue in value.items():
                put(sub, subvalue, f"[{key}] ", key)
        else:
            put(key, value, "")
    return flat


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the TOML file into a flat ``{setting: raw value}`` dict; any problem is a ``ConfigurationError``."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
        import tomli as tomllib
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigurationError(
            f"config file {path} does not exist",
            hint="Run `cscapi init` to create it, or fix --config / CSCAPI_CONFIG.",
        ) from None
    except IsADirectoryError:
        raise ConfigurationError(f"config file {path} is a directory", hint="Point --config at a TOML file.") from None
    except PermissionError:
        raise ConfigurationError(f"config file {path} is not readable", hint="Check its permissions.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"config file {path} is not valid TOML ({exc})",
            hint="Fix the line named above, or recreate it with `cscapi init --force`.",
        ) from None
    return _flatten_file(data, path)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    require_file: bool | None = None,
) -> Settings:
    """Build the effective settings: flags > environment > config file > defaults.

    ``flags`` holds the values given on the command line (``None`` means "not given"). The file is ``config_path``,
    else ``$CSCAPI_CONFIG``, else :func:`default_config_path`; a file named explicitly must exist (``require_file``
    defaults to True exactly then), the default one may be absent.
    """
    env = os.environ if env is None else env
    flags = flags or {}
    explicit = config_path is not None or bool(env.get(ENV_PREFIX + "CONFIG"))
    if config_path is not None:
        path = Path(config_path).expanduser()
    elif env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"]).expanduser()
    else:
        path = default_config_path(env)
    if require_file is None:
        require_file = explicit

    file_values: dict[str, Any] = {}
    found = path.is_file()
    if found or require_file:
        file_values = read_config_file(path)
        found = True

    warnings: list[str] = []
    for key in sorted(env):
        name = key[len(ENV_PREFIX) :].lower()
        if key.startswith(ENV_PREFIX) and name not in _BY_NAME and name not in _OTHER_ENV:
            if key.startswith(ENV_PREFIX + "TEST_") or key.startswith(ENV_PREFIX + "EMULATOR_"):
                continue
            close = difflib.get_close_matches(key, [s.env for s in SETTINGS], n=1)
            warnings.append(f"{key} is not a cscapi setting" + (f" (did you mean {close[0]}?)" if close else ""))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        raw: Any
        alias = next((a for a in ENV_ALIASES.get(spec.name, ()) if a in env), None)
        if flags.get(spec.name) is not None:
            raw, where, label = flags[spec.name], f"flag {spec.flag}", spec.flag
        elif spec.env in env:
            raw, where, label = env[spec.env], f"env {spec.env}", spec.env
        elif alias is not None:
            raw, where, label = env[alias], f"env {alias}", alias
        elif spec.name in file_values:
            raw, where, label = file_values[spec.name], f"file {path}", f"{spec.name} in {path}"
        else:
            values[spec.name] = list(spec.default) if isinstance(spec.default, list) else spec.default
            sources[spec.name] = "default"
            continue
        try:
            values[spec.name] = spec.parse(raw)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{exc.message} (from {label})", hint=exc.hint) from None
        sources[spec.name] = where

    check_refresh(values["refresh_interval"], values["refresh_jitter"])
    data_dir = (
        Path(env[ENV_PREFIX + "DATA_DIR"]).expanduser() if env.get(ENV_PREFIX + "DATA_DIR") else default_data_dir(env)
    )
    settings = Settings(
        values=values, sources=sources, config_path=path, config_found=found, data_dir=data_dir, warnings=warnings
    )
    settings.base_url  # noqa: B018 - validates target + emulator_url together
    return settings


# ---- writing the file ---------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(str(v)) for v in value) + "]"
    return json.dumps(str(value))


def render_config_file(values: Mapping[str, Any] | None = None, *, data_dir: Path | None = None) -> str:
    """A commented TOML config file: every setting with its help, ``values`` set, the rest commented at defaults."""
    values = dict(values or {})
    lines = [
        "# cscapi configuration (TOML). Precedence: command-line flags > CSCAPI_* environment > this file > defaults.",
        "# `cscapi config show` prints the effective value of every setting and where it came from.",
        "# Secrets (enroll_key, passwords in URIs) are masked there; this file is created readable by you only (0600).",
    ]
    if data_dir is not None:
        lines.append(f"# Default SQLite files live in {data_dir}.")
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for spec in SETTINGS:
            if spec.section != section:
                continue
            lines.append(f"# {spec.help} (env {spec.env})")
            if spec.name in values:
                lines.append(f"{spec.file_key} = {_toml_value(values[spec.name])}")
            else:
                lines.append(f"# {spec.file_key} = {_toml_value(spec.default)}")
    return "\n".join(lines) + "\n"


def write_config_file(path: Path, text: str, *, force: bool = False) -> None:
    """Write ``text`` to ``path`` with mode 0600 (parents created); refuse to replace a file unless ``force``."""
    path = path.expanduser()
    if path.exists() and not force:
        raise ConfigurationError(
            f"{path} already exists", hint="Pass --force to overwrite it, or --config to write another file."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = _create_private(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write {path}: {exc.strerror}", hint="Choose another path with --config."
        ) from None


def _create_private(tmp: Path) -> int:
    """Create ``tmp`` anew (O_EXCL|O_NOFOLLOW, mode 0600) and return its descriptor: a file or symlink planted there
    is never followed nor written through. A stale regular file (an earlier write that crashed) is replaced once."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    mode = stat.S_IRUSR | stat.S_IWUSR
    try:
        return os.open(tmp, flags, mode)
    except FileExistsError:
        info = os.lstat(tmp)
        if not stat.S_ISREG(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            raise ConfigurationError(
                f"refusing to write the config file through {tmp}: it exists and is not a file of yours "
                f"({'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'owned by someone else or not a file'})",
                hint=f"Remove {tmp} (nothing of cscapi's is in it), then run the command again.",
            ) from None
        os.unlink(tmp)
        return os.open(tmp, flags, mode)


def setting_names() -> Iterable[str]:
    """Every setting's name, in file order."""
    return (s.name for s in SETTINGS)
