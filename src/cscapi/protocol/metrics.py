"""Build an ``AllMetrics`` usage-metrics payload (LAPI swagger model) for one remediation component."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cscapi._version import __version__

__all__ = ["MetricItem", "usage_metrics_payload"]

MetricItem = tuple[str, float, str, Mapping[str, str]]
"""``(name, value, unit, labels)``, e.g. ``("dropped", 12, "request", {"origin": "CAPI", "remediation": "ban"})``."""


def usage_metrics_payload(
    *,
    name: str,
    component_type: str,
    startup: datetime,
    now: datetime,
    window_seconds: int,
    items: Sequence[MetricItem],
    last_pull: datetime | None = None,
    version: str = __version__,
) -> dict[str, Any]:
    """An ``AllMetrics`` dict with one ``remediation_components`` entry, ready for ``push_usage_metrics``."""
    component: dict[str, Any] = {
        "name": name,
        "type": component_type,
        "version": version[:255],
        "utc_startup_timestamp": int(startup.timestamp()),
        "os": {"name": platform.system() or "unknown", "version": platform.release() or "unknown"},
        "feature_flags": [],
        "metrics": [
            {
                "meta": {"window_size_seconds": int(window_seconds), "utc_now_timestamp": int(now.timestamp())},
                "items": [
                    {"name": n, "value": float(v), "unit": u, "labels": {str(k): str(x) for k, x in labels.items()}}
                    for n, v, u, labels in items
                ],
            }
        ],
    }
    if last_pull is not None:
        component["last_pull"] = int(last_pull.timestamp())
    return {"remediation_components": [component]}
