"""The Django app of cscapi.web: registers the system checks and hooks ``user_login_failed``."""

from __future__ import annotations

from django.apps import AppConfig


class CscapiWebConfig(AppConfig):  # type: ignore[misc]  # Django has no type hints
    """``INSTALLED_APPS += ["cscapi.web.django"]``."""

    name = "cscapi.web.django"
    label = "cscapi_web"
    verbose_name = "CrowdSec (cscapi.web)"

    def ready(self) -> None:
        from django.core import checks
        from django.core.signals import setting_changed

        from cscapi.web.django import checks as cscapi_checks
        from cscapi.web.django import middleware

        checks.register(cscapi_checks.check_settings, checks.Tags.security)
        setting_changed.connect(middleware.on_setting_changed, dispatch_uid="cscapi-web-settings")
        try:
            from django.contrib.auth.signals import user_login_failed
        except ImportError:  # pragma: no cover - django.contrib.auth is part of Django
            return
        user_login_failed.connect(middleware.on_user_login_failed, dispatch_uid="cscapi-web-login-failed")
