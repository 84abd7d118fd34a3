"""``Core``: the client's flows bound to one storage and one configuration, composed from the flow groups of
:mod:`cscapi.flows` (auth, signals, decisions, enroll, metrics).

A flow never does I/O itself: it yields the effects of :mod:`cscapi.runtime` (``HttpCall``, ``StorageCall``,
``Sleep``, ``Now``, ``Compute``) and receives their results. ``CAPIClient`` runs them with ``cscapi.runtime.run_sync``,
``AsyncCAPIClient`` with ``cscapi.runtime.run_async``, so sync and async share every line of logic. The effect names,
drivers and constants stay importable from here (``cscapi._core`` was their home before the split).
"""

from __future__ import annotations

from typing import TypeVar

from cscapi._config import CAPIClientConfig
from cscapi.errors import ConfigurationError
from cscapi.flows import AuthFlows, DecisionFlows, EnrollFlows, MetricsFlows, SignalFlows
from cscapi.flows._base import LOGIN_REFUSED
from cscapi.flows.auth import LOGIN_BAN_SECONDS
from cscapi.flows.decisions import _MAX_SKIP_WARNINGS as _MAX_SKIP_WARNINGS  # for the stream skip-log tests
from cscapi.flows.signals import MAX_BATCH_SIZE
from cscapi.protocol import Endpoints, RetryPolicy
from cscapi.runtime import Compute as Compute  # the runtime's names, importable from here as before the split
from cscapi.runtime import Effect as Effect
from cscapi.runtime import Flow as Flow
from cscapi.runtime import HttpCall as HttpCall
from cscapi.runtime import Now as Now
from cscapi.runtime import Sleep as Sleep
from cscapi.runtime import StorageCall as StorageCall
from cscapi.runtime import run_async as run_async
from cscapi.runtime import run_sync as run_sync
from cscapi.storage import StorageInterface, check_storage

__all__ = ["LOGIN_BAN_SECONDS", "LOGIN_REFUSED", "MAX_BATCH_SIZE", "Core"]

T = TypeVar("T")


class Core:
    """The flows of the client, bound to one storage and one configuration. Holds no I/O handle.

    A thin composition: each public flow is the bound method of the group that owns it (``auth``, ``signals``,
    ``decisions``, ``enroll``, ``metrics``), all sharing one storage, config, endpoints and retry policy.
    """

    def __init__(self, storage: StorageInterface, config: CAPIClientConfig) -> None:
        if not isinstance(config, CAPIClientConfig):
            raise ConfigurationError("config must be a CAPIClientConfig.")
        check_storage(storage)  # IncompatibleStorageError (a ConfigurationError) says why and what to do
        self.storage = storage
        self.config = config
        self.log = config.logger
        self.endpoints = Endpoints(config.api_root, config.api_version, config.gzip_threshold)
        self.retry = RetryPolicy(
            max_retries=config.max_retries,
            base_delay=config.retry_delay,
            max_delay=config.max_backoff,
            max_retry_after=config.max_retry_after,
            fail_fast_connect=config.fail_fast_connect,
        )
        self.auth = AuthFlows(storage, config, self.endpoints, self.retry)
        self.signals = SignalFlows(self.auth)
        self.decisions = DecisionFlows(self.auth)
        self.enroll = EnrollFlows(self.auth)
        self.metrics = MetricsFlows(self.auth)
        # the facade: what CAPIClient and AsyncCAPIClient drive
        self.register_machine = self.auth.register_machine
        self.login = self.auth.login
        self.authed = self.auth.authed
        self.clear_login_ban = self.auth.clear_login_ban
        self.default_machine_id = self.auth.default_machine_id
        self.add_signals = self.signals.add_signals
        self.send_signals = self.signals.send_signals
        self.prune_failing_machines_signals = self.signals.prune_failing_machines_signals
        self.get_decisions = self.decisions.get_decisions
        self.download_link = self.decisions.download_link
        self.delete_decisions = self.decisions.delete_decisions
        self.enroll_machines = self.enroll.enroll_machines
        self.send_metrics = self.metrics.send_metrics
        self.push_usage_metrics = self.metrics.push_usage_metrics
