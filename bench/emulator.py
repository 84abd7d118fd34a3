"""Emulator throughput over loopback, against a trivial Starlette baseline measured in the same run.

1. Signals ingested per second: 4 sender processes (httpx), batches of 250 signals per POST, each signal unique,
   against a real ``python -m cscapi.emulator`` on a free port. Baseline: a bare Starlette endpoint that reads the
   body and returns the same ``{"message":"OK"}``.
2. Decisions-stream responses per second for a 100,000-decision ``startup=true`` pull (4 concurrent clients).
   Baseline: a bare Starlette endpoint returning the very same bytes. Also: the time to build that answer
   without the snapshot cache (in-process).

Run: .venv/bin/python bench/emulator.py [--state FILE] [--batches 100] [--senders 4] [--decisions 100000] [--pulls 25]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

ADMIN = "bench-admin-token"
MID = "b" * 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def start_emulator(port: int, decisions: int, state: str | None) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "cscapi.emulator",
        "--port",
        str(port),
        "--community-size",
        str(decisions),
        "--admin-token",
        ADMIN,
        "--no-login-rate-limit",
        "--no-tailor-to-scenarios",  # the whole list for every client (they log in without scenarios)
        "--log-level",
        "warning",
    ]
    if state:
        cmd += ["--state", state]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    wait_up(f"http://127.0.0.1:{port}/admin/state", proc)
    return proc


def start_baseline(port: int, stream_file: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--serve-baseline", str(port), stream_file]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    wait_up(f"http://127.0.0.1:{port}/ping", proc)
    return proc


def serve_baseline(port: int, stream_file: str) -> None:
    """A trivial Starlette app: the same answers with no validation, no state."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    with open(stream_file, "rb") as fh:
        stream_bytes = fh.read()

    async def signals(request: Request) -> Response:
        await request.body()
        return Response(b'{"message":"OK"}', media_type="application/json")

    async def stream(request: Request) -> Response:
        return Response(stream_bytes, media_type="application/json")

    async def ping(request: Request) -> Response:
        return Response(b"ok")

    app = Starlette(
        routes=[
            Route("/v3/signals", signals, methods=["POST"]),
            Route("/v3/decisions/stream", stream),
            Route("/ping", ping),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def make_batches(count: int, seed: int) -> list[bytes]:
    out = []
    for b in range(count):
        batch = []
        for i in range(250):
            ip = f"198.18.{(b * 250 + i) // 250 % 256}.{i % 250 + 1}"
            batch.append(
                {
                    "scenario": "crowdsecurity/ssh-bf",
                    "scenario_hash": "4441dcff07020f66",
                    "scenario_version": "0.1",
                    "scenario_trust": "certified",
                    "message": f"Ip {ip} performed 'crowdsecurity/ssh-bf' (6 events)",
                    "source": {"scope": "ip", "value": ip, "ip": ip, "as_number": "64496", "cn": "FR"},
                    "start_at": "2026-11-21T22:28:19.195898403Z",
                    "stop_at": "2026-11-21T22:28:20.195898403Z",
                    "machine_id": MID,
                    "uuid": str(uuid.UUID(int=(seed << 64) + b * 250 + i, version=4)),
                    "decisions": [
                        {
                            "id": 0,
                            "duration": "4h",
                            "origin": "crowdsec",
                            "scenario": "crowdsecurity/ssh-bf",
                            "scope": "ip",
                            "value": ip,
                            "type": "ban",
                            "uuid": str(uuid.uuid4()),
                        }
                    ],
                }
            )
        out.append(json.dumps(batch).encode())
    return out


def sender(args: tuple[str, str, list[bytes], Any, Any]) -> int:
    base_url, token, batches, ready, go = args
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ok = 0
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        client.get("ping")  # open the connection before the clock starts
        ready.put(1)
        go.wait()
        for body in batches:
            r = client.post("v3/signals", content=body)
            if r.status_code == 200:
                ok += 250
    return ok


def run_senders(base_url: str, token: str, senders: int, batches: int, seed: int) -> tuple[float, int]:
    ctx = multiprocessing.get_context("fork")
    manager = ctx.Manager()
    ready, go = manager.Queue(), manager.Event()
    work = [(base_url, token, make_batches(batches, seed * 100 + n), ready, go) for n in range(senders)]
    with ctx.Pool(senders) as pool:
        result = pool.map_async(sender, work)
        for _ in range(senders):
            ready.get(timeout=60)
        t0 = time.perf_counter()
        go.set()
        counts = result.get(timeout=600)
        elapsed = time.perf_counter() - t0
    manager.shutdown()
    return elapsed, sum(counts)


def puller(args: tuple[str, str, int, Any, Any]) -> int:
    base_url, token, pulls, ready, go = args
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        client.get("v3/decisions/stream", params={"startup": "true"})  # warm: the emulator builds its snapshot once
        ready.put(1)
        go.wait()
        size = 0
        for _ in range(pulls):
            r = client.get("v3/decisions/stream", params={"startup": "true"})
            r.raise_for_status()
            size = len(r.content)
    return size


def run_pullers(base_url: str, token: str, clients: int, pulls: int) -> tuple[float, int]:
    ctx = multiprocessing.get_context("fork")
    manager = ctx.Manager()
    ready, go = manager.Queue(), manager.Event()
    with ctx.Pool(clients) as pool:
        result = pool.map_async(puller, [(base_url, token, pulls, ready, go)] * clients)
        for _ in range(clients):
            ready.get(timeout=60)
        t0 = time.perf_counter()
        go.set()
        sizes = result.get(timeout=600)
        elapsed = time.perf_counter() - t0
    manager.shutdown()
    return elapsed, sizes[0]


def login(base_url: str) -> str:
    with httpx.Client(base_url=base_url) as c:
        c.post("v3/watchers", json={"machine_id": MID, "password": "pw"})
        return str(c.post("v3/watchers/login", json={"machine_id": MID, "password": "pw"}).json()["token"])


def build_cost(decisions: int, repeat: int = 3) -> float:
    """Seconds to build one uncached 100k startup answer, in-process."""
    from cscapi.emulator import EmulatorConfig
    from cscapi.emulator.state import EmulatorState

    state = EmulatorState(EmulatorConfig(community_size=decisions, snapshot_cache=False, tailor_to_scenarios=False))
    m = state.register(MID, "pw")
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        state.stream_v3(m, startup=True, community_pull=True, additional_pull=True, base_url="http://x/")
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-baseline":
        serve_baseline(int(sys.argv[2]), sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--batches", type=int, default=100, help="batches of 250 per sender")
    p.add_argument("--decisions", type=int, default=100_000)
    p.add_argument("--pullers", type=int, default=4)
    p.add_argument("--pulls", type=int, default=25, help="startup pulls per puller")
    p.add_argument("--state", metavar="FILE", help="run the emulator with SQLite state in FILE (must not exist)")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(
        f"command: {sys.executable} bench/emulator.py --senders {args.senders} --batches {args.batches} "
        f"--decisions {args.decisions} --pullers {args.pullers} --pulls {args.pulls}"
        + (f" --state {args.state}" if args.state else "")
    )

    emu_port, base_port = free_port(), free_port()
    emu = start_emulator(emu_port, args.decisions, args.state)
    emu_url = f"http://127.0.0.1:{emu_port}/"
    try:
        token = login(emu_url)
        with httpx.Client(base_url=emu_url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            stream_bytes = c.get("v3/decisions/stream", params={"startup": "true"}).content
        stream_file = f"/tmp/cscapi-bench-stream-{os.getpid()}.json"
        with open(stream_file, "wb") as fh:
            fh.write(stream_bytes)
        base = start_baseline(base_port, stream_file)
        base_url = f"http://127.0.0.1:{base_port}/"
        try:
            # signals
            e_time, e_ok = run_senders(emu_url, token, args.senders, args.batches, seed=1)
            b_time, b_ok = run_senders(base_url, token, args.senders, args.batches, seed=2)
            with httpx.Client(base_url=emu_url, headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
                recorded = admin.get("admin/state").json()["signals"]
            e_rate, b_rate = e_ok / e_time, b_ok / b_time
            print(f"\nsignals ingest ({args.senders} senders x {args.batches} POSTs x 250 signals, unique uuids)")
            print(f"  emulator : {e_rate:10,.0f} signals/s  ({e_ok:,} accepted, {recorded:,} recorded, {e_time:.2f} s)")
            print(f"  baseline : {b_rate:10,.0f} signals/s  (bare Starlette endpoint reading the body)")
            print(
                f"  ratio    : {e_rate / b_rate:10.2f} x baseline; target >= 5,000 signals/s: "
                f"{'met' if e_rate >= 5000 else 'NOT met'}"
            )
            # stream
            e_time, size = run_pullers(emu_url, token, args.pullers, args.pulls)
            b_time, _ = run_pullers(base_url, token, args.pullers, args.pulls)
            n = args.pullers * args.pulls
            print(
                f"\ndecisions stream, startup=true, {args.decisions:,} decisions ({size / 1e6:.1f} MB per answer, "
                f"{args.pullers} clients x {args.pulls} pulls)"
            )
            print(f"  emulator : {n / e_time:10.1f} responses/s  ({n / e_time * size / 1e6:.0f} MB/s)")
            print(f"  baseline : {n / b_time:10.1f} responses/s  (bare Starlette endpoint returning the same bytes)")
            print(
                f"  ratio    : {b_time / e_time:10.2f} x baseline (steady state: the snapshot is built during warm-up)"
            )
        finally:
            base.terminate()
            base.wait(10)
            os.unlink(stream_file)
    finally:
        emu.terminate()
        emu.wait(10)
    cost = build_cost(args.decisions)
    print(
        f"\nuncached build of one {args.decisions:,}-decision startup answer (in-process): {cost * 1000:.0f} ms "
        f"(cached per list version for up to snapshot_max_age = 5 s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
