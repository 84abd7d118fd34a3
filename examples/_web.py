"""Shared by the web examples (not an example itself): a decision store filled the way the agent (``cscapi run``)
fills it, from an embedded CAPI emulator (or ``--base-url``): 203.0.113.99 banned by the community blocklist,
198.51.100.0/24 under captcha through a subscribed blocklist. Then three visitors ask for ``/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from _capi import capi_url

VISITORS = ("203.0.113.99", "198.51.100.7", "192.0.2.1")  # banned, under captcha, clean


def arguments(description: str) -> argparse.Namespace:
    """``--serve`` (run the app on 127.0.0.1:PORT instead of the three test requests), ``--port``, ``--base-url``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="serve the protected app on 127.0.0.1 (Ctrl-C to stop)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--base-url", default=os.environ.get("CSCAPI_BASE_URL"), help="a CAPI (default: emulator)")
    return parser.parse_args()


@contextlib.contextmanager
def decision_store(base_url: str | None) -> Iterator[str]:
    """Yield the URI of a SQLite decision store holding the pulled decisions (what ``cscapi run`` keeps filled)."""
    from cscapi.client import CAPIClient, CAPIClientConfig
    from cscapi.remediation import RemediationEngine
    from cscapi.sql_storage import SQLStorage

    with tempfile.TemporaryDirectory() as tmp, capi_url(base_url, community_size=50) as (url, emulator):
        if emulator is not None:
            emulator.admin.add_decision("203.0.113.99", "crowdsecurity/http-probing", "24h")
            emulator.admin.publish_blocklist("suspects", ["198.51.100.0/24"], remediation="captcha", scope="range")
        client = CAPIClient(
            SQLStorage(f"sqlite:///{Path(tmp) / 'cscapi.db'}"),
            CAPIClientConfig(scenarios=["crowdsecurity/http-probing"], base_url=url),
        )
        store = f"sqlite:///{Path(tmp) / 'decisions.db'}"
        agent = RemediationEngine(client, store=store)
        try:
            agent.refresh_decisions()
        finally:
            agent.close()
            client.close()
        yield store


def show(get: Callable[[str], tuple[int, str]]) -> None:
    """Print what each visitor gets: ``get(ip)`` answers (status, body) for ``GET /`` from ``ip``."""
    for ip in VISITORS:
        status, body = get(ip)
        what = "ban wall" if "Access denied" in body else "captcha wall" if "cscapi-form" in body else body.strip()
        print(f"{ip:15s} {status}  {what}")
