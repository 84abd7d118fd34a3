"""Measure legacy cscapi 0.7.0 (run by bench/signals.py inside bench/.venv-legacy; never imported by our package).

Prints one JSON line: {"add_s", "send_s", "sent", "single_add_median_ms"}. The client's URL is pointed at the
loopback emulator before any request is made: nothing leaves the machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid

from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal, generate_machine_id_from_key


def main() -> int:
    base_url, db_url, count, single = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if not base_url.startswith(("http://127.", "http://localhost")):
        raise SystemExit("refusing a non-loopback URL")
    storage = SQLStorage(connection_string=db_url)
    client = CAPIClient(storage=storage, config=CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], retry_delay=0))
    client.url = base_url.rstrip("/") + "/v3"  # the emulator, not api.dev.crowdsec.net
    machine_id = generate_machine_id_from_key(key=f"bench-legacy-{uuid.uuid4().hex}")
    signals = [
        create_signal(
            attacker_ip=f"198.51.{i // 250 % 256}.{i % 250 + 1}",
            scenario="crowdsecurity/ssh-bf",
            created_at="2026-11-21 10:20:46 +0000",
            machine_id=machine_id,
        )
        for i in range(count)
    ]
    started = time.perf_counter()
    client.add_signals(signals)
    added = time.perf_counter()
    sent = client.send_signals()
    done = time.perf_counter()

    single_times = []
    for i in range(single):
        one = create_signal(
            attacker_ip=f"203.0.113.{i % 250 + 1}",
            scenario="crowdsecurity/ssh-bf",
            created_at="2026-11-21 10:20:46 +0000",
            machine_id=machine_id,
        )
        t0 = time.perf_counter()
        client.add_signals([one])
        single_times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "machine_id": machine_id,
                "add_s": added - started,
                "send_s": done - added,
                "sent": sent,
                "single_add_median_ms": statistics.median(single_times) * 1000 if single_times else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
