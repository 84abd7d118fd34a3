"""Benchmark: queue and push 10,000 signals, cscapi against the legacy cscapi 0.7.0, same data, same server, same run.

Both clients talk to one CAPI emulator running as its own server process on loopback (login rate limit off, so the
server never shares a GIL with either client), on SQLite and on PostgreSQL. The legacy package runs in its own
virtual environment (``bench/.venv-legacy``, created on first use from PyPI with pip: it pins httpx 0.26). Also
measures ``add_signals`` of one signal, as a web request would queue it, on SQLite.

Reproduce:  .venv/bin/python bench/signals.py            (add --count 2000 for a quick run, --no-postgres to skip PG)

Legacy and ours alternate ``--rounds`` times (default 3) per backend and the run of median total time is reported,
so a load change on a shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LEGACY_VENV = HERE / ".venv-legacy"
LEGACY_PY = LEGACY_VENV / "bin" / "python"
PG_ADMIN = os.environ.get("CSCAPI_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SCENARIO = "crowdsecurity/ssh-bf"


def ensure_legacy_venv() -> None:
    """Install legacy cscapi 0.7.0 (and psycopg for its PostgreSQL runs) into its own venv, once."""
    if LEGACY_PY.exists():
        return
    print("creating bench/.venv-legacy with cscapi==0.7.0 from PyPI ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LEGACY_VENV)], check=True)
    subprocess.run(
        [str(LEGACY_PY), "-m", "pip", "install", "-q", "cscapi==0.7.0", "psycopg[binary]"],
        check=True,
    )


def fresh_postgres_db() -> tuple[str, str]:
    """Create an empty PostgreSQL database; returns (url, name)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"cscapi_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), name


def drop_postgres_db(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def run_ours(base_url: str, db_url: str, count: int, single: int) -> dict[str, Any]:
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.sql_storage import SQLStorage
    from cscapi.utils import create_signal, generate_machine_id_from_key

    machine_id = generate_machine_id_from_key(key=f"bench-ours-{uuid.uuid4().hex}")
    storage = SQLStorage(db_url)
    config = CAPIClientConfig(scenarios=[SCENARIO], base_url=base_url, retry_delay=0.05)
    with CAPIClient(storage=storage, config=config) as client:
        signals = [
            create_signal(
                attacker_ip=f"198.51.{i // 250 % 256}.{i % 250 + 1}",
                scenario=SCENARIO,
                created_at="2026-11-21 10:20:46 +0000",
                machine_id=machine_id,
            )
            for i in range(count)
        ]
        started = time.perf_counter()
        client.add_signals(signals)
        added = time.perf_counter()
        report = client.send_signals()
        done = time.perf_counter()

        single_times = []
        for i in range(single):
            one = create_signal(
                attacker_ip=f"203.0.113.{i % 250 + 1}",
                scenario=SCENARIO,
                created_at="2026-11-21 10:20:46 +0000",
                machine_id=machine_id,
            )
            t0 = time.perf_counter()
            client.add_signals([one])
            single_times.append(time.perf_counter() - t0)
    storage.close()
    return {
        "machine_id": machine_id,
        "add_s": added - started,
        "send_s": done - added,
        "sent": int(report),
        "single_add_median_ms": statistics.median(single_times) * 1000 if single_times else None,
    }


def run_legacy(base_url: str, db_url: str, count: int, single: int, timeout: float) -> dict[str, Any]:
    completed = subprocess.run(
        [str(LEGACY_PY), str(HERE / "_legacy_signals.py"), base_url, db_url, str(count), str(single)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tempfile.gettempdir(),
        # the legacy venv's own cscapi 0.7.0, never ours: a PYTHONPATH pointing at this tree would shadow it
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"legacy run failed: {completed.stderr[-2000:]}")
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def received(admin: Any, machine_id: str) -> int:
    return len(admin.signals(machine_id=machine_id))


class EmulatorProcess:
    """``python -m cscapi.emulator`` on a free loopback port, waited for, stopped with SIGTERM."""

    def __init__(self) -> None:
        self.admin_token = uuid.uuid4().hex
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> EmulatorProcess:
        import socket

        import httpx

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cscapi.emulator",
                "--port",
                str(port),
                "--community-size",
                "0",
                "--no-login-rate-limit",
                "--admin-token",
                self.admin_token,
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.base_url + "admin/state", headers={"Authorization": f"Bearer {self.admin_token}"})
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the emulator did not start")
        from cscapi.emulator import EmulatorAdminClient

        self.admin = EmulatorAdminClient(self.base_url, self.admin_token)
        return self

    def __exit__(self, *exc: object) -> None:
        self.admin.close()
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median total time (add + send), with the median single-add time of all runs."""
    ordered = sorted(runs, key=lambda r: r["add_s"] + r["send_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    singles = [r["single_add_median_ms"] for r in runs if r["single_add_median_ms"] is not None]
    chosen["single_add_median_ms"] = statistics.median(singles) if singles else None
    chosen["received"] = min(r["received"] for r in runs)
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000, help="signals per run (default 10,000)")
    parser.add_argument("--single", type=int, default=500, help="single-signal adds to time (default 500)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--rounds", type=int, default=3, help="legacy and ours alternate this many times; medians (default 3)"
    )
    parser.add_argument("--legacy-timeout", type=float, default=900.0)
    args = parser.parse_args()

    ensure_legacy_venv()
    backends = ["sqlite"] if args.no_postgres else ["sqlite", "postgresql"]
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    with EmulatorProcess() as emu, tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            runs: dict[str, list[dict[str, Any]]] = {"legacy": [], "ours": []}
            for round_ in range(max(1, args.rounds)):
                # Alternate who goes first: a load change on a shared machine then hits both sides alike.
                for who in ("legacy", "ours") if round_ % 2 == 0 else ("ours", "legacy"):
                    if backend == "sqlite":
                        db_url, pg_name = f"sqlite:///{Path(tmp) / f'{who}-{round_}.db'}", None
                    else:
                        db_url, pg_name = fresh_postgres_db()
                    try:
                        print(f"[{backend}] round {round_ + 1}, {who}: {args.count} signals ...", flush=True)
                        single = args.single if backend == "sqlite" else 0
                        if who == "ours":
                            result = run_ours(emu.base_url, db_url, args.count, single)
                        else:
                            result = run_legacy(emu.base_url, db_url, args.count, single, args.legacy_timeout)
                        result["received"] = received(emu.admin, result["machine_id"])
                        if result["received"] != args.count:  # a run that lost or skipped signals measures nothing
                            raise SystemExit(
                                f"[{backend}] {who}: the emulator received {result['received']:,} of "
                                f"{args.count:,} signals: the figures of this run would be meaningless"
                            )
                        runs[who].append(result)
                    finally:
                        if pg_name:
                            drop_postgres_db(pg_name)
            rows.append((backend, _median(runs["legacy"]), _median(runs["ours"])))

    print()
    print(
        f"add_signals + send_signals of {args.count:,} signals to the loopback emulator (higher is better; "
        f"the run of median total of {max(1, args.rounds)} alternating rounds)"
    )
    print(f"{'backend':<11} {'client':<14} {'add s':>8} {'send s':>8} {'signals/s':>11} {'received':>9} {'ratio':>7}")
    for backend, legacy, ours in rows:
        legacy_rate = args.count / (legacy["add_s"] + legacy["send_s"])
        ours_rate = args.count / (ours["add_s"] + ours["send_s"])
        for name, res, rate in (("cscapi 0.7.0", legacy, legacy_rate), ("cscapi (ours)", ours, ours_rate)):
            ratio = rate / legacy_rate
            print(
                f"{backend:<11} {name:<14} {res['add_s']:>8.2f} {res['send_s']:>8.2f} {rate:>11,.0f} "
                f"{res['received']:>9,} {ratio:>6.1f}x"
            )
    sqlite_legacy, sqlite_ours = rows[0][1], rows[0][2]
    if sqlite_ours["single_add_median_ms"] is not None:
        print()
        print(
            "add_signals([one signal]) on SQLite, median over "
            f"{args.single}: ours {sqlite_ours['single_add_median_ms']:.3f} ms, "
            f"legacy {sqlite_legacy['single_add_median_ms']:.3f} ms "
            f"({sqlite_legacy['single_add_median_ms'] / sqlite_ours['single_add_median_ms']:.1f}x)"
        )
    print()
    print("reproduce: .venv/bin/python bench/signals.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
