"""Helpers of the cscapi.web tests: a real engine with scripted decisions, and a challenge page reader."""

from __future__ import annotations

import hashlib
import html
import re
from typing import Any

from cscapi.remediation import RemediationEngine
from cscapi.web import Bouncer, ProofOfWork
from cscapi.web.captcha import leading_zero_bits, solve_proof_of_work
from test_remediation_support import FakeSource, decision, stream

BANNED = "192.0.2.1"
CAPTCHA = "192.0.2.2"
CLEAN_IP = "192.0.2.200"
RANGE_IP = "198.51.100.77"  # in a banned /24
V6_BANNED = "2001:db8:1::5"  # in a banned /48
V6_CAPTCHA = "2001:db8:2::9"
PROXY = "10.0.0.5"
KEY = "test-secret-key-0123456789"


def make_engine(**options: Any) -> RemediationEngine:
    """A real engine (memory store) holding a ban, a captcha, a banned IPv4 and IPv6 range and an IPv6 captcha."""
    source = FakeSource()
    source.streams.append(
        stream(
            [
                decision(BANNED),
                decision(CAPTCHA, type_="captcha"),
                decision("198.51.100.0/24", scope="range"),
                decision("2001:db8:1::/48", scope="range"),
                decision(V6_CAPTCHA, type_="captcha"),
                decision("203.0.113.9", type_="mfa"),
            ]
        )
    )
    engine = RemediationEngine(source, sync_interval_ms=0, **options)
    engine.refresh_decisions()
    return engine


def make_bouncer(engine: Any = None, **options: Any) -> Bouncer:
    options.setdefault("secret_key", KEY)
    options.setdefault("captcha", ProofOfWork(difficulty=8))
    return Bouncer(engine if engine is not None else make_engine(), **options)


def form_fields(page: str) -> dict[str, str]:
    """The hidden inputs and data-* attributes of a challenge page."""
    fields = {m.group(1): html.unescape(m.group(2)) for m in re.finditer(r'name="([^"]+)" value="([^"]*)"', page)}
    for m in re.finditer(r'data-(salt|bits)="([^"]*)"', page):
        fields["data-" + m.group(1)] = html.unescape(m.group(2))
    return fields


def wrong_answer(page: str) -> str:
    """An answer that does NOT solve the page's proof of work (a fixed number solves a low-difficulty challenge by
    chance, 1 in 2**bits: checked, not assumed)."""
    fields = form_fields(page)
    salt, bits = fields["data-salt"], int(fields["data-bits"])
    n = 999_999_999_999
    while leading_zero_bits(hashlib.sha256(f"{salt}{n}".encode()).digest()) >= bits:
        n += 1
    return str(n)


def solved_form(page: str, *, answer: str | None = None, return_to: str | None = None) -> dict[str, str]:
    """The POST fields that solve a proof-of-work challenge page (the browser script's job)."""
    fields = form_fields(page)
    form = {"cscapi_challenge": fields["cscapi_challenge"], "return": fields["return"]}
    if return_to is not None:
        form["return"] = return_to
    if answer is None:
        answer = str(solve_proof_of_work(fields["data-salt"], int(fields["data-bits"])))
    form["answer"] = answer
    return form
