"""Build an ``AllMetrics`` usage-metrics payload (LAPI swagger model) for one remediation component.

The one builder: :func:`usage_metrics_payload` (public, documented in docs/client.md) is what the remediation engine
uses too, so the OS detection and the swagger's 255-character limits are applied the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cscapi._version import __version__

__all__ = ["MetricItem", "os_info", "usage_metrics_payload"]

MetricItem = tuple[str, float, str, Mapping[str, str] | None]
"""``(name, value, unit, labels)``, e.g. ``("dropped", 12, "request", {"origin": "CAPI", "remediation": "ban"})``;
``labels=None`` leaves the item without a ``labels`` key (``{}`` sends an empty one)."""

_MAX = 255  # maxLength of every string of the swagger's RemediationComponentsMetrics


def os_info() -> dict[str, str]:
    """The swagger's ``OSversion``: the distribution and its version on Linux (``/etc/os-release``), else the system
    name lowercased and its release; ``family`` is the system (``linux``, ``darwin``, ``windows``)."""
    import platform  # only when metrics are built

    name = (platform.system() or "unknown").lower()
    version = platform.release() or "unknown"
    family = name
    if name == "linux":
        try:
            info = platform.freedesktop_os_release()
            name, version = info.get("ID", name), info.get("VERSION_ID", version)
        except OSError:
            pass
    return {"name": name[:_MAX], "version": version[:_MAX], "family": family[:_MAX]}


def _timestamp(value: datetime | int) -> int:
    return int(value.timestamp()) if isinstance(value, datetime) else int(value)


def _value(value: float) -> float:
    """Counts stay integers (as the engine sends them); anything else is sent as a float."""
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


def usage_metrics_payload(
    *,
    name: str,
    component_type: str,
    startup: datetime | int,
    now: datetime | int,
    window_seconds: int,
    items: Sequence[MetricItem],
    last_pull: datetime | int | None = None,
    version: str | None = __version__,
) -> dict[str, Any]:
    """An ``AllMetrics`` dict with one ``remediation_components`` entry, ready for ``push_usage_metrics``.

    Times are datetimes or Unix timestamps; strings are cut to the swagger's 255 characters.
    """
    metric_items: list[dict[str, Any]] = []
    for item_name, value, unit, labels in items:
        item: dict[str, Any] = {"name": item_name, "value": _value(value), "unit": unit}
        if labels is not None:
            item["labels"] = {str(k)[:_MAX]: str(x)[:_MAX] for k, x in labels.items()}
        metric_items.append(item)
    now_ts = _timestamp(now)
    component: dict[str, Any] = {
        "name": name[:_MAX],
        "type": component_type[:_MAX],
        "version": (version or __version__)[:_MAX],
        "utc_startup_timestamp": _timestamp(startup),
        "os": os_info(),
        "feature_flags": [],
        "metrics": [
            {
                "meta": {"window_size_seconds": max(0, int(window_seconds)), "utc_now_timestamp": now_ts},
                "items": metric_items,
            }
        ],
    }
    if last_pull is not None:
        component["last_pull"] = _timestamp(last_pull)
    return {"remediation_components": [component]}
