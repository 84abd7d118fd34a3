"""Quick start 1: share signals. Queue what your software detected, push it to CAPI in batches.

Run:  python examples/share_signals.py            (against an embedded CAPI emulator)
      python examples/share_signals.py --base-url https://api.dev.crowdsec.net/
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _capi import arguments, capi_url

from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal


def main() -> None:
    args = arguments(__doc__ or "")
    with capi_url(args.base_url) as (base_url, emulator), tempfile.TemporaryDirectory() as tmp:
        # The storage keeps the signal queue and the machine's credentials (SQLite here; PostgreSQL/MySQL work too).
        storage = SQLStorage(f"sqlite:///{Path(tmp) / 'cscapi.db'}")
        config = CAPIClientConfig(
            scenarios=["crowdsecurity/ssh-bf", "crowdsecurity/http-probing"],  # what your software detects
            base_url=base_url,
            user_agent_prefix="myapp",  # identifies your integration to CrowdSec
        )
        with CAPIClient(storage, config) as client:
            machine_id = client.default_machine_id()  # registered on first use, reused afterwards
            signals = [
                # A decision signal: you banned 203.0.113.45 for 4 hours after an SSH brute force.
                create_signal(
                    "203.0.113.45", "crowdsecurity/ssh-bf", None, machine_id, decision_type="ban", duration="4h"
                ),
                # A whisper: a behaviour worth sharing, without a local decision.
                create_signal("2001:db8::bad:1", "crowdsecurity/http-probing", None, machine_id),
            ]
            queued = client.add_signals(signals)  # validated, then stored in one transaction
            report = client.send_signals()  # <= 250 per POST, marked sent only after CAPI accepted them
            print(f"machine {machine_id}: queued {queued}, sent {report.sent} in {report.batches} request(s)")
            if emulator is not None:
                received = emulator.admin.signals(machine_id=machine_id)
                print(f"the emulator received: {sorted(r['signal']['source']['value'] for r in received)}")
        storage.close()


if __name__ == "__main__":
    main()
