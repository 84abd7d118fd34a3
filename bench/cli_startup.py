"""How long `cscapi --help` and `cscapi <cmd> --help` take, against a bare `python -c pass` baseline.

The target is under 0.3 s per help (issue 5). Each figure is the median of N fresh processes (wall clock), so
interpreter start-up is included, as a user sees it. Also prints the heaviest imports of `cscapi --help`
(from `python -X importtime`) and checks that no heavy module was loaded.

Reproduce:  .venv/bin/python bench/cli_startup.py [N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
PYTHON = sys.executable
CSCAPI = str(Path(PYTHON).with_name("cscapi"))
CASES = [
    ("python -c pass (baseline)", [PYTHON, "-c", "pass"]),
    ("python -c 'import cscapi'", [PYTHON, "-c", "import cscapi"]),
    ("cscapi --help", [CSCAPI, "--help"]),
    ("cscapi signals add --help", [CSCAPI, "signals", "add", "--help"]),
    ("cscapi decisions check --help", [CSCAPI, "decisions", "check", "--help"]),
    ("cscapi run --help", [CSCAPI, "run", "--help"]),
    ("cscapi demo --help", [CSCAPI, "demo", "--help"]),
    ("cscapi emulator --help", [CSCAPI, "emulator", "--help"]),
    ("cscapi config show (a real command)", [CSCAPI, "config", "show"]),
]
HEAVY = ("httpx", "sqlalchemy", "rich", "starlette", "uvicorn", "redis", "psycopg", "cryptography")


def median_seconds(argv: list[str]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    print(f"median of {RUNS} runs each (wall clock, new process every time)")
    baseline = None
    for label, argv in CASES:
        seconds = median_seconds(argv)
        baseline = baseline or seconds
        verdict = ""
        if label.endswith("--help"):  # the 0.3 s target is for help; `config show` is listed as a real command
            verdict = "  OK (< 0.3 s)" if seconds < 0.3 else "  SLOW (>= 0.3 s)"
        print(f"  {label:36s} {seconds * 1000:7.1f} ms  x{seconds / baseline:5.1f} baseline{verdict}")

    done = subprocess.run([PYTHON, "-X", "importtime", CSCAPI, "--help"], capture_output=True, text=True, check=False)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    print("heaviest cumulative imports of `cscapi --help` (microseconds):")
    for micros, name in rows[:8]:
        print(f"  {micros:8d}  {name.strip()}")
    loaded = sorted({name.strip() for _, name in rows} & set(HEAVY))
    print(f"heavy modules imported at help time: {loaded or 'none'}")


if __name__ == "__main__":
    main()
