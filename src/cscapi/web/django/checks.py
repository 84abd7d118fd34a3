"""``manage.py check``: a bad ``settings.CSCAPI`` is reported at startup, not on the first request."""

from __future__ import annotations

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
        found = settings_dict()
    except Exception as exc:  # a non-dict, or a BOUNCER path that does not import
        return [Error(f"settings.CSCAPI cannot be read: {exc}", hint=_HINT, id=IDS["settings"])]
    if "bouncer" in found:
        if isinstance(found["bouncer"], Bouncer):
            return []
        return [Error("CSCAPI['BOUNCER'] is not a cscapi.web.Bouncer", hint=_HINT, id=IDS["bouncer"])]
    return [
        Error(text, hint=_HINT, id=IDS[option]) for option, text in problems(found, default_secret=django_secret_key())
    ]
