"""Protect a Python web application with the remediation engine's decisions: a framework-neutral
:class:`Bouncer` (client IP, walls, captcha, pass cookie, fail policy) and thin adapters
(:mod:`cscapi.web.asgi`, :mod:`cscapi.web.wsgi`). See ``docs/web.md``.

Importing this package imports no web framework and no httpx.
"""

from __future__ import annotations

from cscapi.web._bouncer import (
    Bouncer,
    BouncerCounters,
    Decision,
    Reason,
    Request,
    Response,
    safe_return_path,
    status_line,
)
from cscapi.web.captcha import HCaptcha, ImageCaptcha, ProofOfWork, ReCaptcha, Turnstile
from cscapi.web.walls import Walls

__all__ = [
    "Bouncer",
    "BouncerCounters",
    "Decision",
    "HCaptcha",
    "ImageCaptcha",
    "ProofOfWork",
    "ReCaptcha",
    "Reason",
    "Request",
    "Response",
    "Turnstile",
    "Walls",
    "safe_return_path",
    "status_line",
]
