"""The remediation engine: pull CAPI decisions (community blocklist, blocklists, allowlists) into a shared store,
and answer ``get_ip_remediation(ip)`` from an in-process index, with no I/O per lookup.

See ``docs/remediation.md``.
"""

from __future__ import annotations

from cscapi.remediation.contracts import AsyncDecisionSource, DecisionSource
from cscapi.remediation.engine import AsyncRemediationEngine, RemediationEngine
from cscapi.remediation.index import Policy
from cscapi.remediation.models import CLEAN, ListOutcome, ListStatus, RefreshReport, Remediation
from cscapi.remediation.stores import DecisionStore, open_store

__all__ = [
    "CLEAN",
    "AsyncDecisionSource",
    "AsyncRemediationEngine",
    "DecisionSource",
    "DecisionStore",
    "ListOutcome",
    "ListStatus",
    "Policy",
    "RefreshReport",
    "Remediation",
    "RemediationEngine",
    "open_store",
]
