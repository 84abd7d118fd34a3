"""Metrics: ``POST /v3/metrics`` describing this SDK and ``POST /v3/usage-metrics`` with a caller's ``AllMetrics``
(the remediation engine's and LAPI bouncers' counters). The courtesy metrics after a login are sent by ``auth``."""

from __future__ import annotations

from typing import Any

from cscapi._version import __version__
from cscapi.errors import ValidationError
from cscapi.flows._base import FlowBase
from cscapi.flows.auth import AuthFlows
from cscapi.protocol import error_for, metrics_payload
from cscapi.runtime import Flow

__all__ = ["MetricsFlows"]


class MetricsFlows(FlowBase):
    """``send_metrics`` and ``push_usage_metrics``."""

    def __init__(self, auth: AuthFlows) -> None:
        super().__init__(auth.storage, auth.config, auth.endpoints, auth.retry)
        self.auth = auth

    def send_metrics(self, machine_id: str) -> Flow[None]:
        """``POST /v3/metrics`` describing this SDK, for one machine."""
        now = yield from self._now()
        payload = metrics_payload(self.config.user_agent, __version__, None, now)
        response = yield from self.auth.authed(machine_id, self.endpoints.metrics(payload))
        if not response.ok:
            raise error_for(response, "metrics")

    def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> Flow[None]:
        """``POST /v3/usage-metrics`` with an ``AllMetrics`` dict; a refusal raises ``RequestRejectedError``."""
        if not isinstance(payload, dict):
            raise ValidationError("The usage metrics payload must be an AllMetrics dict.", field="payload")
        response = yield from self.auth.authed(machine_id, self.endpoints.usage_metrics(payload))
        if not response.ok:
            raise error_for(response, "usage metrics")
