"""Flask integration: ``CrowdSec(app)`` (or ``CrowdSec()`` then ``init_app(app)``) puts the bouncer in front of the
application, configured from ``app.config`` (``CSCAPI_*`` keys) unless a ready ``bouncer`` is given. See docs/web.md.

The bouncer wraps ``app.wsgi_app`` (the WSGI middleware): a stopped request never reaches Flask's routing, hooks or
error handlers. Needs ``pip install 'cscapi[flask]'``.
"""

from __future__ import annotations

from typing import Any

from cscapi.errors import ConfigurationError
from cscapi.web._bouncer import Bouncer
from cscapi.web._settings import OPTIONS, bouncer_from_settings
from cscapi.web.wsgi import BouncerMiddleware, request_from_environ

__all__ = ["CrowdSec", "settings_from_config"]

_EXTENSION = "cscapi"


def settings_from_config(config: Any) -> dict[str, Any]:
    """The ``CSCAPI_*`` keys of a Flask config as bouncer settings (``CSCAPI_TRUSTED_PROXIES`` -> ``trusted_proxies``);
    an unknown ``CSCAPI_*`` key is kept, so that it is reported instead of silently ignored."""
    settings: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(key, str) and key.startswith("CSCAPI_"):
            name = key[len("CSCAPI_") :].lower()
            settings[name if name in OPTIONS or name == "bouncer" else key] = value
    return settings


class CrowdSec:
    """The Flask extension. ``bouncer``: a ready :class:`~cscapi.web.Bouncer` used for every app; else each app's
    bouncer is built from its ``CSCAPI_*`` config keys (``CSCAPI_SECRET_KEY`` defaults to the app's ``SECRET_KEY``)."""

    def __init__(self, app: Any = None, bouncer: Bouncer | None = None) -> None:
        if bouncer is not None and not isinstance(bouncer, Bouncer):
            raise ConfigurationError("bouncer must be a cscapi.web.Bouncer")
        self._bouncer = bouncer
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Check ``app``'s settings (a :class:`~cscapi.errors.ConfigurationError` names what is wrong) and wrap its
        ``wsgi_app``. Call it once per app."""
        if _EXTENSION in app.extensions:
            raise ConfigurationError("CrowdSec.init_app() was already called for this app")
        bouncer = self._bouncer
        if bouncer is None:
            bouncer = bouncer_from_settings(
                settings_from_config(app.config), default_secret=app.config.get("SECRET_KEY")
            )
        app.extensions[_EXTENSION] = bouncer
        app.wsgi_app = BouncerMiddleware(app.wsgi_app, bouncer=bouncer)

    @staticmethod
    def bouncer_of(app: Any) -> Bouncer:
        """The bouncer protecting ``app`` (after :meth:`init_app`)."""
        try:
            bouncer: Bouncer = app.extensions[_EXTENSION]
        except KeyError:
            raise ConfigurationError("CrowdSec.init_app(app) was not called for this app") from None
        return bouncer

    @property
    def bouncer(self) -> Bouncer:
        """The bouncer of the current app (inside a request or app context), or the one given to the constructor."""
        if self._bouncer is not None:
            return self._bouncer
        from flask import current_app

        return self.bouncer_of(current_app)

    def report_failed_login(self, request: Any = None) -> bool:
        """Tell the failed-login detector that the current request (or ``request``, a Flask request) failed to log in:
        call it from your login view when the password is wrong. Its client IP is found as for the bouncer (trusted
        proxies). True when this failure crossed the threshold (the IP's local decision is then in force); False
        otherwise, and always when the bouncer has no detectors (``CSCAPI_DETECTORS``, see ``cscapi.web.detect``)."""
        if request is None:
            from flask import request as current_request

            request = current_request
        report = getattr(self.bouncer, "report_failed_login", None)
        if report is None:
            return False
        return bool(report(request_from_environ(request.environ)))
