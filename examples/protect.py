"""Quick start 2: protect with the remediation engine. Pull the community blocklist, answer per request in ~1 µs.

Run:  python examples/protect.py                          (against an embedded CAPI emulator)
      python examples/protect.py --data-dir ./protect-data  (twice: the second run serves the stored decisions)
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from _capi import arguments, capi_url

from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.errors import RefreshTooSoonError
from cscapi.remediation import RemediationEngine
from cscapi.sql_storage import SQLStorage


def main() -> None:
    args = arguments(__doc__ or "", data_dir=True)
    with contextlib.ExitStack() as stack:
        base_url, emulator = stack.enter_context(capi_url(args.base_url, community_size=500))
        if args.data_dir:
            data = Path(args.data_dir)
            data.mkdir(parents=True, exist_ok=True)
        else:
            data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if emulator is not None:  # give the demo something to find: one community ban, one blocklist
            emulator.admin.add_decision("203.0.113.99", "crowdsecurity/ssh-bf", "24h")
            emulator.admin.publish_blocklist("example-list", ["198.51.100.0/24"], scope="range", duration="24h")
        storage = SQLStorage(f"sqlite:///{data / 'cscapi.db'}")
        client = CAPIClient(storage, CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=base_url))
        # sqlite:/// shares the decisions between the worker processes of one host; redis:// between hosts.
        engine = RemediationEngine(client, store=f"sqlite:///{data / 'decisions.db'}")
        try:
            try:
                report = engine.refresh_decisions()  # in production: every 2 h, from `cscapi run` or a scheduler
                print(f"pulled {report.new} community decisions and {len(report.lists)} list(s)")
            except RefreshTooSoonError as exc:
                # CAPI allows one pull every 1 h 30 (the time is kept in the store, so restarts count): serve the
                # decisions already stored. engine.refresh_decisions(force=True) would pull anyway (CAPI may
                # rate-limit you).
                print(
                    f"pulled less than 1 h 30 ago: serving the stored decisions (next pull {exc.next_allowed_at:%H:%M})"
                )

            def guard(ip: str) -> bool:
                """What a login page or a WSGI middleware would call on every request."""
                answer = engine.get_ip_remediation(ip)  # no I/O: an in-process index
                engine.update_metrics_origins_count(answer.origin, answer.remediation)
                return answer.remediation != "ban"

            for ip in ("203.0.113.99", "198.51.100.7", "192.0.2.1"):
                answer = engine.get_ip_remediation(ip)
                verdict = "allowed" if guard(ip) else "blocked"
                print(f"{ip:15s} {answer.remediation:8s} {answer.origin:20s} {verdict}")
        finally:
            engine.close()
            client.close()
            storage.close()


if __name__ == "__main__":
    main()
