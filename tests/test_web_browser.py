"""A real browser in front of the bouncer: headless Chromium (Debian's, driven by selenium through chromedriver) loads
a page of an app served by uvicorn on loopback. Under captcha, it gets the challenge, the page's proof of work solves
it and the browser lands on the page it asked for; under a ban, it gets the ban page. No network: loopback only.

Needs ``apt-get install chromium chromium-driver`` (.ci/run installs them); without them the tests skip locally and
fail in CI. ``CSCAPI_WEB_SCREENSHOTS=docs/img`` saves the screenshots of the walls where the documentation shows them
(ban-wall.png, captcha-wall.png, image-captcha-wall.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require_module, service_unavailable
from cscapi.remediation import RemediationEngine
from cscapi.web import Bouncer, ProofOfWork
from cscapi.web.asgi import BouncerMiddleware
from test_remediation_support import FakeSource, decision, stream
from test_web_support import KEY

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = "apt-get install chromium chromium-driver"
DEADLINE = 90.0  # seconds: generous, the machine may be loaded


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        service_unavailable("Chromium and chromedriver", f"missing {', '.join(missing)}: {INSTALL}")
    try:
        import selenium  # noqa: F401
    except ImportError as exc:
        service_unavailable("selenium", f"{exc}: pip install -e '.[test]'")


def engine_with(type_: str) -> RemediationEngine:
    """A real engine where 127.0.0.1 (the browser) is under a ``type_`` decision."""
    source = FakeSource()
    source.streams.append(stream([decision("127.0.0.1", type_=type_)]))
    engine = RemediationEngine(source, sync_interval_ms=0)
    engine.refresh_decisions()
    return engine


PAGE = b"<!doctype html><html lang=en><title>Shop</title><h1 id=landed>Welcome to the shop</h1></html>"


class Site:
    """A protected ASGI app served by uvicorn in a thread, on a socket bound before the server starts (no race)."""

    def __init__(self, bouncer: Bouncer, *, freeze_challenge: bool = False) -> None:
        import re

        import uvicorn

        self.statuses: list[tuple[str, str, int]] = []  # (method, path, status) as the browser got them
        self.ran: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            self.ran.append(scope["path"])
            headers = [(b"content-type", b"text/html; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": PAGE})

        protected = BouncerMiddleware(app, bouncer=bouncer)

        async def recorder(scope: Any, receive: Any, send: Any) -> None:
            start: dict[str, Any] = {}

            async def record(message: Any) -> None:
                if message["type"] == "http.response.start":
                    self.statuses.append((scope["method"], scope["path"], message["status"]))
                    if freeze_challenge:  # held until the body is rewritten
                        start.update(message)
                        return
                elif freeze_challenge and message["type"] == "http.response.body":
                    # For the screenshot: the challenge page as the visitor sees it while the proof of work runs,
                    # without the script (a running search keeps the renderer too busy to take a screenshot).
                    body = re.sub(rb"<script.*?</script>", b"", message["body"], flags=re.S)
                    headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                    await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                    message = {**message, "body": body}
                await send(message)

            if scope["type"] == "http" and scope["path"] == "/favicon.ico":  # the browser's own request: not counted
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            await protected(scope, receive, record if scope["type"] == "http" else send)

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(recorder, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Site:
        self.thread.start()
        deadline = time.monotonic() + DEADLINE
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("uvicorn did not start")
            time.sleep(0.02)  # polling a condition with a deadline, not a sleep as synchronisation
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=DEADLINE)
        self.sock.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=900,700",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--metrics-recording-only",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # nothing resolves but loopback
    ):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception as exc:
        service_unavailable("Chromium through chromedriver", f"{type(exc).__name__}: {str(exc)[:300]}; {INSTALL}")
    driver.set_page_load_timeout(DEADLINE)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, DEADLINE, poll_frequency=0.1).until(condition, message=what)


def test_a_captchad_browser_solves_the_proof_of_work_and_lands_on_its_page(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    engine = engine_with("captcha")
    bouncer = Bouncer(engine, secret_key=KEY, captcha=ProofOfWork(difficulty=12))
    try:
        with Site(bouncer) as site:
            browser.get(site.url("/cart?item=3"))
            landed = _wait_for(
                browser, lambda d: d.find_elements(By.ID, "landed"), "the browser never reached the page"
            )
            assert landed[0].text == "Welcome to the shop"
            assert browser.current_url == site.url("/cart?item=3")
            # What happened on the wire: the challenge (401), the form's POST (303 back), then the page (200).
            assert site.statuses[:3] == [
                ("GET", "/cart", 401),
                ("POST", "/.cscapi/captcha", 303),
                ("GET", "/cart", 200),
            ], site.statuses
            assert site.ran == ["/cart"]
            assert bouncer.counters.captcha_solved == 1 and bouncer.counters.captcha_failed == 0
            cookie = browser.get_cookie("cscapi_captcha")
            assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
            # The pass cookie is reused: another page, no challenge.
            browser.get(site.url("/other"))
            _wait_for(browser, lambda d: d.find_elements(By.ID, "landed"), "the cookie did not let the browser in")
            assert site.statuses[-1] == ("GET", "/other", 200)
    finally:
        engine.close()


def test_a_banned_browser_sees_the_ban_page(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    engine = engine_with("ban")
    try:
        with Site(Bouncer(engine, secret_key=KEY)) as site:
            browser.get(site.url("/cart"))
            heading = _wait_for(browser, lambda d: d.find_elements(By.TAG_NAME, "h1"), "no page")
            assert heading[0].text == "Access denied"
            assert site.statuses == [("GET", "/cart", 403)] and site.ran == []
    finally:
        engine.close()


def test_the_image_captcha_in_a_browser(browser: Any) -> None:
    """The captcha for clients without JavaScript: the browser shows the rendered PNG, the visitor types the text
    (recovered by the test from the signed challenge, see test_web_image) and submits; it lands on its page."""
    require_module("captcha")
    from selenium.webdriver.common.by import By

    from cscapi.web import ImageCaptcha
    from test_web_image import answer_of

    engine = engine_with("captcha")
    try:
        with Site(Bouncer(engine, secret_key=KEY, captcha=ImageCaptcha(length=3))) as site:
            browser.get(site.url("/cart?item=3"))
            image = _wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "img.cscapi-image"), "no image")
            assert image[0].get_attribute("naturalWidth") not in (None, "0")  # the PNG decoded in the browser
            field = browser.find_element(By.ID, "cscapi-answer")
            field.send_keys(answer_of(browser.page_source).lower())
            browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            landed = _wait_for(browser, lambda d: d.find_elements(By.ID, "landed"), "the browser never got in")
            assert landed[0].text == "Welcome to the shop" and browser.current_url == site.url("/cart?item=3")
            assert [s[2] for s in site.statuses[:3]] == [401, 303, 200]
    finally:
        engine.close()


def test_screenshots_of_the_walls(browser: Any, tmp_path: Path) -> None:
    """Screenshots of the walls as a browser renders them: ban-wall.png, captcha-wall.png (the challenge page as it
    looks while the proof of work runs) and image-captcha-wall.png, in $CSCAPI_WEB_SCREENSHOTS (docs/img to refresh
    the documentation's) or a temporary directory."""
    from selenium.webdriver.common.by import By

    from cscapi.web import ImageCaptcha

    out = Path(os.environ.get("CSCAPI_WEB_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    walls = (("ban", "ban-wall.png", None, "Access denied"), ("captcha", "captcha-wall.png", None, "One moment"))
    image = ("captcha", "image-captcha-wall.png", ImageCaptcha(), "One moment")
    for type_, name, captcha, heading in (*walls, image):
        engine = engine_with(type_)
        try:
            bouncer = Bouncer(engine, secret_key=KEY, **({"captcha": captcha} if captcha else {}))
            with Site(bouncer, freeze_challenge=True) as site:
                browser.get(site.url("/"))
                h1 = _wait_for(browser, lambda d: d.find_elements(By.TAG_NAME, "h1"), "no page")
                assert h1[0].text.startswith(heading)
                assert browser.save_screenshot(str(out / name))
            png = (out / name).read_bytes()
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
        finally:
            engine.close()


def test_the_page_script_solves_a_challenge_with_and_without_webcrypto(browser: Any) -> None:
    """The proof-of-work script with a minimal stand-in form, in the real Chromium: the bundled SHA-256 (no WebCrypto,
    as on plain http off localhost) and WebCrypto both find an answer the server accepts."""
    import hashlib

    from cscapi.web.captcha import _POW_JS, leading_zero_bits

    browser.set_script_timeout(DEADLINE)
    engine = engine_with("ban")
    try:
        with Site(Bouncer(engine, secret_key=KEY)) as site:
            browser.get(site.url("/"))  # http://127.0.0.1: a secure context, where WebCrypto exists
    finally:
        engine.close()
    assert browser.execute_script("return !!(window.crypto && window.crypto.subtle)"), "no WebCrypto to compare with"
    for subtle in ("undefined", "globalThis.crypto.subtle"):
        harness = (
            "var callback=arguments[arguments.length-1];(function(){"
            "var answer={value:''};"
            "var form={getAttribute:function(n){return {'data-salt':'salt-Ab9_','data-bits':'12'}[n]},"
            "elements:{answer:answer},submit:function(){callback(answer.value)}};"
            "var document={getElementById:function(i){return i==='cscapi-form'?form:null}};"
            f"var window={{crypto:{{subtle:{subtle}}}}};" + _POW_JS + "})();"
        )
        answer = browser.execute_async_script(harness)
        assert isinstance(answer, str) and answer.isdigit(), (subtle, answer)
        assert leading_zero_bits(hashlib.sha256(f"salt-Ab9_{answer}".encode()).digest()) >= 12, subtle
