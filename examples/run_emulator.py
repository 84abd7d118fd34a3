"""Quick start 4: run the CAPI emulator. A local CAPI for development and tests, with an admin API to script it.

Run:  python examples/run_emulator.py             (start, script, talk to it, stop)
      python examples/run_emulator.py --serve     (keep serving on http://127.0.0.1:8081/, as `cscapi emulator` does)
"""

from __future__ import annotations

import argparse

from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.emulator import EmbeddedEmulator, EmulatorConfig
from cscapi.sql_storage import SQLStorage
from cscapi.utils import create_signal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl-C on port 8081")
    args = parser.parse_args()
    config = EmulatorConfig(seed=42, community_size=200, attachment_keys=["examplekey1"])
    if args.serve:
        from cscapi.emulator.server import serve

        serve(config, "127.0.0.1", 8081)
        return
    with EmbeddedEmulator(config) as emu:  # a free loopback port, in a background thread
        print(f"emulator on {emu.base_url}")
        # The admin API scripts what CAPI would do: publish lists, add decisions, inject faults.
        emu.admin.publish_allowlist("office", ["192.0.2.0/28"])
        emu.admin.set_fault("signals", error_rate=1.0, error_status=503, remaining=1)  # the next POST fails once
        storage = SQLStorage("sqlite://")
        config = CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=emu.base_url, retry_delay=0.2)
        with CAPIClient(storage, config) as c:
            machine_id = c.default_machine_id()
            stream = c.get_decisions(machine_id, startup=True)
            allowlists = [a.name for a in stream.allowlists]
            print(f"decisions stream: {len(stream.new)} community decisions, allowlists {allowlists}")
            c.add_signals([create_signal("203.0.113.5", "crowdsecurity/ssh-bf", None, machine_id)])
            report = c.send_signals()  # the first POST gets the injected 503; the client retries with backoff
            statuses = emu.admin.requests()["signals"]  # e.g. {"503": 1, "200": 1}
            print(f"signals sent: {report.sent}; the emulator answered {statuses}")
            outcome = c.enroll_machines([machine_id], "example", "examplekey1", ["demo"])[0]
            print(f"enrollment: {outcome.status}")
        print(f"requests served: {sum(sum(v.values()) for v in emu.admin.requests().values())}")
        storage.close()


if __name__ == "__main__":
    main()
