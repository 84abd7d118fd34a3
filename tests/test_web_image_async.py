"""Under ASGI the image captcha's PNG is rendered in a worker thread, a few at a time: a burst of challenge pages
neither stalls the event loop nor runs more renders at once than ``max_concurrent_renders``."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from cscapi.errors import ConfigurationError
from cscapi.web import ImageCaptcha
from cscapi.web.asgi import BouncerMiddleware, Receive, Scope, Send
from test_web_support import CAPTCHA, form_fields, make_bouncer, make_engine

RENDER_SECONDS = 0.4


class SlowRenderer:
    """Holds the thread it runs on for ``RENDER_SECONDS`` (as a costly render would) and counts overlapping calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.calls = 0
        self.threads: set[int] = set()

    def __call__(self, text: str) -> bytes:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.get_ident())
        time.sleep(RENDER_SECONDS)
        with self.lock:
            self.running -= 1
        return b"\x89PNG\r\n\x1a\n" + text.encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def test_challenge_pages_render_off_the_loop_a_few_at_a_time() -> None:
    renderer = SlowRenderer()
    engine = make_engine()
    bouncer = make_bouncer(engine, captcha=ImageCaptcha(renderer=renderer, max_concurrent_renders=2))
    wrapped = BouncerMiddleware(app, bouncer=bouncer)

    async def main() -> None:
        longest = 0.0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal longest
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                longest = max(longest, now - last)
                last = now

        tick = asyncio.create_task(ticker())
        transport = httpx.ASGITransport(app=wrapped, client=(CAPTCHA, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            pages = await asyncio.gather(*(client.get("/") for _ in range(5)))
            # A wrong answer renders a fresh challenge: off the loop too.
            wrong = await client.post("/.cscapi/captcha", data={**form_fields(pages[0].text), "answer": "nope"})
        stop.set()
        await tick
        assert [p.status_code for p in pages] == [401] * 5 and wrong.status_code == 401
        assert all("data:image/png;base64," in p.text for p in (*pages, wrong))
        assert renderer.calls == 6
        assert renderer.most == 2  # capped, and the cap was reached (5 pages asked at once)
        assert threading.get_ident() not in renderer.threads  # never on the loop's thread
        # Rendering on the loop stalled it RENDER_SECONDS per page; a generous margin for a loaded machine.
        assert longest < RENDER_SECONDS * 0.75, longest

    try:
        asyncio.run(main())
    finally:
        engine.close()


def test_the_render_cap_is_validated() -> None:
    for bad in (0, 65, 1.5, "2"):
        with pytest.raises(ConfigurationError, match="max_concurrent_renders"):
            ImageCaptcha(renderer=lambda text: b"", max_concurrent_renders=bad)  # type: ignore[arg-type]
