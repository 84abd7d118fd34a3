"""The CAPI client's flows, one module per job, written on :mod:`cscapi.runtime` (sans I/O).

- :mod:`~cscapi.flows.auth`: register, log in, login bans and locks, authenticated sends;
- :mod:`~cscapi.flows.signals`: add, send (claims, leases, bisection, quarantine), prune;
- :mod:`~cscapi.flows.decisions`: the decisions stream, list links, decisions deleted locally;
- :mod:`~cscapi.flows.enroll`: console enrollment;
- :mod:`~cscapi.flows.metrics`: SDK metrics and usage metrics.

``cscapi._core.Core`` composes them behind the facade the two clients drive.
"""

from __future__ import annotations

from cscapi.flows.auth import AuthFlows
from cscapi.flows.decisions import DecisionFlows
from cscapi.flows.enroll import EnrollFlows
from cscapi.flows.metrics import MetricsFlows
from cscapi.flows.signals import SignalFlows

__all__ = ["AuthFlows", "DecisionFlows", "EnrollFlows", "MetricsFlows", "SignalFlows"]
