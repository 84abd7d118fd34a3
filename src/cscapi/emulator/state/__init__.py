"""The emulator's state and behaviour, free of HTTP, split by concern behind one facade, :class:`EmulatorState`:

- ``accounts``: machines, tokens, login rate limit and bans, password hashing, enrollment and attachment keys;
- ``community``: the community blocklist, its expiry, tombstones and versions;
- ``lists``: published blocklists and allowlists (and the v2 pull's inline list entries);
- ``streams``: the v3 and v2 decision-stream answers built from the two above;
- ``faults``: fault injection and request counters;
- ``inbox``: received signals and payloads (metrics, usage metrics, decision deletes and syncs, enrollments).

One re-entrant lock (:class:`~cscapi.emulator.state.base.StateContext`) guards every part, so the ASGI app (its
own thread and loop) and tests or admin code in other threads can use the same object. Times are unix seconds from
``config.clock`` (``time.time`` by default). The parts never import the library's models: the emulator checks
the client from outside.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import Any, Generic, TypeVar, overload

from cscapi.emulator.community import generate_community, load_community_file
from cscapi.emulator.config import EmulatorConfig, FaultSpec
from cscapi.emulator.state.accounts import Accounts, MachineRecord
from cscapi.emulator.state.base import (
    MAX_DECISION_SECONDS,
    ApiError,
    DecisionKey,
    StateContext,
    decision_seconds,
    rfc3339,
    rfc3339_seconds,
)
from cscapi.emulator.state.community import Community, CommunityDecision
from cscapi.emulator.state.faults import FaultAction, Faults
from cscapi.emulator.state.inbox import Inbox
from cscapi.emulator.state.lists import Lists
from cscapi.emulator.state.streams import Streams

__all__ = [
    "MAX_DECISION_SECONDS",
    "ApiError",
    "CommunityDecision",
    "DecisionKey",
    "EmulatorState",
    "FaultAction",
    "MachineRecord",
    "decision_seconds",
    "rfc3339",
    "rfc3339_seconds",
]

_T = TypeVar("_T")


class _Part(Generic[_T]):
    """An attribute of the facade that is an attribute of one of its parts (read and written there)."""

    def __init__(self, part: str, name: str) -> None:
        self.part = part
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Part[_T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> _T | _Part[_T]:
        if obj is None:
            return self
        value: _T = getattr(getattr(obj, self.part), self.name)
        return value

    def __set__(self, obj: object, value: _T) -> None:
        setattr(getattr(obj, self.part), self.name, value)


class EmulatorState:
    """All emulator state; thread-safe. ``EmulatorState(config)`` loads the SQLite file when ``state_path`` is set.

    A facade: it builds the parts (``accounts``, ``community``, ``lists``, ``streams``, ``faults_part``,
    ``inbox``), runs their lifecycle (seed, load, reset, close, summary), and otherwise only delegates, which is
    why it has more than 25 methods and properties: they are the stable API of the app, the admin API and tests.
    Why this size: see the line above (delegation only, the logic lives in the parts).
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._ctx = ctx = StateContext(config)
        self.clock = ctx.clock
        self.lock = ctx.lock
        self.faults_part = Faults(ctx)
        self.inbox = Inbox(ctx)
        self.accounts = Accounts(ctx, self.faults_part, self.inbox)
        self.community = Community(ctx)
        self.lists = Lists(ctx)
        self.streams = Streams(ctx, self.accounts, self.community, self.lists)
        if ctx.store is not None and ctx.store.meta().get("initialised"):
            self._load()
        else:
            self._seed_from_config()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def _clear(self) -> None:
        self.accounts.clear()
        self.inbox.clear()
        self.community.clear()
        self.lists.clear()
        self.streams.clear()

    def _seed_from_config(self) -> None:
        cfg = self.config
        if cfg.community_file:
            seeds = load_community_file(cfg.community_file, cfg.seed)
        else:
            seeds = generate_community(cfg.community_size, cfg.seed, cfg.community_scenarios)
        now = self.clock()
        store = self._ctx.store
        if store is not None:
            store.wipe()
            store.set_meta(secret=self.accounts.secret.hex(), initialised=True)
        self.community.add_seeds(seeds, now)
        for bl in cfg.blocklists:
            self.publish_blocklist(**bl)
        for al in cfg.allowlists:
            self.publish_allowlist(**al)

    def _load(self) -> None:
        assert self._ctx.store is not None
        meta = self._ctx.store.meta()
        self.accounts.load(meta)
        self.inbox.load()
        self.community.load(meta)
        self.lists.load()

    def reset(self) -> None:
        """Forget everything and start again from the configuration (community list regenerated from the seed)."""
        with self.lock:
            self.faults_part.reset()
            self.accounts.reset_settings()
            self._clear()
            self._seed_from_config()

    def close(self) -> None:
        """Close the SQLite file, if any."""
        with self.lock:
            if self._ctx.store is not None:
                self._ctx.store.close()
                self._ctx.store = None

    def summary(self) -> dict[str, Any]:
        """Counts of everything, for ``GET /admin/state``."""
        with self.lock:
            return {
                "machines": len(self.machines),
                "signals": len(self.signals),
                "decisions": len(self.decisions),
                "tombstones": len(self.tombstones),
                "version": self.version,
                "blocklists": len(self.blocklists),
                "allowlists": len(self.allowlists),
                "records": {k: len(v) for k, v in self.records.items()},
                "faults": {k: v.to_dict() for k, v in self.faults.items()},
                "internal_errors": self.internal_errors,
                "persistent": self._ctx.store is not None,
            }

    # ---- the parts' data (read under ``lock``) ---------------------------------------------------------------

    secret = _Part[bytes]("accounts", "secret")
    machines = _Part[dict[str, MachineRecord]]("accounts", "machines")
    login_attempts = _Part[dict[str, list[float]]]("accounts", "login_attempts")
    login_bans = _Part[dict[str, float]]("accounts", "login_bans")
    early_tokens = _Part[dict[str, float]]("accounts", "early_tokens")
    attachment_keys = _Part[set[str]]("accounts", "attachment_keys")
    only_listed_keys = _Part[bool]("accounts", "only_listed_keys")
    signals = _Part[list[dict[str, Any]]]("inbox", "signals")
    signal_uuids = _Part[dict[str, set[str]]]("inbox", "signal_uuids")
    records = _Part[dict[str, list[dict[str, Any]]]]("inbox", "records")
    decisions = _Part[dict[DecisionKey, CommunityDecision]]("community", "decisions")
    tombstones = _Part[dict[DecisionKey, dict[str, Any]]]("community", "tombstones")
    version = _Part[int]("community", "version")
    blocklists = _Part[dict[str, dict[str, Any]]]("lists", "blocklists")
    allowlists = _Part[dict[str, dict[str, Any]]]("lists", "allowlists")
    lists_version = _Part[int]("lists", "lists_version")
    faults = _Part[dict[str, FaultSpec]]("faults_part", "specs")
    fault_rng = _Part[random.Random]("faults_part", "rng")
    request_counts = _Part[Counter[tuple[str, int]]]("faults_part", "request_counts")
    internal_errors = _Part[int]("faults_part", "internal_errors")

    # ---- accounts --------------------------------------------------------------------------------------------

    def register(self, machine_id: str, password: str, api: str = "v3") -> MachineRecord:
        return self.accounts.register(machine_id, password, api)

    def reset_password(self, machine_id: str, password: str) -> None:
        self.accounts.reset_password(machine_id, password)

    def login(self, machine_id: str, password: str, scenarios: list[str], client_ip: str) -> tuple[str, float]:
        return self.accounts.login(machine_id, password, scenarios, client_ip)

    def clear_login_bans(self) -> None:
        self.accounts.clear_login_bans()

    def authenticate(self, header: str | None) -> MachineRecord:
        return self.accounts.authenticate(header)

    def expire_tokens(self, machine_id: str | None = None) -> int:
        return self.accounts.expire_tokens(machine_id)

    def enroll(self, m: MachineRecord, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self.accounts.enroll(m, body)

    def autoenroll(self, m: MachineRecord, body: dict[str, Any], base_url: str) -> dict[str, Any]:
        return self.accounts.autoenroll(m, body, base_url)

    def add_attachment_key(self, key: str) -> None:
        self.accounts.add_attachment_key(key)

    def set_only_listed_keys(self, only_listed: bool) -> None:
        self.accounts.set_only_listed_keys(only_listed)

    # ---- inbox -----------------------------------------------------------------------------------------------

    def add_signals(self, m: MachineRecord, items: list[dict[str, Any]], api: str) -> tuple[int, int]:
        return self.inbox.add_signals(m, items, api)

    def record_payload(self, kind: str, m: MachineRecord, body: Any, api: str) -> None:
        self.inbox.record_payload(kind, m, body, api)

    def query_signals(self, machine_id: str | None = None, scenario: str | None = None) -> list[dict[str, Any]]:
        return self.inbox.query_signals(machine_id, scenario)

    # ---- community list and streams --------------------------------------------------------------------------

    def add_decisions(
        self, items: Iterable[dict[str, Any]], now: float | None = None
    ) -> tuple[list[CommunityDecision], int]:
        return self.community.add_decisions(items, now)

    def remove_decisions(self, values: Iterable[str], *, expire: bool = False, scenario: str | None = None) -> int:
        return self.community.remove_decisions(values, expire=expire, scenario=scenario)

    def expire_due(self) -> int:
        return self.community.expire_due()

    def list_decisions(self) -> list[dict[str, Any]]:
        return self.community.list_decisions()

    def stream_v3(
        self, m: MachineRecord, *, startup: bool, community_pull: bool, additional_pull: bool, base_url: str
    ) -> bytes:
        return self.streams.stream_v3(
            m, startup=startup, community_pull=community_pull, additional_pull=additional_pull, base_url=base_url
        )

    def stream_v2(self, m: MachineRecord, *, startup: bool, community_pull: bool, additional_pull: bool) -> bytes:
        return self.streams.stream_v2(
            m, startup=startup, community_pull=community_pull, additional_pull=additional_pull
        )

    # ---- published lists -------------------------------------------------------------------------------------

    list_id = staticmethod(Lists.list_id)

    def publish_blocklist(
        self, name: str, content: Iterable[str], remediation: str = "ban", scope: str = "ip", duration: str = "24h"
    ) -> dict[str, Any]:
        return self.lists.publish_blocklist(name, content, remediation, scope, duration)

    def publish_allowlist(self, name: str, items: Iterable[Any] = (), description: str = "") -> dict[str, Any]:
        return self.lists.publish_allowlist(name, items, description)

    def remove_list(self, kind: str, name_or_id: str) -> bool:
        return self.lists.remove_list(kind, name_or_id)

    # ---- faults and counters ---------------------------------------------------------------------------------

    def set_fault(self, endpoint: str, spec: FaultSpec) -> None:
        self.faults_part.set_fault(endpoint, spec)

    def clear_faults(self, endpoint: str | None = None) -> None:
        self.faults_part.clear_faults(endpoint)

    def take_fault(self, endpoint: str) -> FaultAction:
        return self.faults_part.take_fault(endpoint)

    def count_request(self, endpoint: str, status: int) -> None:
        self.faults_part.count_request(endpoint, status)


def _borrow_docstrings(facade: type, parts: tuple[type, ...]) -> None:
    """Give each delegating method of the facade the docstring of the part's method it calls (``help()`` shows it)."""
    for name, fn in vars(facade).items():
        if not callable(fn) or fn.__doc__ is not None:
            continue
        for part in parts:
            doc = getattr(getattr(part, name, None), "__doc__", None)
            if doc:
                fn.__doc__ = doc
                break


_borrow_docstrings(EmulatorState, (Accounts, Inbox, Community, Streams, Lists, Faults))
