"""Usage metrics: the ``AllMetrics`` payload (LAPI swagger; ``POST /v3/usage-metrics``) of a remediation component.

Counters are (origin, remediation) -> requests. Like CrowdSec's bouncers, every counted request is ``processed``;
those whose remediation is not ``bypass`` are also ``dropped``, labelled with origin and remediation.
"""

from __future__ import annotations

from typing import Any

from cscapi._version import __version__
from cscapi.remediation.stores.base import Counters

__all__ = ["build_usage_metrics", "nested_counts"]


def nested_counts(counts: Counters) -> dict[str, dict[str, int]]:
    """``{origin: {remediation: count}}``, the shape of the PHP engine's ``getOriginsCount``."""
    out: dict[str, dict[str, int]] = {}
    for (origin, remediation), n in sorted(counts.items()):
        out.setdefault(origin, {})[remediation] = n
    return out


def _os() -> dict[str, str]:
    import platform  # only when metrics are pushed

    name = (platform.system() or "unknown").lower()
    version = platform.release() or "unknown"
    family = name
    if name == "linux":
        try:
            info = platform.freedesktop_os_release()
            name, version = info.get("ID", name), info.get("VERSION_ID", version)
        except OSError:
            pass
    return {"name": name[:255], "version": version[:255], "family": family[:255]}


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
    items: list[dict[str, Any]] = []
    processed = 0
    for (origin, remediation), n in sorted(counts.items()):
        processed += n
        if remediation != "bypass":
            items.append(
                {
                    "name": "dropped",
                    "value": n,
                    "unit": "request",
                    "labels": {"origin": origin[:255], "remediation": remediation[:255]},
                }
            )
    items.append({"name": "processed", "value": processed, "unit": "request"})
    component: dict[str, Any] = {
        "name": name[:255],
        "type": type_[:255],
        "version": (version or __version__)[:255],
        "utc_startup_timestamp": startup_ts,
        "os": _os(),
        "feature_flags": [],
        "metrics": [
            {
                "meta": {"window_size_seconds": max(0, now - window_start), "utc_now_timestamp": now},
                "items": items,
            }
        ],
    }
    if last_pull is not None:
        component["last_pull"] = last_pull
    return {"remediation_components": [component]}
