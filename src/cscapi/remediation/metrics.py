"""Usage metrics: the ``AllMetrics`` payload (LAPI swagger; ``POST /v3/usage-metrics``) of a remediation component.

Counters are (origin, remediation) -> requests. Like CrowdSec's bouncers, every counted request is ``processed``;
those whose remediation is not ``bypass`` are also ``dropped``, labelled with origin and remediation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cscapi.remediation.stores.base import Counters

if TYPE_CHECKING:
    from cscapi.protocol.metrics import MetricItem

__all__ = ["build_usage_metrics", "nested_counts"]


def nested_counts(counts: Counters) -> dict[str, dict[str, int]]:
    """``{origin: {remediation: count}}``, the shape of the PHP engine's ``getOriginsCount``."""
    out: dict[str, dict[str, int]] = {}
    for (origin, remediation), n in sorted(counts.items()):
        out.setdefault(origin, {})[remediation] = n
    return out


def build_usage_metrics(
    counts: Counters,
    *,
    name: str,
    type_: str,
    version: str | None,
    startup_ts: int,
    window_start: int,
    now: int,
    last_pull: int | None,
) -> dict[str, Any]:
    """The ``AllMetrics`` body for one remediation component over the window ``[window_start, now]``."""
    from cscapi.protocol.metrics import usage_metrics_payload  # the one builder; the wire package only when pushing

    items: list[MetricItem] = []
    processed = 0
    for (origin, remediation), n in sorted(counts.items()):
        processed += n
        if remediation != "bypass":
            items.append(("dropped", n, "request", {"origin": origin, "remediation": remediation}))
    items.append(("processed", processed, "request", None))
    return usage_metrics_payload(
        name=name,
        component_type=type_,
        version=version,
        startup=startup_ts,
        now=now,
        window_seconds=now - window_start,
        items=items,
        last_pull=last_pull,
    )
