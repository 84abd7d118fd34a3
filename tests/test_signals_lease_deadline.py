"""A signals POST never outlives its claim's lease: each try's deadline ends before the lease does, so a server
dripping its answer cannot keep a POST in flight while a second sender claims (and POSTs) the same signals.

The real client (sync and async) against a loopback server (``hostile_server.py``) that drips the answer of every
signals POST; a second sender keeps trying to send from the same SQLite queue while the first POST drips.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cscapi.aio import AsyncCAPIClient
from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.sql_storage import SQLStorage
from hostile_server import Conn, HostileServer, Received
from test_storage_support import MACHINE_A, make_signals

LEASE = 2.0
DRIP = (b'{"message":"OK"}' + b" " * 1500, 0.02)  # 30 s of answer: longer than 10 leases


class _Posts:
    """What the server saw: each signals POST's socket and uuids; a POST arriving while an earlier POST of one of its
    signals is still connected is an overlap (two senders holding the same signal at once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: list[tuple[socket.socket, set[str], float]] = []
        self.overlaps: list[str] = []
        self.durations: list[float] = []

    def handle(self, conn: Conn, request: Received) -> None:
        uuids = {item["uuid"] for item in json.loads(request.body)}
        started = time.monotonic()
        with self.lock:
            for sock, seen, _ in self.open:
                if seen & uuids and _connected(sock):
                    self.overlaps.append(f"{sorted(seen & uuids)} POSTed again while the first POST was in flight")
            entry = (conn.sock, uuids, started)
            self.open.append(entry)
        try:
            conn.drip(200, DRIP[0], DRIP[1])
        finally:
            with self.lock:
                self.durations.append(time.monotonic() - started)


def _connected(sock: socket.socket) -> bool:
    """True while the client has not closed its end (no EOF waiting on the socket)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable or sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def _config(url: str) -> CAPIClientConfig:
    return CAPIClientConfig(
        scenarios=["crowdsecurity/ssh-bf"],
        base_url=url,
        claim_lease=LEASE,
        max_retries=0,
        retry_delay=0.01,
        send_metrics_after_login=False,
    )


def _send(mode: str, storage: SQLStorage, cfg: CAPIClientConfig) -> Any:
    if mode == "sync":
        with CAPIClient(storage, cfg) as client:
            return client.send_signals()

    async def run() -> Any:
        async with AsyncCAPIClient(storage, cfg) as client:
            return await client.send_signals()

    return asyncio.run(run())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_dripped_signals_post_is_cut_before_its_lease_ends(mode: str, tmp_path: Path) -> None:
    posts = _Posts()
    storage = SQLStorage(f"sqlite:///{tmp_path / 'signals.db'}")
    try:
        with HostileServer() as srv:
            srv.route("/v3/signals", posts.handle)
            cfg = _config(srv.url)
            with CAPIClient(storage, cfg) as client:
                client.add_signals(make_signals(3, MACHINE_A))
            results: list[Any] = []
            first = threading.Thread(target=lambda: results.append(_send(mode, storage, cfg)), daemon=True)
            started = time.monotonic()
            first.start()
            stop = time.monotonic() + 120
            while first.is_alive() and time.monotonic() < stop:  # a second sender tries all along the first POST
                if srv.count("/v3/signals"):
                    with CAPIClient(storage, cfg) as second:
                        second.send_signals()
                first.join(0.1)
            elapsed = time.monotonic() - started
            assert not first.is_alive(), "the first send never ended"
    finally:
        storage.close()
    assert posts.overlaps == []
    assert results and int(results[0]) == 0
    assert "deadline" in str(results[0].errors[MACHINE_A])  # the dripped POST was cut by the lease's deadline
    assert elapsed < 25  # the drip lasts 30 s: the client hung up first (at 0.9 of the 2 s lease, load aside)
