"""Memory of ``CAPIClient.get_decisions(startup=True)`` on a large stream: the dict view costs no second copy (issue 8).

Since ``DecisionStream`` became a ``dict`` of the JSON as received (legacy 0.7.0 fidelity), the stream holds the parsed
JSON's own lists beside its typed reading. This measures, with ``tracemalloc``, the memory a returned stream keeps
alive and the peak during the call (and, untraced, the call's duration), for a startup stream of ``--decisions``
community decisions served by an ``EmbeddedEmulator`` in a process of its own (so its allocations are not counted):

* ``before``: the previous ``DecisionStream`` (a dataclass keeping the parsed JSON in ``raw``), rebuilt in this script;
* ``after``: as shipped (a ``dict`` subclass sharing the parsed JSON);
* ``typed only``: the previous class with the JSON dropped (what keeping no raw JSON at all would cost), for scale.

Reproduce: ``.venv/bin/python bench/decisions_memory.py [--decisions 100000 --rounds 3]``. Loopback only.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import multiprocessing
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _serve_in_child(size: int, conn: Any) -> None:
    from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit

    config = EmulatorConfig(
        community_size=size, tailor_to_scenarios=False, login_rate_limit=LoginRateLimit(enabled=False)
    )
    with EmbeddedEmulator(config) as emu:
        conn.send(emu.base_url)
        conn.recv()  # until the parent is done


def _old_class(keep_raw: bool) -> Any:
    """The ``DecisionStream`` dataclass as it was before (with or without its ``raw`` JSON)."""

    @dataclasses.dataclass
    class OldDecisionStream:
        new: list[Any] = dataclasses.field(default_factory=list)
        deleted: list[Any] = dataclasses.field(default_factory=list)
        blocklists: list[Any] = dataclasses.field(default_factory=list)
        allowlists: list[Any] = dataclasses.field(default_factory=list)
        skipped: int = 0
        startup: bool = False
        raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

        def __post_init__(self) -> None:
            if not keep_raw:
                self.raw = {}

    return OldDecisionStream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))

    import cscapi.protocol.responses as responses
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.models import DecisionStream
    from cscapi.sql_storage import SQLStorage

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve_in_child, args=(args.decisions, child), daemon=True)
    server.start()
    base_url = parent.recv()
    modes = {"before": _old_class(True), "after": DecisionStream, "typed only": _old_class(False)}
    results: dict[str, dict[str, list[float]]] = {m: {"kept": [], "peak": [], "seconds": []} for m in modes}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            storage = SQLStorage(f"sqlite:///{Path(tmp) / 'bench.db'}")
            config = CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=base_url)
            with CAPIClient(storage, config) as client:
                machine_id = client.default_machine_id()
                count = len(client.get_decisions(machine_id, startup=True).new)  # warm: snapshot, connection
                for _ in range(args.rounds):
                    for mode, cls in modes.items():
                        setattr(responses, "DecisionStream", cls)  # noqa: B010 - parse_stream builds this class
                        gc.collect()
                        started = time.perf_counter()  # timed on its own: tracemalloc slows allocations down
                        assert len(client.get_decisions(machine_id, startup=True).new) == count
                        results[mode]["seconds"].append(time.perf_counter() - started)
                        gc.collect()
                        tracemalloc.start()
                        stream = client.get_decisions(machine_id, startup=True)
                        gc.collect()
                        kept, peak = tracemalloc.get_traced_memory()
                        tracemalloc.stop()
                        assert len(stream.new) == count
                        del stream
                        results[mode]["kept"].append(kept / 1e6)
                        results[mode]["peak"].append(peak / 1e6)
                setattr(responses, "DecisionStream", DecisionStream)  # noqa: B010
            storage.close()
    finally:
        parent.send("done")
        server.join(timeout=30)
    print(f"get_decisions(startup=True) of {count:,} decisions, median of {args.rounds} rounds (tracemalloc, MB)")
    base = statistics.median(results["before"]["kept"])
    for mode, got in results.items():
        kept, peak, took = (statistics.median(got[k]) for k in ("kept", "peak", "seconds"))
        print(
            f"{mode:>10}: kept alive {kept:7.1f}  peak during the call {peak:7.1f}  kept / before {kept / base:.3f}  "
            f"call {took:.2f} s"
        )


if __name__ == "__main__":
    main()
