"""The async transport reads answers raw, in chunks, and decodes a large one off the event loop, as httpx would.

A scripted server (``httpx.MockTransport`` with a streamed, still-encoded body) checks the ``Content-Encoding``
semantics and which thread decodes; the real emulator behind a gzip middleware checks a whole decisions stream.
"""

from __future__ import annotations

import gzip
import json
import random
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi import transport
from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.errors import TransportError
from cscapi.protocol.http import Request
from cscapi.sql_storage import SQLStorage
from cscapi.transport import INLINE_DECODE_BYTES, AsyncTransport, TransportSettings
from test_client_support import make_config

URL = "http://capi.test/v3/decisions/stream"
large_gzip: list[int] = []


class Chunks(httpx.AsyncByteStream):
    """A body that arrives in pieces, not read yet when the client gets the response (as from a socket)."""

    def __init__(self, body: bytes, size: int = 8192) -> None:
        self.body = body
        self.size = size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.body), self.size):
            yield self.body[i : i + self.size]


def serving(body: bytes, encoding: str | None) -> httpx.MockTransport:
    headers = {"Content-Type": "application/json"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, stream=Chunks(body))

    return httpx.MockTransport(handle)


def payload(n: int) -> bytes:
    rng = random.Random(n)  # random ids: the body stays large once compressed
    return json.dumps(
        {"new": [{"value": f"10.0.{i // 256}.{i % 256}", "id": f"{rng.getrandbits(64):x}"} for i in range(n)]}
    ).encode()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "gzip, deflate": lambda b: zlib.compress(gzip.compress(b)),  # applied in order: decoded in reverse
    "identity": lambda b: b,
}


async def fetch(mock: httpx.MockTransport) -> Any:
    sender = AsyncTransport(TransportSettings(user_agent="t", async_transport=mock))
    try:
        return await sender.send(Request("GET", URL, "decisions stream"))
    finally:
        await sender.aclose()


@pytest.fixture
def decode_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads ``transport._decode`` ran on (for gzip answers larger than the inline limit: ``large_gzip``)."""
    seen: list[int] = []
    real = transport._decode

    def spy(resp: httpx.Response, chunks: list[bytes], *limits: Any) -> bytes:
        seen.append(threading.get_ident())
        if resp.headers.get("content-encoding") == "gzip" and sum(map(len, chunks)) > INLINE_DECODE_BYTES:
            large_gzip.append(threading.get_ident())
        return real(resp, chunks, *limits)

    monkeypatch.setattr(transport, "_decode", spy)
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", sorted(ENCODERS))
async def test_large_encoded_body_is_decoded_off_the_loop(encoding: str, decode_threads: list[int]) -> None:
    body = payload(20_000)
    encoded = ENCODERS[encoding](body)
    assert len(encoded) > INLINE_DECODE_BYTES
    response = await fetch(serving(encoded, encoding))
    assert response.status_code == 200 and response.content == body
    assert response.header("content-encoding") == encoding
    assert decode_threads and threading.get_ident() not in decode_threads


@pytest.mark.anyio
async def test_small_body_is_decoded_inline(decode_threads: list[int]) -> None:
    body = payload(20)
    response = await fetch(serving(gzip.compress(body), "gzip"))
    assert response.content == body and decode_threads == [threading.get_ident()]


@pytest.mark.anyio
async def test_unknown_encoding_is_left_as_httpx_leaves_it() -> None:
    body = b'{"new": []}'
    expected = httpx.Response(200, headers={"Content-Encoding": "x-custom"}, content=body).content
    response = await fetch(serving(body, "x-custom"))
    assert response.content == expected == body


@pytest.mark.anyio
async def test_corrupt_compressed_body_is_a_network_failure_not_garbage(tmp_path: Path) -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if request.url.path.endswith("/decisions/stream"):
            calls += 1
            bad = b"\x1f\x8b" + b"\x00" * (INLINE_DECODE_BYTES + 10)  # gzip magic, then nonsense
            return httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=Chunks(bad))
        if request.url.path.endswith("/watchers/login"):
            return httpx.Response(200, json={"code": 200, "token": "t.e.s", "expire": "2099-01-01T00:00:00Z"})
        return httpx.Response(201, json={"message": "OK"})

    storage = SQLStorage(f"sqlite:///{tmp_path / 'bad.db'}")
    config = make_config(None, transport=httpx.MockTransport(handle), retry_delay=0.01, max_retries=1)
    try:
        async with AsyncCAPIClient(storage, config) as client:
            client._sleep = _no_sleep
            machine_id = await client.default_machine_id()
            with pytest.raises(TransportError, match=r"decod|protocol"):
                await client.get_decisions(machine_id)
    finally:
        storage.close()
    assert calls == 2  # retried once, as a dropped connection is


async def _no_sleep(seconds: float) -> None:
    return None


# ---- the real emulator, gzipping its answers as CAPI does -----------------------------------------------------


@pytest.fixture(scope="module")
def gzip_emu() -> Iterator[Any]:
    from starlette.middleware.gzip import GZipMiddleware

    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    config = EmulatorConfig(
        seed=11, community_size=20_000, login_rate_limit=LoginRateLimit(False), tailor_to_scenarios=False
    )  # every machine gets the whole 20,000-decision list, whatever scenarios it declares
    server = EmbeddedEmulator(config)
    server.app = GZipMiddleware(server.app, minimum_size=500)
    with server:
        yield server


@pytest.mark.anyio
async def test_async_stream_from_a_gzipping_emulator_equals_the_sync_one(
    gzip_emu: Any, tmp_path: Path, decode_threads: list[int]
) -> None:
    config: CAPIClientConfig = make_config(None, base_url=gzip_emu.base_url)
    storage = SQLStorage(f"sqlite:///{tmp_path / 'gz.db'}")
    try:
        with CAPIClient(storage, config) as sync_client:
            machine_id = sync_client.default_machine_id()
            expected = sync_client.get_decisions(machine_id, startup=True)
        large_gzip.clear()
        async with AsyncCAPIClient(storage, config) as client:
            got = await client.get_decisions(machine_id, startup=True)
    finally:
        storage.close()
    assert len(got.new) == len(expected.new) == 20_000
    assert got.new == expected.new and got.raw == expected.raw
    # the answer really came gzipped and large: decoded in a worker thread
    assert len(large_gzip) == 1 and threading.get_ident() not in large_gzip
