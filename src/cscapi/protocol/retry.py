"""When to retry a request and how long to wait: capped exponential backoff with full jitter, honouring Retry-After.

Pure functions: the caller (``cscapi._core``) performs the pause and hands in the time (``cscapi.runtime.Now``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cscapi.iputil import is_loopback_host
from cscapi.protocol.http import NetworkFailure, Response
from cscapi.timeutil import parse_http_date, utcnow

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "is_refused_on_loopback", "is_retryable", "parse_retry_after"]

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Statuses worth another try: rate limited, or the server (or a gateway before it) failing."""


def is_retryable(result: Response | NetworkFailure) -> bool:
    """True for a network failure (timeout, deadline, refused or reset connection; not ``tls``) or a retryable
    status."""
    if isinstance(result, NetworkFailure):
        return result.kind != "tls"  # a certificate that fails verification fails the same way next time
    return result.status_code in RETRYABLE_STATUSES


def is_refused_on_loopback(failure: NetworkFailure) -> bool:
    """True for a connection refused by a loopback address: nothing listens there, waiting will not change that."""
    from urllib.parse import urlsplit

    return is_loopback_host(urlsplit(failure.url).hostname or "") and "refused" in failure.detail.lower()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        when = parse_http_date(text)
        if when is None:
            return None
        seconds = (when - (now or utcnow())).total_seconds()
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0
    return seconds


@dataclass
class RetryPolicy:
    """How many times to retry and how long to wait before each retry.

    The n-th retry (0-based) waits a random time in ``[0, min(max_delay, base_delay * 2**n)]`` (full jitter), or the
    server's ``Retry-After`` when it asks for longer, capped at ``max_retry_after``.

    ``fail_fast_connect`` (interactive commands): a connection error on the first try, or a connection refused on
    loopback at any try, is not retried; timeouts and 429/5xx still are.
    """

    max_retries: int = 3
    base_delay: float = 5.0
    max_delay: float = 60.0
    max_retry_after: float = 120.0
    rand: Callable[[], float] = field(default=random.random, repr=False)
    fail_fast_connect: bool = False

    def should_retry(self, result: Response | NetworkFailure, attempt: int) -> bool:
        """Whether to retry after ``attempt`` retries already made (0 for the first try)."""
        fast = self.fail_fast_connect and isinstance(result, NetworkFailure) and result.kind == "connect"
        if fast and (attempt == 0 or is_refused_on_loopback(result)):  # type: ignore[arg-type]
            return False
        return attempt < self.max_retries and is_retryable(result)

    def delay(
        self, attempt: int, result: Response | NetworkFailure | None = None, now: datetime | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); ``now`` (the flow's clock, read through the
        runtime's ``Now`` effect) dates a ``Retry-After`` given as an HTTP date (the system clock when None)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(attempt, 30)))
        wait = ceiling * self.rand()
        if isinstance(result, Response):
            hinted = parse_retry_after(result.header("retry-after"), now)
            if hinted is not None:
                wait = max(wait, min(hinted, self.max_retry_after))
        return float(max(0.0, wait))
