"""CAPI's protocol limits, cadences and URLs: the one place they are written (docs/capi-protocol.md).

Every layer (the client's config and flows, the CLI settings, the agent, the remediation engine, the protocol
package) imports them from here. Standard library only and outside ``cscapi.protocol``, so ``cscapi --help`` can read
them without importing the protocol package. The emulator keeps its own copies on purpose: it checks the client from
outside (docs/internals.md).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_LINK_BYTES",
    "DEFAULT_MAX_STREAM_BYTES",
    "DEFAULT_METRICS_INTERVAL",
    "DEFAULT_REFRESH_INTERVAL",
    "DEFAULT_REFRESH_JITTER",
    "DEV_URL",
    "MAX_BATCH",
    "MAX_PUSH_INTERVAL",
    "MAX_RETRIES",
    "MIN_METRICS_INTERVAL",
    "MIN_PUSH_INTERVAL",
    "MIN_REFRESH_INTERVAL",
    "PROD_URL",
]

#: CrowdSec's production CAPI root.
PROD_URL = "https://api.crowdsec.net/"
#: CrowdSec's development CAPI root (``prod=False``, as the legacy SDK documented).
DEV_URL = "https://api.dev.crowdsec.net/"

#: Most signals CAPI accepts in one ``POST /v3/signals``.
MAX_BATCH = 250

#: CAPI's documented minimum between two decision pulls (1 h 30), and the cadence it asks for (2 h), and the jitter
#: the agent adds either way by default.
MIN_REFRESH_INTERVAL = 5400
DEFAULT_REFRESH_INTERVAL = 7200.0
DEFAULT_REFRESH_JITTER = 300.0

#: Signals are pushed every 10 s to 10 min, as CAPI asks.
MIN_PUSH_INTERVAL = 10.0
MAX_PUSH_INTERVAL = 600.0

#: Metrics pushes: every 30 min by default (CrowdSec's engine), never more often than every 15 min.
DEFAULT_METRICS_INTERVAL = 1800.0
MIN_METRICS_INTERVAL = 900.0

#: Most retries of one request (network errors, 429 and 5xx, with backoff).
MAX_RETRIES = 20

#: Seconds one request (redirects included) may take in total: a 10 MB answer at ~150 kbit/s fits.
DEFAULT_DEADLINE = 600.0
#: Decompressed bytes of a decisions stream, and of one blocklist/allowlist link, at most.
DEFAULT_MAX_STREAM_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_LINK_BYTES = 64 * 1024 * 1024
