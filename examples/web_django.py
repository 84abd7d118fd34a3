"""A one-file Django project protected by cscapi.web.django, with the decisions an agent keeps in a store.

Run:  python examples/web_django.py          (manage.py check, three visitors through Django's test client, then
                                               manage.py cscapi decisions check)
      python examples/web_django.py --serve  (runserver on http://127.0.0.1:8000)
"""

from __future__ import annotations

import os
import secrets

import django
from _web import VISITORS, arguments, decision_store, show
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello from Django")


urlpatterns = [path("", home)]


def configure(store: str) -> None:
    settings.configure(
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32),  # also signs the captcha cookie
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["cscapi.web.django"],  # system checks, `manage.py cscapi`, the user_login_failed hook
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "cscapi.web.django.BouncerMiddleware",  # before CSRF: it answers the captcha form itself
            "django.middleware.csrf.CsrfViewMiddleware",
        ],
        CSCAPI={
            "DECISION_STORE": store,  # what the agent (cscapi run) keeps filled
            "TRUSTED_PROXIES": ["127.0.0.1/32"],  # your reverse proxy
            "EXEMPT_PATHS": ["/health"],
        },
    )
    django.setup()


def main() -> None:
    args = arguments(__doc__ or "")
    with decision_store(args.base_url) as store:
        configure(store)
        from django.core.management import call_command

        if args.serve:
            call_command("runserver", f"127.0.0.1:{args.port}", use_reloader=False)
            return
        call_command("check")
        from django.test import Client

        def get(ip: str) -> tuple[int, str]:
            r = Client(REMOTE_ADDR=ip).get("/")
            return r.status_code, r.content.decode()

        show(get)
        call_command("cscapi", "decisions", "check", *VISITORS)  # = manage.py cscapi decisions check ...


if __name__ == "__main__":
    main()
