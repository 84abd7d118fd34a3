"""The image captcha with the real ``captcha`` package: a real PNG is rendered, and the right answer (recovered by the
test from the signed challenge's keyed digest, over the 32^3 possible texts; no OCR) is accepted, a wrong one not."""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

from conftest import require_module
from cscapi.web import Bouncer, ImageCaptcha
from cscapi.web._signing import Signer
from cscapi.web.captcha import _ALPHABET
from test_web_support import CAPTCHA, KEY, form_fields, make_bouncer, make_engine

require_module("captcha")


def answer_of(page: str, key: str = KEY) -> str:
    """The text of the page's image: the one whose keyed digest is the one signed into the challenge."""
    signer = Signer(key.encode())
    fields = signer.unsign("cscapi-challenge", form_fields(page)["cscapi_challenge"])
    assert fields is not None and fields[0] == "image"
    challenge_id, digest = fields[1], fields[4]
    for letters in itertools.product(_ALPHABET, repeat=3):
        text = "".join(letters)
        if signer.digest("cscapi-image-answer", f"{challenge_id}|{text}") == digest:
            return text
    raise AssertionError("no 3-character text matches the challenge's digest")


def png_of(page: str) -> bytes:
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "no inline PNG in the page"
    return base64.b64decode(match.group(1))


def solve_image_page(site_class: Any, kind: Any = ImageCaptcha) -> None:
    """Through a framework's :class:`web_framework_scenarios.Site`: render, refuse a wrong answer, accept the right."""
    engine = make_engine()
    try:
        bouncer: Bouncer = make_bouncer(engine, captcha=kind(length=3))
        site = site_class(bouncer)
        page = site.get(CAPTCHA, "/account").text
        png = png_of(page)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
        import io

        from PIL import Image  # the captcha package's dependency

        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.size[0] >= 100
        answer = answer_of(page)
        fields = form_fields(page)
        form = {"cscapi_challenge": fields["cscapi_challenge"], "return": fields["return"]}
        wrong = "".join(_ALPHABET[(_ALPHABET.index(c) + 1) % len(_ALPHABET)] for c in answer)
        assert site.post(CAPTCHA, "/.cscapi/captcha", {**form, "answer": wrong}).status == 401
        ok = site.post(CAPTCHA, "/.cscapi/captcha", {**form, "answer": f" {answer.lower()} "})
        assert ok.status == 303 and ok.headers["location"] == "/account" and ok.set_cookie
        assert site.get(CAPTCHA, "/account").status == 200
    finally:
        engine.close()


def test_the_real_renderer_through_wsgi() -> None:
    from test_web_flask import FlaskSite

    solve_image_page(FlaskSite)
