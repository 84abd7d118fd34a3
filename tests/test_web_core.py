"""cscapi.web's framework-neutral parts: client IP rules, signed tokens, return paths, walls, options, captcha kinds
(the image captcha with a stub renderer; Turnstile, hCaptcha and reCAPTCHA through httpx.MockTransport)."""

from __future__ import annotations

import logging
import subprocess
import sys
import urllib.parse
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cscapi.errors import ConfigurationError
from cscapi.web import Bouncer, HCaptcha, ImageCaptcha, ReCaptcha, Request, Turnstile, Walls, safe_return_path
from cscapi.web._ip import UNRESOLVED, Networks, parse_hop, resolve_client_ip
from cscapi.web._signing import Signer
from test_web_support import CAPTCHA, KEY, form_fields, make_bouncer, make_engine

TRUSTED = Networks(["10.0.0.0/8", "2001:db8:ffff::/48"], what="trusted_proxies")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:5678", "1.2.3.4"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ('"[2001:DB8::1]"', "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("unknown", None),
        ("_hidden", None),
        ("1.2.3.4:port", None),
        ("[2001:db8::1", None),
        ("<script>", None),
        ("", None),
    ],
)
def test_parse_hop(text: str, expected: str | None) -> None:
    assert parse_hop(text) == expected


def test_client_ip_walks_right_to_left_skipping_trusted_hops() -> None:
    h = {"x-forwarded-for": "6.6.6.6, 1.1.1.1, 10.0.0.2"}
    assert resolve_client_ip("10.0.0.1", h, TRUSTED) == "1.1.1.1"
    assert resolve_client_ip("9.9.9.9", h, TRUSTED) == "9.9.9.9"  # untrusted peer: headers ignored
    assert resolve_client_ip("10.0.0.1", {"x-forwarded-for": "10.0.0.3, 10.0.0.2"}, TRUSTED) == "10.0.0.3"
    # Garbage makes the client unresolved: never the last trusted hop (a proxy's own, clean, address).
    assert resolve_client_ip("10.0.0.1", {"x-forwarded-for": "1.1.1.1, garbage, 10.0.0.2"}, TRUSTED) == UNRESOLVED
    assert resolve_client_ip("10.0.0.1", {"x-forwarded-for": "garbage"}, TRUSTED) == UNRESOLVED
    # Only the configured header is read; quoted IPv6 with port; other parameters ignored.
    h = {"forwarded": 'for=1.1.1.1;proto=http, for="[2001:db8:ffff::7]:80";by=x', "x-forwarded-for": "5.5.5.5"}
    assert resolve_client_ip("10.0.0.1", h, TRUSTED) == "5.5.5.5"
    assert resolve_client_ip("10.0.0.1", h, TRUSTED, "forwarded") == "1.1.1.1"
    assert resolve_client_ip("10.0.0.1", h, TRUSTED, "x-real-ip") == "10.0.0.1"  # absent: the proxy's own request
    assert resolve_client_ip("2001:db8:ffff::1", {"x-real-ip": "8.8.8.8"}, TRUSTED, "x-real-ip") == "8.8.8.8"
    assert resolve_client_ip("2001:db8:ffff::1", {"x-real-ip": "8.8.8.8"}, TRUSTED) == "2001:db8:ffff::1"
    for bad in ("for=unknown", "for=_obfuscated", "proto=https", "for="):
        assert resolve_client_ip("10.0.0.1", {"forwarded": bad}, TRUSTED, "forwarded") == UNRESOLVED, bad
    mapped = Networks(["::ffff:10.0.0.0/104"], what="t")
    assert "10.1.2.3" in mapped
    unix = Networks(["unix"], what="t")
    assert resolve_client_ip(None, {"x-forwarded-for": "1.1.1.1"}, unix) == "1.1.1.1"
    assert resolve_client_ip(None, {"x-forwarded-for": "1.1.1.1"}, TRUSTED) is None


def test_bad_cidrs_and_options_are_refused_with_what_to_do() -> None:
    engine = make_engine()
    try:
        with pytest.raises(ConfigurationError, match="not an IP address or CIDR"):
            Bouncer(engine, trusted_proxies=["10.0.0.0/33"], secret_key=KEY)
        with pytest.raises(ConfigurationError, match="list of CIDRs"):
            Bouncer(engine, exempt_ips="10.0.0.1", secret_key=KEY)
        with pytest.raises(ConfigurationError, match="start with '/'"):
            Bouncer(engine, exempt_paths=["health"], secret_key=KEY)
        with pytest.raises(ConfigurationError, match="secret_key"):
            Bouncer(engine, secret_key="short")
        with pytest.raises(ConfigurationError, match="remediation_map"):
            Bouncer(engine, secret_key=KEY, remediation_map={"mfa": "block"})
        with pytest.raises(ConfigurationError, match="RemediationEngine"):
            Bouncer(object(), secret_key=KEY)
        with pytest.raises(ConfigurationError, match="colour"):
            Walls(colors={"accent": "red;}</style><script>"})
        with pytest.raises(ConfigurationError, match="extra_css"):
            Walls(extra_css="</style><script>")
        assert "test-secret" not in repr(make_bouncer(engine))
    finally:
        engine.close()


def test_no_secret_key_warns_and_uses_a_random_key(caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine()
    try:
        with caplog.at_level(logging.WARNING, logger="cscapi.web"):
            Bouncer(engine)
        assert "give a secret_key in production" in caplog.text
    finally:
        engine.close()


def test_signer_refuses_tampering_and_other_purposes() -> None:
    signer = Signer(b"k" * 32)
    token = signer.sign("a", "1.2.3.4", "99")
    assert signer.unsign("a", token) == ["1.2.3.4", "99"]
    assert signer.unsign("b", token) is None
    assert Signer(b"x" * 32).unsign("a", token) is None
    assert signer.unsign("a", token.replace(".", "")) is None
    assert signer.unsign("a", "!!!.???") is None
    assert signer.unsign("a", "x" * 10_000) is None
    with pytest.raises(ValueError):
        signer.sign("a", "x|y")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/b?c=d", "/a/b?c=d"),
        ("//evil", "/"),
        ("/\\evil", "/"),
        ("https://evil", "/"),
        ("/a\x00b", "/"),
        ("/a b", "/"),
        ("/caf\u00e9", "/"),
        ("/caf%C3%A9?q=%FF", "/caf%C3%A9?q=%FF"),
        ("/" + "a" * 3000, "/"),
        (None, "/"),
    ],
)
def test_safe_return_path(target: Any, expected: str) -> None:
    assert safe_return_path(target) == expected


def test_accept_language_choice() -> None:
    walls = Walls(default_language="fr")
    assert walls.language(None) == "fr"
    assert walls.language("en-GB,en;q=0.9") == "en"
    assert walls.language("de, en;q=0.2, fr;q=0.8") == "fr"
    assert walls.language("fr;q=0, en;q=0.1") == "en"
    assert walls.language("zz") == "fr"


def test_image_captcha_verified_statelessly_and_single_use() -> None:
    rendered: list[str] = []

    def renderer(text: str) -> bytes:
        rendered.append(text)
        return b"\x89PNG fake"

    engine = make_engine()
    try:
        issuer = make_bouncer(engine, captcha=ImageCaptcha(renderer=renderer))
        page = issuer.handle(Request("GET", "/x", peer=CAPTCHA))
        assert page is not None and page.status == 401
        text = page.body.decode()
        assert 'src="data:image/png;base64,' in text and "<label" in text and rendered[0] not in text
        fields = form_fields(text)
        # Another worker (same key, its own ImageCaptcha) verifies it; the answer's case and spaces do not matter.
        other = make_bouncer(engine, captcha=ImageCaptcha(renderer=renderer))
        post = Request("POST", "/.cscapi/captcha", peer=CAPTCHA)
        wrong = {"cscapi_challenge": fields["cscapi_challenge"], "return": "/x", "answer": "nope"}
        assert other.solve(post, urllib.parse.urlencode(wrong).encode()).status == 401
        right = dict(wrong, answer=" ".join(rendered[0].lower()))
        response = other.solve(post, urllib.parse.urlencode(right).encode())
        assert response.status == 303 and response.header("location") == "/x"
        assert other.solve(post, urllib.parse.urlencode(right).encode()).status == 401  # single use
    finally:
        engine.close()


def test_image_captcha_without_the_captcha_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The package is installed with the test extra: hide it, as on a machine without cscapi[web-image].
    for name in [m for m in sys.modules if m == "captcha" or m.startswith("captcha.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "captcha", None)
    monkeypatch.setitem(sys.modules, "captcha.image", None)
    with pytest.raises(ConfigurationError, match=r"cscapi\[web-image\]"):
        ImageCaptcha()  # at construction, not at the first captcha'd request


REMOTE = [(Turnstile, "cf-turnstile-response"), (HCaptcha, "h-captcha-response"), (ReCaptcha, "g-recaptcha-response")]


def _remote_round(kind: Any, field: str, handler: Any, *, use_async: bool = False) -> int:
    engine = make_engine()
    try:
        captcha = kind("site-key-1", "SECRET-9", transport=httpx.MockTransport(handler), timeout=2.0)
        bouncer = make_bouncer(engine, captcha=captcha)
        page = bouncer.handle(Request("GET", "/p", peer=CAPTCHA))
        assert page is not None
        text = page.body.decode()
        assert captcha.script_url in text and 'data-sitekey="site-key-1"' in text and "SECRET-9" not in text
        assert page.header("content-security-policy") is None
        form = {"cscapi_challenge": form_fields(text)["cscapi_challenge"], "return": "/p", field: "tok-123"}
        request = Request("POST", "/.cscapi/captcha", peer=CAPTCHA)
        body = urllib.parse.urlencode(form).encode()
        if use_async:
            import asyncio

            return asyncio.run(bouncer.asolve(request, body)).status
        return bouncer.solve(request, body).status
    finally:
        engine.close()


@pytest.mark.parametrize(("kind", "field"), REMOTE)
@pytest.mark.parametrize("use_async", [False, True])
def test_remote_captchas_success_failure_timeout_oversize(kind: Any, field: str, use_async: bool) -> None:
    seen: list[dict[str, str]] = []

    def ok(request: httpx.Request) -> httpx.Response:
        seen.append(dict(urllib.parse.parse_qsl(request.content.decode())))
        assert str(request.url) == kind.verify_url
        return httpx.Response(200, json={"success": True})

    assert _remote_round(kind, field, ok, use_async=use_async) == 303
    assert seen == [{"secret": "SECRET-9", "response": "tok-123", "remoteip": CAPTCHA}]
    assert (
        _remote_round(kind, field, lambda r: httpx.Response(200, json={"success": False}), use_async=use_async) == 401
    )
    assert _remote_round(kind, field, lambda r: httpx.Response(500, text="oops"), use_async=use_async) == 401

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    assert _remote_round(kind, field, timeout, use_async=use_async) == 401
    huge = b'{"success": true, "pad": "' + b"x" * 100_000 + b'"}'
    assert _remote_round(kind, field, lambda r: httpx.Response(200, content=huge), use_async=use_async) == 401


def test_remote_captcha_repr_hides_the_secret() -> None:
    assert "SECRET-9" not in repr(Turnstile("site", "SECRET-9"))


def test_import_cscapi_web_imports_no_framework_nor_httpx() -> None:
    code = (
        "import sys, cscapi.web, cscapi.web.asgi, cscapi.web.wsgi;"
        "bad = [m for m in ('httpx', 'starlette', 'flask', 'django', 'fastapi') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@given(st.lists(st.text(max_size=40), max_size=6), st.sampled_from(["x-forwarded-for", "forwarded"]))
def test_a_client_cannot_spoof_by_prepending_anything(prepended: list[str], header: str) -> None:
    """Whatever a client puts in the header, the address the trusted proxy appended is the client IP."""
    real = "203.0.113.77"
    if header == "forwarded":
        value = ", ".join([*(f"for={p}" for p in prepended), f'for="{real}:1234"'])
    else:
        value = ", ".join([*prepended, real])
    assert resolve_client_ip("10.0.0.1", {header: value}, TRUSTED, header) == real


def test_used_challenge_ids_are_bounded_and_forgotten_after_expiry() -> None:
    from cscapi.web.captcha import _UsedIds

    used = _UsedIds(limit=3)
    assert used.claim("a", expires=100, now=0) and not used.claim("a", expires=100, now=1)
    for name in "bcd":
        assert used.claim(name, expires=100, now=1)
    assert len(used) == 3  # "a", the oldest, made room
    assert used.claim("e", expires=100, now=200) and len(used) == 1  # the expired ones are dropped
