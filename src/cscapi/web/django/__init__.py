"""Django integration: add ``"cscapi.web.django"`` to ``INSTALLED_APPS`` and ``"cscapi.web.django.BouncerMiddleware"``
to ``MIDDLEWARE``, configure it in one ``CSCAPI`` dict. ``manage.py check`` flags a bad configuration,
``manage.py cscapi ...`` runs the cscapi CLI. See docs/web.md. Needs ``pip install 'cscapi[django]'``.
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without Django installed
    raise ImportError(f"cscapi.web.django needs Django: pip install 'cscapi[django]' ({exc})") from exc

from cscapi.web.django.middleware import BouncerMiddleware, get_bouncer, report_failed_login, settings_dict

__all__ = ["BouncerMiddleware", "get_bouncer", "report_failed_login", "settings_dict"]
