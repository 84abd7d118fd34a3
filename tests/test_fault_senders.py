"""The delivery guarantee of the signal queue, end to end: 4 sender processes on one PostgreSQL queue, an emulator
under faults, one sender SIGKILLed mid-way, a fresh sender draining the rest. At least once, and a signal is only
received twice when the answer to an earlier POST of it was lost.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import multiprocessing
import os
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.models import QueueCounts
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal, generate_machine_id_from_key

SCENARIO = "crowdsecurity/ssh-bf"
MACHINES = [generate_machine_id_from_key(f"fault-host-{i}", prefix="test") for i in range(4)]
PER_MACHINE = 200
BATCH = 20  # 40 POSTs at least, 80 signals per claim round
TIMEOUT = 1.5  # the senders' HTTP timeout
DELAY = TIMEOUT + 1.5  # an answer held this long after processing: the sender has certainly timed out
LEASE = 15.0  # well above the worst time a live sender spends on one claim (4 POSTs x 4 tries x TIMEOUT)
HEADER = "x-cscapi-test-request"


class LedgerTransport(httpx.HTTPTransport):
    """A real HTTP transport that tags each signals POST with an id and appends to this sender's ledger file, before
    sending, the uuids it carries, then what the sender got back: a status, or the network error. A line written
    with ``os.write`` on an ``O_APPEND`` file survives the SIGKILL of the process."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__()
        self.name = name
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.count = 0
        self.guard = threading.Lock()

    def _log(self, entry: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(entry) + "\n").encode())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or not request.url.path.endswith("/signals"):
            return super().handle_request(request)
        with self.guard:
            self.count += 1
            rid = f"{self.name}-{self.count}"
        request.headers[HEADER] = rid
        body = request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self._log({"rid": rid, "uuids": [item["uuid"] for item in json.loads(body)], "t": time.time()})
        try:
            response = super().handle_request(request)
            try:
                raw = b"".join(response.iter_raw())  # undecoded: the client decodes it
            finally:
                response.close()
        except Exception as exc:
            self._log({"rid": rid, "error": type(exc).__name__})
            raise
        self._log({"rid": rid, "status": response.status_code})
        return httpx.Response(
            response.status_code, headers=response.headers, stream=httpx.ByteStream(raw), extensions=response.extensions
        )


def sender_config(base_url: str, name: str, ledger: Path) -> CAPIClientConfig:
    return CAPIClientConfig(
        scenarios=[SCENARIO],
        base_url=base_url,
        transport=LedgerTransport(name, str(ledger / f"{name}.jsonl")),
        timeout=TIMEOUT,
        max_retries=3,
        retry_delay=0.05,
        max_backoff=0.2,
        failing_cooldown=0.5,
        claim_lease=LEASE,
        batch_size=BATCH,
        send_metrics_after_login=False,
    )


def run_sender(db_url: str, base_url: str, name: str, ledger: str, ready: Any, go: Any) -> None:
    """One sender process: send until nothing is left to claim (a failing machine's signals wait out a short
    cool-down and are claimed again)."""
    storage = SQLStorage(db_url)
    client = CAPIClient(storage, sender_config(base_url, name, Path(ledger)))
    ready.put(name)
    go.wait(60)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            client.send_signals()
            if storage.count_signals().queued == 0:
                break
            time.sleep(0.05)
    finally:
        client.close()
        storage.close()


class LostAnswers:
    """ASGI middleware around the emulator app (the faults the emulator lacks): it lets the emulator process a
    signals POST, then loses the answer on purpose. Every 7th processed POST: the connection is aborted with no
    answer; every 11th: the answer is held ``DELAY`` seconds (the sender times out first). The victim's second
    processed POST: the answer is held until the test has SIGKILLed the victim. ``records`` keeps, in order, each
    answered signals POST: its request id, the emulator's status (200 = processed) and what happened to the answer."""

    def __init__(self, app: Any, victim: str) -> None:
        self.app = app
        self.victim = victim
        self.records: list[dict[str, Any]] = []
        self.kill_now = threading.Event()
        self.killed = threading.Event()
        self.victim_processed = 0
        self.processed = 0
        self.in_flight = 0  # signals POSTs being served (a held answer included)

    def _fate(self, rid: str) -> str:
        self.processed += 1
        if rid.startswith(self.victim + "-"):
            self.victim_processed += 1
            if self.victim_processed == 2:
                return "kill"
        if self.processed % 7 == 3:
            return "drop"
        if self.processed % 11 == 5:
            return "delay"
        return "answered"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v3/signals":
            await self.app(scope, receive, send)
            return
        rid = dict(scope["headers"]).get(HEADER.encode(), b"").decode()
        fate: list[str] = []

        async def guarded(message: Any) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                fate.append(self._fate(rid) if status == 200 else "answered")
                self.records.append({"rid": rid, "status": status, "fate": fate[0]})
                if fate[0] == "kill":
                    self.kill_now.set()
                    for _ in range(3000):
                        if self.killed.is_set():
                            break
                        await asyncio.sleep(0.01)
                elif fate[0] == "drop":
                    receive.__self__.transport.abort()  # uvicorn: the connection closes with no answer
                elif fate[0] == "delay":
                    await asyncio.sleep(DELAY)
            if not fate or fate[0] != "drop":
                await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, receive, guarded)
        finally:
            self.in_flight -= 1

    def wait_idle(self, timeout: float) -> None:
        """Wait until no signals POST is being served (held answers sent or dropped): the logs are then final."""
        deadline = time.monotonic() + timeout
        while self.in_flight:
            assert time.monotonic() < deadline, "a signals POST is still being served"
            time.sleep(0.05)


def read_ledgers(ledger: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Every sender's POSTs: request id -> uuids, and request id -> what the sender got (``status 200``,
    ``error ReadTimeout``...; absent when the sender was killed before it could note anything)."""
    uuids: dict[str, list[str]] = {}
    outcome: dict[str, str] = {}
    for path in ledger.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if "uuids" in entry:
                uuids[entry["rid"]] = entry["uuids"]
            elif "status" in entry:
                outcome[entry["rid"]] = f"status {entry['status']}"
            else:
                outcome[entry["rid"]] = f"error {entry['error']}"
    return uuids, outcome


@pytest.mark.slow
@pytest.mark.postgres
def test_four_senders_under_faults_and_a_kill_lose_nothing(postgres_url: str, tmp_path: Path) -> None:
    """0 signals lost, and duplicates only from lost answers.

    How a duplicate is told from a double send: each sender's transport writes to its ledger, before sending, the
    request id and uuids of every signals POST, then the answer it got (a status, or the network error). The
    middleware ``LostAnswers`` records, in the emulator, each POST the emulator processed (status 200: the
    emulator's own 5xx and dropped-connection faults answer before processing, so they cannot duplicate) and what
    became of the answer. A uuid processed k times has k processing records; each record but the last must be a POST
    whose answer its sender never got: a ledger error (a dropped connection or a timeout, caused by our faults or
    by load) or no ledger outcome at all (the SIGKILLed sender's in-flight POST). A first POST whose 200 reached its
    sender followed by another POST of the same uuid would be a double send (e.g. a lease that ran out while its
    holder was still sending) and fails the test. The emulator's inbox (each uuid once per machine) must hold every
    queued uuid, and its request log must count as many processed POSTs as the middleware saw.
    """
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    ledger = tmp_path / "ledger"
    ledger.mkdir()
    config = EmulatorConfig(seed=7, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    emu = EmbeddedEmulator(config)
    middleware = LostAnswers(emu.app, victim="s0")
    emu.app = middleware  # type: ignore[assignment]  # uvicorn serves it in place of the bare emulator app
    with emu:
        base = emu.base_url
        storage = SQLStorage(postgres_url)
        setup = CAPIClient(storage, CAPIClientConfig(scenarios=[SCENARIO], base_url=base))
        queued: set[str] = set()
        for n, machine_id in enumerate(MACHINES):
            setup.register_machine(machine_id)
            signals = [create_signal(f"192.0.2.{i % 250}", SCENARIO, machine_id=machine_id) for i in range(PER_MACHINE)]
            assert setup.add_signals(signals) == PER_MACHINE, n
            queued.update(str(s.uuid) for s in signals)
        setup.close()
        emu.admin.set_fault("signals", drop_rate=0.1, error_rate=0.1, error_status=503)

        ctx = multiprocessing.get_context("spawn")
        ready, go = ctx.Queue(), ctx.Event()
        names = [f"s{i}" for i in range(4)]
        procs = {
            name: ctx.Process(target=run_sender, args=(postgres_url, base, name, str(ledger), ready, go))
            for name in names
        }
        try:
            for p in procs.values():
                p.start()
            assert sorted(ready.get(timeout=60) for _ in names) == names
            go.set()
            assert middleware.kill_now.wait(60), "the victim never had a second POST processed"
            procs["s0"].kill()
            procs["s0"].join(30)
            middleware.killed.set()
            emu.admin.expire_tokens()  # the survivors' next POSTs get 401 and log in again
            for name in names[1:]:
                procs[name].join(120)
                assert procs[name].exitcode == 0, (name, procs[name].exitcode)
        finally:
            middleware.killed.set()
            for p in procs.values():
                if p.is_alive():
                    p.kill()
                    p.join(10)

        # the fresh sender: the victim's claim comes back when its lease runs out
        drain = CAPIClient(storage, sender_config(base, "drain", ledger))
        deadline = time.monotonic() + LEASE + 60
        while storage.count_signals() != QueueCounts():
            assert time.monotonic() < deadline, storage.count_signals()
            drain.send_signals()
            time.sleep(0.2)
        drain.close()
        storage.close()
        middleware.wait_idle(DELAY + 30)
        inbox = emu.admin.signals()
        emulator_log = emu.admin.requests()["signals"]
        internal_errors = emu.admin.state()["internal_errors"]

    # 0 lost: every queued uuid reached the emulator, once in its inbox
    received = Counter(rec["signal"]["uuid"] for rec in inbox)
    assert set(received) == queued and set(received.values()) == {1}

    sent_uuids, outcome = read_ledgers(ledger)
    processed = [r for r in middleware.records if r["status"] == 200]
    assert emulator_log["200"] == len(processed)  # the emulator's own count of processed POSTs agrees
    assert all(r["rid"] in sent_uuids for r in processed)
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in processed:
        for uuid in sent_uuids[record["rid"]]:
            events[uuid].append(record)
    assert set(events) == queued

    # duplicates only from lost answers
    causes: Counter[str] = Counter()
    for uuid, seen in events.items():
        for earlier in seen[:-1]:
            got = outcome.get(earlier["rid"])
            assert got is None or got.startswith("error"), (uuid, earlier, got)  # its sender never got the 200
            if got is None:
                assert earlier["rid"].startswith("s0-"), (uuid, earlier)  # only the killed sender left no outcome
            causes[f"{earlier['fate']} -> {got or 'killed'}"] += 1
    killed_rid = next(r["rid"] for r in processed if r["fate"] == "kill")
    assert all(len(events[u]) >= 2 for u in sent_uuids[killed_rid])  # the killed POST's signals were sent again
    assert causes, "no answer was lost: the faults did not work"
    assert internal_errors == 0

    duplicates = sum(len(seen) - 1 for seen in events.values())
    print(
        f"\n{len(queued)} signals, {len(processed)} processed POSTs, {duplicates} duplicate receipts "
        f"({duplicates / len(queued):.1%}); causes: {dict(causes)}; emulator log: {emulator_log}"
    )


@pytest.mark.slow
def test_a_claim_whose_lease_runs_out_mid_send_is_not_sent_twice(tmp_path: Path) -> None:
    """A slow CAPI (1 s per POST) and a claim of 4 one-signal POSTs with a 1.5 s lease: the first sender is still
    sending when its lease runs out, and a second sender claims the rest. Each signal must still be POSTed once."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    config = EmulatorConfig(seed=1, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    with EmbeddedEmulator(config) as emu:
        storage = SQLStorage(f"sqlite:///{tmp_path / 'lease.db'}")
        options: dict[str, Any] = {
            "scenarios": [SCENARIO],
            "base_url": emu.base_url,
            "batch_size": 1,
            "claim_lease": 1.5,
            "send_metrics_after_login": False,
        }
        first = CAPIClient(storage, CAPIClientConfig(**options))
        first.add_signals([create_signal(f"192.0.2.{i}", SCENARIO, machine_id=MACHINES[0]) for i in range(8)])
        first.login(MACHINES[0])
        emu.admin.set_fault("signals", latency=1.0)
        reports: list[int] = []
        thread = threading.Thread(target=lambda: reports.append(int(first.send_signals())))
        thread.start()
        deadline = time.monotonic() + 60
        while emu.admin.requests().get("signals", {}).get("200", 0) < 2:  # 2 s in: the first claim's lease is over
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = CAPIClient(storage, CAPIClientConfig(**options))
        reports.append(int(second.send_signals()))
        thread.join(60)
        posts = emu.admin.requests()["signals"]["200"]
        first.close()
        second.close()
        storage.close()
    assert len(emu.state.signals) == 8  # nothing lost
    assert posts == 8, f"{posts} POSTs for 8 signals; senders reported {reports}"
