"""Event-loop lag of ``AsyncCAPIClient.get_decisions(startup=True)`` on a large decisions stream (issue 2).

A 5 ms ticker runs on the loop while the async client pulls a startup stream of ``--decisions`` community decisions
(gzip-compressed by the emulator, ~10 MB decompressed for 100,000) from an ``EmbeddedEmulator`` running in a process
of its own (as a remote CAPI is: its JSON encoding does not compete for this process's GIL; ``--in-process`` to share
it). Prints, for each way of reading the answer, the max and p99 lag of the ticker during the call, the duration, and
the ratio against the baseline measured in the same run:

* ``before``: the previous code path, rebuilt in this script: ``httpx`` reads and decompresses the answer on the
  loop, then one ``json.loads`` in a worker thread with the garbage collector running (the baseline);
* ``streamed read``: only the transport change (raw chunks on the loop, join + decompression in a worker thread);
* ``after``: as shipped: streamed read, plus the JSON parsed in short pieces and the collector paused while the
  stream is parsed (a generation-2 pass over the fresh objects held the GIL 30-60 ms).

The ticker keeps running 0.3 s after the call, to count the collector's aftermath too.

Reproduce: ``.venv/bin/python bench/client_loop_lag.py [--gzip]`` (``--gzip``: the emulator compresses its answers as
CAPI does, which exercises the off-loop decompression; ``--decisions 100000 --rounds 3``). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PERIOD = 0.005
PIECEWISE = 256 * 1024


def _emulator(size: int, compress: bool) -> Any:
    """The emulator; with ``compress``, its answers gzipped as CAPI's are (starlette's GZipMiddleware)."""
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    config = EmulatorConfig(
        community_size=size, tailor_to_scenarios=False, login_rate_limit=LoginRateLimit(enabled=False)
    )
    emu = EmbeddedEmulator(config)  # tailor_to_scenarios=False: the whole list, whatever the client declares
    if compress:
        from starlette.middleware.gzip import GZipMiddleware

        emu.app = GZipMiddleware(emu.app, minimum_size=1024, compresslevel=6)  # type: ignore[assignment]
    return emu


def _serve_in_child(size: int, compress: bool, conn: Any) -> None:
    with _emulator(size, compress) as emu:
        conn.send(emu.base_url)
        conn.recv()  # until the parent is done


def _whole_body_transport(settings: Any) -> Any:
    """The transport as it was before: ``client.send`` reads and decompresses the whole answer on the loop."""
    import httpx

    from cscapi import transport as t

    class WholeBody(t.AsyncTransport):
        async def send(self, request: Any) -> Any:
            client = self.client
            built = t._build(client, request)
            try:
                resp = await client.send(built, follow_redirects=request.follow_redirects)
            except httpx.HTTPError as exc:
                return t._failure(exc, request.url)
            return t._response(resp)

    return WholeBody(settings)


async def _ticks(out: list[float]) -> None:
    while True:
        start = time.perf_counter()
        await asyncio.sleep(PERIOD)
        out.append((time.perf_counter() - start - PERIOD) * 1000)


async def _measure(base_url: str, db: Path, mode: str, rounds: int) -> dict[str, Any]:
    from cscapi.aio import AsyncCAPIClient
    from cscapi.client import CAPIClientConfig
    from cscapi.sql_storage import SQLStorage

    storage = SQLStorage(f"sqlite:///{db}")
    config = CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=base_url)
    client = AsyncCAPIClient(storage, config)
    import cscapi._core as core
    import cscapi.protocol.http as http
    from cscapi.protocol.responses import parse_stream

    # "before": the previous code path, rebuilt here: whole body read and decompressed on the loop, one json.loads,
    # collector running; "streamed read": only the transport change; "after": everything as shipped
    if mode in ("before", "streamed read"):
        http.PIECEWISE_JSON_BYTES = 1 << 62
        setattr(core, "parse_stream", parse_stream.__wrapped__)  # type: ignore[attr-defined]  # noqa: B010
    else:
        http.PIECEWISE_JSON_BYTES = PIECEWISE
        setattr(core, "parse_stream", parse_stream)  # noqa: B010
    if mode == "before":
        client._transport = _whole_body_transport(config.transport_settings())
    maxes: list[float] = []
    p99s: list[float] = []
    seconds: list[float] = []
    decisions = 0
    try:
        machine_id = await client.default_machine_id()
        await client.login(machine_id)
        await client.get_decisions(machine_id, startup=True)  # warm: connection, imports, emulator snapshot
        for _ in range(rounds):
            lags: list[float] = []
            ticker = asyncio.create_task(_ticks(lags))
            await asyncio.sleep(0.05)
            lags.clear()
            t = time.perf_counter()
            stream = await client.get_decisions(machine_id, startup=True)
            seconds.append(time.perf_counter() - t)
            await asyncio.sleep(0.3)  # and the aftermath: a collector pass over what the call allocated
            ticker.cancel()
            decisions = len(stream.new)
            maxes.append(max(lags, default=0.0))
            p99s.append(statistics.quantiles(lags, n=100, method="inclusive")[98] if len(lags) >= 2 else maxes[-1])
    finally:
        await client.close()
        storage.close()
    return {
        "max_ms": statistics.median(maxes),
        "worst_ms": max(maxes),
        "p99_ms": statistics.median(p99s),
        "seconds": statistics.median(seconds),
        "decisions": decisions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gzip", action="store_true", help="the emulator gzips its answers, as CAPI does")
    parser.add_argument("--in-process", action="store_true", help="run the emulator in this process (shares the GIL)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))

    print(f"python {sys.version.split()[0]} on {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    conn: Any = None
    server: Any = None
    emu: Any = None
    if args.in_process:
        emu = _emulator(args.decisions, args.gzip).__enter__()
        base_url = emu.base_url
    else:
        ctx = multiprocessing.get_context("spawn")
        conn, child = ctx.Pipe()
        server = ctx.Process(target=_serve_in_child, args=(args.decisions, args.gzip, child), daemon=True)
        server.start()
        base_url = conn.recv()
    try:
        results: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, mode in enumerate(("before", "streamed read", "after")):
                results[mode] = asyncio.run(_measure(base_url, Path(tmp) / f"{i}.db", mode, args.rounds))
    finally:
        if emu is not None:
            emu.__exit__(None, None, None)
        if conn is not None:
            conn.send("done")
            server.join(10)
    where = "in this process" if args.in_process else "in its own process"
    where += ", gzipped answers" if args.gzip else ", uncompressed answers"
    base = results["before"]
    print(
        f"get_decisions(startup=True) of {base['decisions']:,} decisions from the emulator {where}, "
        f"5 ms ticker, median of {args.rounds} rounds:"
    )
    for mode, r in results.items():
        ratio = base["max_ms"] / r["max_ms"] if r["max_ms"] > 0 else float("inf")
        print(
            f"  {mode:<13}: max loop lag {r['max_ms']:6.1f} ms (worst {r['worst_ms']:6.1f}), "
            f"p99 {r['p99_ms']:5.1f} ms, call {r['seconds']:.2f} s; max lag {ratio:.1f}x lower than before"
        )


if __name__ == "__main__":
    main()
