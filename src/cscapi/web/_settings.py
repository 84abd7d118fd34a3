"""Settings for the framework adapters (Flask ``CSCAPI_*`` keys, Django's ``CSCAPI`` dict): checked, then turned into
a :class:`~cscapi.web.Bouncer`. One engine per decision store URI per process, shared by every app that names it."""

from __future__ import annotations

import atexit
import ipaddress
import logging
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cscapi.errors import ConfigurationError
from cscapi.web._bouncer import Bouncer
from cscapi.web._ip import FORWARDED_HEADERS
from cscapi.web.captcha import CaptchaKind, HCaptcha, ImageCaptcha, ProofOfWork, ReCaptcha, Turnstile
from cscapi.web.walls import Walls

__all__ = ["CAPTCHA_KINDS", "OPTIONS", "bouncer_from_settings", "close_engines", "engine_for", "problems"]

CAPTCHA_KINDS: dict[str, Callable[..., CaptchaKind]] = {
    "pow": ProofOfWork,
    "image": ImageCaptcha,
    "turnstile": Turnstile,
    "hcaptcha": HCaptcha,
    "recaptcha": ReCaptcha,
}
"""The names ``captcha`` takes (or give a ``CaptchaKind`` instance); ``captcha_options`` are its keyword arguments."""

# name -> the Bouncer keyword it feeds (None: used to build something else)
OPTIONS: dict[str, str | None] = {
    "decision_store": None,
    "key_prefix": None,
    "engine": None,
    "captcha_options": None,
    "lapi_mode": None,
    "lapi_url": None,
    "lapi_api_key": None,
    "trusted_proxies": "trusted_proxies",
    "forwarded_header": "forwarded_header",
    "exempt_paths": "exempt_paths",
    "exempt_ips": "exempt_ips",
    "secret_key": "secret_key",
    "captcha": "captcha",
    "fail_open": "fail_open",
    "walls": "walls",
    "grace_period": "grace_period",
    "challenge_lifetime": "challenge_lifetime",
    "captcha_path": "captcha_path",
    "cookie_name": "cookie_name",
    "max_body": "max_body",
    "remediation_map": "remediation_map",
    "detectors": "detectors",
}

logger = logging.getLogger("cscapi.web")

_ENGINES: dict[tuple[str, str, tuple[str, str] | None], Any] = {}
_LOCK = threading.Lock()


def engine_for(uri: str, key_prefix: str = "cscapi:", lapi: tuple[str, str] | None = None) -> Any:
    """This process's engine reading the decision store ``uri`` (no source: the agent fills the store), made once;
    closed at exit (which flushes its last usage counts to the store). ``lapi``: (url, bouncer key) of a CrowdSec
    LAPI asked per IP (live mode; the answers cached in ``uri``), for an agent that pulls nothing."""
    with _LOCK:
        engine = _ENGINES.get((uri, key_prefix, lapi))
        if engine is None:
            from cscapi.remediation import RemediationEngine

            source = None
            if lapi is not None:
                from cscapi.lapi import LapiClient

                source = LapiClient(lapi[0], api_key=lapi[1], mode="live")
            engine = RemediationEngine(source, store=uri, key_prefix=key_prefix)
            if not _ENGINES:
                atexit.register(close_engines)
            _ENGINES[(uri, key_prefix, lapi)] = engine
        return engine


def close_engines() -> None:
    """Close the engines :func:`engine_for` made (at exit; a test may call it). A failure is logged, not raised."""
    with _LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        try:
            engine.close()
        except Exception as exc:
            logger.warning("cscapi.web: closing an engine failed: %s", type(exc).__name__)


def _store_problem(uri: object) -> str | None:
    if not isinstance(uri, str) or not uri:
        return "decision_store must be a URI such as sqlite:////var/lib/cscapi/decisions.db or redis://127.0.0.1:6379/0"
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "memory":
        return (
            "decision_store memory:// is private to this process: nothing fills it; use the sqlite:// or redis:// "
            "store the agent (cscapi run) fills"
        )
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if not path:
            return "decision_store sqlite URIs are sqlite:///relative.db or sqlite:////absolute/path.db"
        parent = Path(path).parent
        if not parent.is_dir():
            return f"decision_store: the directory {str(parent)!r} of the SQLite file does not exist"
        return None
    if scheme in ("redis", "rediss", "unix"):
        try:
            parsed = urllib.parse.urlsplit(uri)
            _ = parsed.port
        except ValueError as exc:
            return f"decision_store is not a valid Redis URI ({exc})"
        if scheme != "unix" and not parsed.hostname:
            return "decision_store: a Redis URI needs a host, e.g. redis://127.0.0.1:6379/0"
        return None
    return f"decision_store: unknown scheme {scheme!r}; use sqlite:///path/decisions.db or redis://host:6379/0"


def _cidr_problems(name: str, value: object) -> list[tuple[str, str]]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        return [(name, f"{name} must be a list of CIDRs (IPv4 or IPv6), not {type(value).__name__}")]
    found = []
    for entry in value:
        if name == "trusted_proxies" and entry == "unix":
            continue
        try:
            ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            found.append((name, f"{name}: {entry!r} is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)"))
    return found


def _lapi_problems(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``lapi_mode``: stream (default; the agent, ``cscapi run``, fills the store) or live (this process asks the
    LAPI per IP: it needs ``lapi_url`` and ``lapi_api_key``; a store filled by nobody would let every IP through)."""
    mode = settings.get("lapi_mode", "stream")
    if mode not in ("stream", "live"):
        return [("lapi_mode", f"lapi_mode must be stream or live, not {str(mode)[:60]!r}")]
    if mode == "stream":
        given = [name for name in ("lapi_url", "lapi_api_key") if name in settings]
        if given:
            return [
                (
                    given[0],
                    f"{', '.join(given)} only serve lapi_mode live (in stream mode the agent, cscapi run, fills "
                    "decision_store from the LAPI): set lapi_mode to live or remove them",
                )
            ]
        return []
    if settings.get("engine") is not None:
        return [("lapi_mode", "lapi_mode live builds the engine: give engine= or lapi_mode live, not both")]
    found = []
    for name, what in (("lapi_url", "the LAPI's http(s):// URL"), ("lapi_api_key", "a key from `cscli bouncers add`")):
        value = settings.get(name)
        if not isinstance(value, str) or not value:
            found.append((name, f"lapi_mode live needs {name}: {what}"))
    return found


def problems(settings: Mapping[str, Any], *, default_secret: object = None) -> list[tuple[str, str]]:
    """What is wrong with ``settings`` (lower-case option names): (option, sentence) pairs; empty when usable.

    A ready ``bouncer`` is not checked here (the adapters accept it as is)."""
    found: list[tuple[str, str]] = []
    unknown = sorted(set(settings) - set(OPTIONS) - {"bouncer"})
    if unknown:
        found.append(("unknown", f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS))}"))
    if settings.get("engine") is None:
        store = settings.get("decision_store")
        if store is None:
            found.append(
                ("decision_store", "decision_store is missing: the URI of the store the agent (cscapi run) fills")
            )
        else:
            problem = _store_problem(store)
            if problem:
                found.append(("decision_store", problem))
    secret = settings.get("secret_key", default_secret)
    if secret is None or (isinstance(secret, str | bytes) and not secret):
        found.append(
            ("secret_key", "secret_key is missing: give a random key of 16+ characters, the same in every worker")
        )
    elif not isinstance(secret, str | bytes) or len(secret) < 16:
        found.append(("secret_key", "secret_key must be a str or bytes of at least 16 characters"))
    for name in ("trusted_proxies", "exempt_ips"):
        if name in settings:
            found.extend(_cidr_problems(name, settings[name]))
    header = settings.get("forwarded_header", "x-forwarded-for")
    if not isinstance(header, str) or header.lower() not in FORWARDED_HEADERS:
        found.append(
            (
                "forwarded_header",
                f"forwarded_header {str(header)[:60]!r} is unknown: one of {', '.join(FORWARDED_HEADERS)} "
                "(the one header your proxy sets)",
            )
        )
    captcha = settings.get("captcha", "pow")
    if not isinstance(captcha, CaptchaKind) and captcha not in CAPTCHA_KINDS:
        found.append(
            ("captcha", f"captcha {captcha!r} is unknown: one of {', '.join(CAPTCHA_KINDS)}, or a CaptchaKind")
        )
    options = settings.get("captcha_options", {})
    if not isinstance(options, Mapping):
        found.append(("captcha", "captcha_options must be a dict of the captcha kind's keyword arguments"))
    found.extend(_lapi_problems(settings))
    walls = settings.get("walls")
    if walls is not None and not isinstance(walls, Walls):
        found.append(("walls", "walls must be a cscapi.web.Walls"))
    return found


def bouncer_from_settings(settings: Mapping[str, Any], *, default_secret: object = None) -> Bouncer:
    """The :class:`Bouncer` ``settings`` describe (``bouncer``: a ready one, returned as is).

    Raises :class:`~cscapi.errors.ConfigurationError` naming every problem found."""
    ready = settings.get("bouncer")
    if ready is not None:
        if not isinstance(ready, Bouncer):
            raise ConfigurationError("bouncer must be a cscapi.web.Bouncer")
        return ready
    found = problems(settings, default_secret=default_secret)
    if found:
        raise ConfigurationError("cscapi.web settings: " + "; ".join(text for _, text in found))
    engine = settings.get("engine")
    if engine is None:
        lapi = None
        if settings.get("lapi_mode") == "live":
            lapi = (settings["lapi_url"], settings["lapi_api_key"])
        engine = engine_for(settings["decision_store"], settings.get("key_prefix", "cscapi:"), lapi)
    kwargs: dict[str, Any] = {}
    for name, keyword in OPTIONS.items():
        if keyword is not None and name in settings:
            kwargs[keyword] = settings[name]
    kwargs["secret_key"] = settings.get("secret_key", default_secret)
    captcha = settings.get("captcha", "pow")
    if not isinstance(captcha, CaptchaKind):
        kwargs["captcha"] = CAPTCHA_KINDS[captcha](**dict(settings.get("captcha_options", {})))
    for name in ("trusted_proxies", "exempt_paths", "exempt_ips"):
        if name in kwargs:
            kwargs[name] = tuple(kwargs[name])
    return Bouncer(engine, **kwargs)
