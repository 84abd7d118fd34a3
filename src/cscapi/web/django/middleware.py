"""``cscapi.web.django.BouncerMiddleware``: the bouncer as a Django middleware, sync and async capable (Django picks
the mode of the chain: no thread hop under ASGI)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from cscapi.errors import ConfigurationError
from cscapi.web._bouncer import Bouncer, Request, Response
from cscapi.web._settings import OPTIONS, bouncer_from_settings
from cscapi.web.wsgi import _EnvironHeaders

__all__ = ["BouncerMiddleware", "get_bouncer", "report_failed_login", "settings_dict"]

_lock = threading.Lock()
_bouncer: Bouncer | None = None


def settings_dict(*, build: bool = True) -> dict[str, Any]:
    """``settings.CSCAPI`` with lower-case names (``TRUSTED_PROXIES`` -> ``trusted_proxies``); ``BOUNCER`` as a
    dotted path is imported (a Bouncer, or a callable returning one, called without arguments; ``build=False``: the
    callable is left uncalled, so the system checks build no engine)."""
    raw = getattr(settings, "CSCAPI", None)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigurationError("settings.CSCAPI must be a dict")
    found: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).lower()
        found[name if name in OPTIONS or name == "bouncer" else str(key)] = value
    bouncer = found.get("bouncer")
    if isinstance(bouncer, str):
        target = import_string(bouncer)
        found["bouncer"] = target if isinstance(target, Bouncer) or not build else target()
    return found


def django_secret_key() -> Any:
    """Django's ``SECRET_KEY`` (the default ``CSCAPI['SECRET_KEY']``), None when unset or empty."""
    from django.core.exceptions import ImproperlyConfigured

    try:
        return getattr(settings, "SECRET_KEY", None) or None
    except ImproperlyConfigured:  # Django refuses to hand out an empty SECRET_KEY
        return None


def get_bouncer() -> Bouncer:
    """This process's bouncer, built from ``settings.CSCAPI`` on first use (``SECRET_KEY`` defaults to Django's)."""
    global _bouncer
    bouncer = _bouncer
    if bouncer is None:
        with _lock:
            if _bouncer is None:
                _bouncer = bouncer_from_settings(settings_dict(), default_secret=django_secret_key())
            bouncer = _bouncer
    return bouncer


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``override_settings(CSCAPI=...)`` / ``SECRET_KEY``: the next request builds the bouncer again."""
    global _bouncer
    if setting in ("CSCAPI", "SECRET_KEY"):
        with _lock:
            _bouncer = None


def request_view(request: HttpRequest) -> Request:
    """The bouncer's view of a Django request (``request.path``: what the browser asked for, script prefix included)."""
    meta = request.META
    return Request(
        request.method or "GET",
        request.path,
        query=meta.get("QUERY_STRING", ""),
        headers=_EnvironHeaders(meta),
        peer=meta.get("REMOTE_ADDR") or None,
        scheme=request.scheme or "http",
    )


def _body(request: HttpRequest, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the body; nothing is read when ``Content-Length`` is over ``limit``."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        return b"x" * (limit + 1)
    return request.read(limit + 1) if length > 0 else b""


def to_django(response: Response) -> HttpResponse:
    """A bouncer :class:`Response` as an ``HttpResponse`` (the pass cookie through ``response.cookies``)."""
    out = HttpResponse(response.body, status=response.status)
    for name, value in response.headers:
        if name.lower() == "set-cookie":
            out.cookies.load(value)
        else:
            out[name] = value
    return out


class BouncerMiddleware:
    """Checks each request with the bouncer of ``settings.CSCAPI`` before the view runs. The decision is kept on
    ``request.cscapi_decision`` for the views that want it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        # Built now, when Django loads its middleware (WSGIHandler/ASGIHandler creation, in a sync context): a bad
        # configuration stops the server at startup, and no store is opened inside the event loop later.
        get_bouncer()

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        bouncer = get_bouncer()
        view = request_view(request)
        if bouncer.is_captcha_post(view):
            return to_django(bouncer.solve(view, _body(request, bouncer.max_body)))
        decision = bouncer.decide(view)
        request.cscapi_decision = decision
        if decision.remediation == "bypass":
            response = self.get_response(request)
            _observe(bouncer, view, response)
            return response
        response = bouncer.respond(view, decision)
        assert response is not None
        return to_django(response)

    async def _acall(self, request: HttpRequest) -> Any:
        bouncer = get_bouncer()
        view = request_view(request)
        if bouncer.is_captcha_post(view):  # Django's ASGI handler has already spooled the body: no blocking read
            return to_django(await bouncer.asolve(view, _body(request, bouncer.max_body)))
        decision = await bouncer.adecide(view)
        request.cscapi_decision = decision
        if decision.remediation == "bypass":
            get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
            response = await get_response(request)
            _observe(bouncer, view, response)
            return response
        response = await bouncer.arespond(view, decision)
        assert response is not None
        return to_django(response)


def report_failed_login(request: HttpRequest) -> bool:
    """Tell the failed-login detector that ``request`` failed to log in (done for you on ``user_login_failed``).

    True when this failure crossed the threshold (the IP's local decision is then in force); False otherwise, and
    always when the bouncer has no detectors (``CSCAPI['DETECTORS']``, see ``cscapi.web.detect``)."""
    report = getattr(get_bouncer(), "report_failed_login", None)
    if report is None:
        return False
    return bool(report(request_view(request)))


def _observe(bouncer: Bouncer, view: Request, response: Any) -> None:
    """The detectors' 404 hook (``Bouncer.observe_status``), when this bouncer has one."""
    status = getattr(response, "status_code", 0)
    if status == 404:
        observe = getattr(bouncer, "observe_status", None)
        if observe is not None:
            observe(view, status)


def on_user_login_failed(sender: Any, credentials: Any = None, request: HttpRequest | None = None, **kw: Any) -> None:
    """``django.contrib.auth.signals.user_login_failed``: reports the request (when Django passes one)."""
    if request is not None:
        report_failed_login(request)
