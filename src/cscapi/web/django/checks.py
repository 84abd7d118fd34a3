"""``manage.py check``: a bad ``settings.CSCAPI`` is reported at startup, not on the first request."""

from __future__ import annotations

import typing
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error

from cscapi.web._settings import problems

__all__ = ["IDS", "check_settings"]

IDS = {
    "settings": "cscapi.E001",
    "decision_store": "cscapi.E002",
    "secret_key": "cscapi.E003",
    "trusted_proxies": "cscapi.E004",
    "exempt_ips": "cscapi.E004",
    "forwarded_header": "cscapi.E004",
    "captcha": "cscapi.E005",
    "unknown": "cscapi.E006",
    "walls": "cscapi.E007",
    "bouncer": "cscapi.E008",
}
"""The check ids, by the option they are about."""

_HINT = "Fix settings.CSCAPI (docs/web.md, 'Django')."


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """One ``Error`` per problem of ``settings.CSCAPI`` (ids ``cscapi.E001`` to ``cscapi.E008``)."""
    from cscapi.web._bouncer import Bouncer
    from cscapi.web.django.middleware import django_secret_key, settings_dict

    if getattr(settings, "CSCAPI", None) is None:
        return [Error("settings.CSCAPI is missing", hint="Add CSCAPI = {'DECISION_STORE': ...}.", id=IDS["settings"])]
    try:
        found = settings_dict(build=False)  # a BOUNCER factory is not called: a check must not build an engine
    except Exception as exc:  # a non-dict, or a BOUNCER path that does not import
        return [Error(f"settings.CSCAPI cannot be read: {exc}", hint=_HINT, id=IDS["settings"])]
    if "bouncer" in found:
        if isinstance(found["bouncer"], Bouncer) or _builds_a_bouncer(found["bouncer"]):
            return []
        return [Error("CSCAPI['BOUNCER'] is not a cscapi.web.Bouncer", hint=_HINT, id=IDS["bouncer"])]
    return [
        Error(text, hint=_HINT, id=IDS[option]) for option, text in problems(found, default_secret=django_secret_key())
    ]


def _builds_a_bouncer(factory: object) -> bool:
    """A callable whose return annotation does not rule out a ``Bouncer`` (judged without calling it: what it really
    returns is checked when the middleware builds the bouncer, at server startup)."""
    from cscapi.web._bouncer import Bouncer

    if isinstance(factory, type) or not callable(factory):
        return isinstance(factory, type) and issubclass(factory, Bouncer)
    try:
        returns = typing.get_type_hints(factory).get("return", Bouncer)
    except Exception:  # an annotation that does not resolve (or a builtin without any): not judged here
        return True
    return issubclass(returns, Bouncer) if isinstance(returns, type) else True  # Any, a Union...: not judged
