"""Benchmark of the LAPI decision source (issue 12), each figure next to a baseline measured in the same run.

It starts its own private CrowdSec LAPI (tests/lapi_support.py: Debian's crowdsec package, own config, SQLite
database and loopback port, no CAPI, no network) and imports N decisions with ``cscli decisions import``. Measures:

* stream mode: a startup refresh of the N decisions (``RemediationEngine(LapiClient(...))``, memory store), its time
  and its memory (tracemalloc peak during a second, identical refresh; retained after it), next to the same refresh
  of the same N values from the embedded CAPI emulator (``CAPIClient``) as the baseline, and the ratios;
* live mode: a cache hit (``get_ip_remediation`` of an IP already asked), per call, median of batches of 1,000, next
  to a bare ``dict.get`` on a dict of N entries; a miss (``lookup_ip_remediation`` of a new IP: one
  ``GET /v1/decisions?ip=``), median and p95, for banned and for clean IPs, next to a bare ``httpx`` GET of the same
  LAPI URL with the same key.

Reproduce: ``.venv/bin/python bench/lapi.py`` (``--decisions 100000``, ``--misses 300``; ``--help``). Needs the
crowdsec package (``apt-get install crowdsec``). Nothing leaves loopback. Prints one line per figure and a JSON
summary at the end.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # lapi_support: start a private LAPI
BATCH = 1000


def make_ips(count: int, seed: int = 12) -> list[str]:
    """``count`` distinct public-looking IPv4 addresses (deterministic)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < count:
        ip = ipaddress.IPv4Address(rng.randrange(0x01000000, 0xDF000000))
        if ip.is_global:
            seen.add(str(ip))
    return sorted(seen)


def timed(func: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    result = func()
    return result, time.perf_counter() - t


def traced(func: Callable[[], Any]) -> tuple[Any, float, float]:
    """``func()``, its tracemalloc peak and what it still holds afterwards (MB)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = func()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak / 1e6, current / 1e6


def per_call_ns(call: Callable[[str], Any], keys: list[str], batches: int) -> float:
    """Median over ``batches`` batches of ``BATCH`` calls of the per-call time, in ns."""
    out = []
    for b in range(batches):
        chunk = [keys[(b * BATCH + i) % len(keys)] for i in range(BATCH)]
        t = time.perf_counter_ns()
        for key in chunk:
            call(key)
        out.append((time.perf_counter_ns() - t) / BATCH)
    return statistics.median(out)


def latencies_ms(call: Callable[[str], Any], keys: list[str]) -> tuple[float, float]:
    """Median and p95 of one call per key, in ms."""
    times = []
    for key in keys:
        t = time.perf_counter()
        call(key)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)]


def lapi_refresh(url: str, key: str) -> tuple[Any, Any]:
    from cscapi.lapi import LapiClient
    from cscapi.remediation import RemediationEngine

    client = LapiClient(url, api_key=key, timeout=120, deadline=600)
    engine = RemediationEngine(client, store="memory://")
    report = engine.refresh_decisions()
    return (client, engine), report


def capi_refresh(base_url: str, tmp: Path, name: str) -> tuple[Any, Any]:
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.remediation import RemediationEngine
    from cscapi.sql_storage import SQLStorage

    storage = SQLStorage(f"sqlite:///{tmp / (name + '.db')}")
    client = CAPIClient(storage, CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=base_url))
    machine_id = client.default_machine_id()
    client.login(machine_id)
    engine = RemediationEngine(client, store="memory://", machine_id=machine_id)
    t = time.perf_counter()
    report = engine.refresh_decisions()
    seconds = time.perf_counter() - t
    return (client, engine, storage, seconds), report


def close_all(*things: Any) -> None:
    for thing in things:
        if thing is not None:
            thing.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=100_000, help="decisions imported into the LAPI")
    parser.add_argument("--misses", type=int, default=300, help="live-mode misses timed (banned and clean each)")
    parser.add_argument("--hit-batches", type=int, default=300, help="batches of 1,000 cache hits")
    args = parser.parse_args()

    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig
    from lapi_support import LapiUnavailable, start_lapi

    results: dict[str, Any] = {"decisions": args.decisions}
    ips = make_ips(args.decisions + args.misses)
    banned, clean = ips[: args.decisions], ips[args.decisions :]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            lapi = start_lapi(tmp / "lapi")
        except LapiUnavailable as exc:
            sys.exit(f"cannot start a private CrowdSec LAPI: {exc}")
        try:
            csv = tmp / "decisions.csv"
            csv.write_text("value\n" + "\n".join(banned) + "\n")
            _, seconds = timed(lambda: lapi.import_decisions(csv, duration="24h"))
            print(f"cscli decisions import of {args.decisions:,} decisions: {seconds:.1f} s (setup, not cscapi)")
            key = lapi.add_bouncer()

            # ---- stream mode: startup refresh, LAPI vs the CAPI emulator with the same values -------------------
            import httpx

            raw_key = lapi.add_bouncer()
            raw, raw_s = timed(
                lambda: httpx.get(
                    lapi.base_url + "v1/decisions/stream",
                    params={"startup": "true"},
                    headers={"X-Api-Key": raw_key},
                    timeout=600,
                ).json()
            )
            assert len(raw["new"]) == args.decisions, len(raw["new"])
            del raw
            (pair, report), lapi_s = timed(lambda: lapi_refresh(lapi.base_url, key))
            assert report.new == args.decisions, (report.new, report.skipped_reasons)
            close_all(pair[1], pair[0])
            (pair, report), lapi_peak, lapi_kept = traced(lambda: lapi_refresh(lapi.base_url, key))
            engine = pair[1]
            _, delta_s = timed(engine.refresh_decisions)  # nothing changed: an empty delta
            close_all(engine, pair[0])
            del pair, engine

            community = tmp / "community.txt"
            community.write_text("".join(f"{ip} crowdsecurity/ssh-bf 24h\n" for ip in banned))
            config = EmulatorConfig(seed=1, community_file=str(community))
            with EmbeddedEmulator(config) as emu:
                (capi, report), _ = timed(lambda: capi_refresh(emu.base_url, tmp, "a"))
                capi_s = capi[3]
                assert report.new == args.decisions, report.new
                close_all(capi[1], capi[0], capi[2])
                (capi, _), capi_peak, capi_kept = traced(lambda: capi_refresh(emu.base_url, tmp, "b"))
                close_all(capi[1], capi[0], capi[2])
                del capi
            print(
                f"stream startup refresh of {args.decisions:,}: LAPI {lapi_s:.2f} s vs CAPI emulator {capi_s:.2f} s "
                f"(x{lapi_s / capi_s:.2f}); the bare httpx GET + json of the same LAPI stream {raw_s:.2f} s "
                f"(x{lapi_s / raw_s:.2f}); empty delta {delta_s * 1000:.0f} ms"
            )
            print(
                f"  memory (tracemalloc): LAPI peak {lapi_peak:.0f} MB, held {lapi_kept:.0f} MB vs CAPI peak "
                f"{capi_peak:.0f} MB, held {capi_kept:.0f} MB (x{lapi_peak / capi_peak:.2f} peak)"
            )
            results.update(
                lapi_refresh_s=round(lapi_s, 3),
                capi_refresh_s=round(capi_s, 3),
                refresh_ratio=round(lapi_s / capi_s, 2),
                bare_stream_get_s=round(raw_s, 3),
                refresh_vs_bare_get=round(lapi_s / raw_s, 2),
                lapi_empty_delta_ms=round(delta_s * 1000, 1),
                lapi_peak_mb=round(lapi_peak, 1),
                lapi_held_mb=round(lapi_kept, 1),
                capi_peak_mb=round(capi_peak, 1),
                capi_held_mb=round(capi_kept, 1),
            )

            # ---- live mode: hits (in-process cache) and misses (one LAPI query each) ----------------------------
            from cscapi.lapi import LapiClient
            from cscapi.remediation import RemediationEngine

            with LapiClient(lapi.base_url, api_key=key, mode="live", bad_ip_cache_duration=600) as live:
                engine = RemediationEngine(live, store="memory://")
                rng = random.Random(3)
                asked_banned = rng.sample(banned, args.misses)
                ban_med, ban_p95 = latencies_ms(engine.lookup_ip_remediation, asked_banned)
                clean_med, clean_p95 = latencies_ms(engine.lookup_ip_remediation, clean)
                assert engine.get_ip_remediation(asked_banned[0]).remediation == "ban"
                assert engine.get_ip_remediation(clean[0]).remediation == "bypass"
                assert engine.live.failures == 0
                hit_ns = per_call_ns(engine.get_ip_remediation, asked_banned + clean, args.hit_batches)
                engine.close()
            table = dict.fromkeys(banned, "ban")
            dict_ns = per_call_ns(table.get, asked_banned + clean, args.hit_batches)
            headers = {"X-Api-Key": key}
            with httpx.Client(base_url=lapi.base_url, headers=headers) as bare:
                url = "v1/decisions"
                raw_med, raw_p95 = latencies_ms(
                    lambda ip: bare.get(url, params={"ip": ip}).json(), rng.sample(banned, args.misses)
                )
            print(f"live hit (cached): {hit_ns:.0f} ns/call vs dict.get {dict_ns:.0f} ns (x{hit_ns / dict_ns:.1f})")
            print(
                f"live miss, banned IP: median {ban_med:.2f} ms, p95 {ban_p95:.2f} ms; clean IP: median "
                f"{clean_med:.2f} ms, p95 {clean_p95:.2f} ms; bare httpx GET: median {raw_med:.2f} ms, p95 "
                f"{raw_p95:.2f} ms (x{ban_med / raw_med:.2f} median)"
            )
            results.update(
                live_hit_ns=round(hit_ns),
                dict_get_ns=round(dict_ns),
                live_miss_banned_ms=[round(ban_med, 2), round(ban_p95, 2)],
                live_miss_clean_ms=[round(clean_med, 2), round(clean_p95, 2)],
                bare_get_ms=[round(raw_med, 2), round(raw_p95, 2)],
                miss_ratio=round(ban_med / raw_med, 2),
            )
        finally:
            lapi.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
