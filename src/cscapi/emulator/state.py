"""The emulator's state and behaviour, free of HTTP: machines, tokens, signals, the community list and its deltas,
published lists, received payloads, faults and request counters.

One re-entrant lock guards everything, so the ASGI app (its own thread and loop) and tests or admin code in
other threads can use the same object. Times are unix seconds from ``config.clock`` (``time.time`` by default).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import math
import random
import secrets
import threading
import time
import uuid as uuid_mod
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from cscapi.emulator.community import (
    DEFAULT_SCENARIO,
    SeedDecision,
    generate_community,
    load_community_file,
    normalise_value,
)
from cscapi.emulator.config import MAX_SECONDS, EmulatorConfig, FaultSpec
from cscapi.emulator.persistence import SQLiteStore
from cscapi.emulator.tokens import InvalidToken, decode_jwt, encode_jwt
from cscapi.timeutil import format_go_duration, parse_go_duration, parse_timestamp

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

log = logging.getLogger("cscapi.emulator")

_MAX_LOGINS_KEPT = 1000
#: Login refusals about credentials (never with ``Retry-After``): a client re-registers on these.
_BAD_CREDENTIALS = "invalid machine_id or password"
_NOT_REGISTERED = "machine not registered: invalid machine_id or password"
_TOMBSTONE_PRUNE_AT = 50_000
#: A v2 list entry is sent again when the engine's copy would expire within this (LAPI's 2 h pull + 15 min).
_V2_REFRESH_MARGIN = 2 * 3600 + 15 * 60


def _int_duration(seconds: int) -> str:
    """Whole seconds as a Go duration (``86399`` -> ``23h59m59s``), like ``format_go_duration`` but faster."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with microseconds."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_seconds(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """A refusal with an HTTP status, turned into an ``ErrorResponse`` by the app."""

    def __init__(self, status: int, message: str, errors: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


DecisionKey = tuple[str, str, str]  # (scope, value, scenario)

#: The longest decision an admin may add (10 years): longer ones are typos, and would overflow date arithmetic.
MAX_DECISION_SECONDS = MAX_SECONDS


def decision_seconds(raw: Any, where: str) -> float:
    """A duration from admin input (a Go duration such as ``"24h"``, or seconds) in ``(0, 10 years]``.

    ``ApiError(400)`` naming ``where`` otherwise: not a duration, negative or zero, NaN, infinite, or absurdly long
    (``"99999999999h"``, ``1e308``), which would overflow date arithmetic later.
    """
    shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:40] + "..."
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ApiError(400, f"{where}: {shown} is not a duration", "send a Go duration like 24h, or seconds")
    try:
        seconds = parse_go_duration(raw) if isinstance(raw, str) else float(raw)
    except (ValueError, OverflowError):
        raise ApiError(400, f"{where}: {shown} is not a Go duration like 24h") from None
    if not 0 < seconds <= MAX_DECISION_SECONDS:  # also refuses NaN
        raise ApiError(
            400, f"{where}: {shown} is out of range", "a duration must be more than 0s and at most 87600h (10 years)"
        )
    return seconds


#: scrypt cost of machine passwords: N=2**13, r=8, p=1 (8 MiB and some 10-40 ms per hash). Slow enough that a
#: leaked state file does not give the passwords away cheaply, fast enough for test suites that log in often.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**13, 8, 1
#: At most two hashes at once (8 MiB each): a burst of logins queues instead of multiplying the memory.
_KDF_SLOTS = threading.BoundedSemaphore(2)


def _scrypt(password: str, salt: str, n: int, r: int, p: int) -> str:
    with _KDF_SLOTS:
        key = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32
        )
    return f"scrypt${n}${r}${p}${key.hex()}"


def _hash_password(password: str, salt: str) -> str:
    """``scrypt$N$r$p$hex`` of the password with this machine's salt (hex)."""
    return _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)


def _password_matches(password: str, salt: str, stored: str) -> bool:
    """Constant-time check of a candidate against a stored hash: scrypt, or the salted SHA-256 of older files."""
    if stored.startswith("scrypt$"):
        try:
            _, n, r, p, _hex = stored.split("$")
            candidate = _scrypt(password, salt, int(n), int(r), int(p))
        except ValueError:
            return False
    else:  # written by an emulator before 0.8 (sha256 of "salt:password"); upgraded at the next good login
        candidate = hashlib.sha256(f"{salt}:{password}".encode()).hexdigest()
    return hmac.compare_digest(candidate, stored)


def _new_password_hash(password: str) -> tuple[str, str]:
    """A fresh ``(salt, hash)`` for a password."""
    salt = secrets.token_hex(16)
    return salt, _hash_password(password, salt)


@dataclass
class MachineRecord:
    """One registered machine. ``password_hash`` is scrypt with a per-machine salt; the password is never kept."""

    machine_id: str
    password_salt: str = field(repr=False)
    password_hash: str = field(repr=False)
    created_at: float
    scenarios: list[str] = field(default_factory=list)
    logins: list[float] = field(default_factory=list)
    login_count: int = 0
    organization_id: str | None = None
    enrollment: dict[str, Any] | None = None
    token_generation: int = 0
    last_pull_version: int | None = None
    last_pull_at: float | None = None
    signals_count: int = 0
    api: str = "v3"
    #: v2 only: each published-list entry already sent inline (JSON ``[list, scope, value, remediation, duration]``)
    #: with when it was sent, so later pulls send only changes, and removals as ``deleted`` entries.
    v2_list_entries: dict[str, float] = field(default_factory=dict, repr=False)

    def check_password(self, password: str) -> bool:
        """Constant-time comparison of a candidate password (slow: a key derivation)."""
        return _password_matches(password, self.password_salt, self.password_hash)

    def set_password(self, password: str) -> None:
        """Replace the password (a new salt each time; slow: a key derivation)."""
        self.password_salt, self.password_hash = _new_password_hash(password)

    @property
    def legacy_hash(self) -> bool:
        """Whether the password is still stored as the fast salted SHA-256 of older emulators."""
        return not self.password_hash.startswith("scrypt$")

    def public(self, banned_until: float | None) -> dict[str, Any]:
        """What the admin API shows: no password material."""
        return {
            "machine_id": self.machine_id,
            "created_at": rfc3339(self.created_at),
            "scenarios": list(self.scenarios),
            "logins": [rfc3339(t) for t in self.logins],
            "login_count": self.login_count,
            "organization_id": self.organization_id,
            "enrolled": self.enrollment is not None,
            "enrollment": self.enrollment,
            "signals": self.signals_count,
            "last_pull_at": rfc3339(self.last_pull_at) if self.last_pull_at else None,
            "login_banned_until": rfc3339(banned_until) if banned_until else None,
            "api": self.api,
        }


@dataclass(slots=True)
class CommunityDecision:
    """One community-blocklist decision, alive until ``expires_at``; ``version`` orders changes for deltas."""

    id: int
    uuid: str
    value: str
    scope: str
    scenario: str
    expires_at: float
    created_at: float
    version: int
    value_json: str = ""

    def __post_init__(self) -> None:
        if not self.value_json:
            v = self.value
            plain = v.isascii() and v.isprintable() and '"' not in v and "\\" not in v
            self.value_json = f'"{v}"' if plain else json.dumps(v)

    @property
    def key(self) -> DecisionKey:
        """``(scope, value, scenario)``: what identifies a community decision."""
        return (self.scope, self.value, self.scenario)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (persistence)."""
        out = asdict(self)
        del out["value_json"]
        return out


@dataclass(frozen=True)
class FaultAction:
    """What to do to one request: wait ``latency`` seconds, then ``kind`` (``None``, ``drop``, ``429`` or ``5xx``)."""

    latency: float = 0.0
    kind: str | None = None
    status: int = 500
    retry_after: int = 0


_NO_FAULT = FaultAction()


class EmulatorState:
    """All emulator state; thread-safe. ``EmulatorState(config)`` loads the SQLite file when ``state_path`` is set."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.clock = config.clock or time.time
        self.lock = threading.RLock()
        self.fault_rng = random.Random(config.seed ^ 0x5EED)
        self.faults: dict[str, FaultSpec] = {k: FaultSpec.from_dict(v.to_dict()) for k, v in config.faults.items()}
        self.attachment_keys: set[str] = set(config.attachment_keys)
        self.only_listed_keys = bool(config.only_listed_attachment_keys)
        self.request_counts: Counter[tuple[str, int]] = Counter()
        self.internal_errors = 0
        self.early_tokens: dict[str, float] = {}
        self._store = SQLiteStore(config.state_path) if config.state_path else None
        self._snapshots: dict[tuple[str, ...] | None, tuple[int, float, str]] = {}
        self._responses: dict[tuple[Any, ...], bytes] = {}
        self.lists_version = 0
        self._init_empty()
        if self._store is not None and self._store.meta().get("initialised"):
            self._load()
        else:
            self._seed_from_config()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def _init_empty(self) -> None:
        self.secret = secrets.token_bytes(32)
        self.machines: dict[str, MachineRecord] = {}
        self.signals: list[dict[str, Any]] = []
        self.signal_uuids: dict[str, set[str]] = defaultdict(set)
        # Community decisions and their tombstones are keyed (scope, value, scenario): one value can carry the
        # decisions of several scenarios, as on the real CAPI. Insertion order is version order (deltas rely on it).
        self.decisions: dict[DecisionKey, CommunityDecision] = {}
        self.tombstones: dict[DecisionKey, dict[str, Any]] = {}
        self._live: dict[tuple[str, str], set[str]] = {}  # (scope, value) -> scenarios of its live decisions
        self._heap: list[tuple[float, int, DecisionKey]] = []
        self.version = 0
        self._next_id = 1
        self.blocklists: dict[str, dict[str, Any]] = {}
        self.allowlists: dict[str, dict[str, Any]] = {}
        self.records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.login_attempts: dict[str, list[float]] = defaultdict(list)
        self.login_bans: dict[str, float] = {}
        self._snapshots.clear()
        self._responses.clear()

    def _seed_from_config(self) -> None:
        cfg = self.config
        if cfg.community_file:
            seeds = load_community_file(cfg.community_file, cfg.seed)
        else:
            seeds = generate_community(cfg.community_size, cfg.seed, cfg.community_scenarios)
        now = self.clock()
        if self._store is not None:
            self._store.wipe()
            self._store.set_meta(secret=self.secret.hex(), initialised=True)
        self._add_seeds(seeds, now)
        for bl in cfg.blocklists:
            self.publish_blocklist(**bl)
        for al in cfg.allowlists:
            self.publish_allowlist(**al)

    def _load(self) -> None:
        assert self._store is not None
        meta = self._store.meta()
        self.secret = bytes.fromhex(meta["secret"])
        self.version = int(meta.get("version", 0))
        for body in self._store.rows("machines"):
            m = MachineRecord(**body)
            self.machines[m.machine_id] = m
        for rec in self._store.rows("signals"):
            self.signals.append(rec)
            u = rec["signal"].get("uuid")
            if isinstance(u, str):
                self.signal_uuids[rec["machine_id"]].add(u)
        rows = sorted(self._store.rows("decisions"), key=lambda d: d["version"])
        for body in rows:
            d = CommunityDecision(**body)
            self._put(d)
            heapq.heappush(self._heap, (d.expires_at, d.id, d.key))
            self._next_id = max(self._next_id, d.id + 1)
        for body in sorted(self._store.rows("tombstones"), key=lambda t: t["version"]):
            self.tombstones[(body["scope"], body["value"], body["scenario"])] = body
        for body in self._store.lists("blocklist"):
            self.blocklists[body["id"]] = body
        for body in self._store.lists("allowlist"):
            self.allowlists[body["id"]] = body
        for kind, body in self._store.records():
            self.records[kind].append(body)
        limits = meta.get("login_limits") or {}
        self.login_attempts.update({k: list(v) for k, v in limits.get("attempts", {}).items()})
        self.login_bans.update(limits.get("bans", {}))

    def reset(self) -> None:
        """Forget everything and start again from the configuration (community list regenerated from the seed)."""
        with self.lock:
            self.faults = {k: FaultSpec.from_dict(v.to_dict()) for k, v in self.config.faults.items()}
            self.attachment_keys = set(self.config.attachment_keys)
            self.only_listed_keys = bool(self.config.only_listed_attachment_keys)
            self.request_counts.clear()
            self.early_tokens.clear()
            self.internal_errors = 0
            self._init_empty()
            self._seed_from_config()

    def close(self) -> None:
        """Close the SQLite file, if any."""
        with self.lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _save_machine(self, m: MachineRecord) -> None:
        if self._store is not None:
            self._store.save_machine(m.machine_id, asdict(m))

    def _record(self, kind: str, body: dict[str, Any]) -> None:
        self.records[kind].append(body)
        if self._store is not None:
            self._store.add_record(kind, body)

    # ---- machines and tokens ---------------------------------------------------------------------------------

    def register(self, machine_id: str, password: str, api: str = "v3") -> MachineRecord:
        """Create a machine; 409 if the id is taken."""
        taken = ApiError(
            409,
            f"machine {machine_id} is already registered",
            "register a new machine id, or log in with the existing credentials",
        )
        with self.lock:
            if machine_id in self.machines:
                raise taken
        salt, hashed = _new_password_hash(password)  # slow: outside the lock, so other requests go on
        with self.lock:
            if machine_id in self.machines:
                raise taken
            m = MachineRecord(machine_id, salt, hashed, self.clock(), api=api)
            self.machines[machine_id] = m
            self._save_machine(m)
            return m

    def reset_password(self, machine_id: str, password: str) -> None:
        """``/watchers/reset``: new password, and every token issued before is revoked."""
        with self.lock:
            if machine_id not in self.machines:
                raise ApiError(404, f"machine {machine_id} not found")
        salt, hashed = _new_password_hash(password)  # slow: outside the lock
        with self.lock:
            m = self.machines.get(machine_id)
            if m is None:
                raise ApiError(404, f"machine {machine_id} not found")
            m.password_salt, m.password_hash = salt, hashed
            m.token_generation += 1
            self._save_machine(m)

    def _limit_key(self, machine_id: str, client_ip: str) -> str:
        return machine_id if self.config.login_rate_limit.per == "machine" else f"ip:{client_ip}"

    def login(self, machine_id: str, password: str, scenarios: list[str], client_ip: str) -> tuple[str, float]:
        """Check the rate limit and the credentials, then issue a token; returns ``(token, expires_at)``.

        The password check (a slow key derivation) runs outside the lock, so other requests are not held up.
        """
        with self.lock:
            now = self.clock()
            rl = self.config.login_rate_limit
            m = self.machines.get(machine_id)
            if rl.enabled:
                key = self._limit_key(machine_id, client_ip)
                banned_until = self.login_bans.get(key)
                if banned_until is not None and now < banned_until:
                    if rl.retry_extends_ban:
                        self.login_bans[key] = banned_until = now + rl.ban
                        self._save_limits()
                    raise self._login_ban(
                        now, banned_until, "login rate limit: reuse the token until it expires instead of logging in"
                    )
                attempts = [t for t in self.login_attempts[key] if t > now - rl.window]
                attempts.append(now)
                self.login_attempts[key] = attempts
                limit = rl.limit_for(enrolled=bool(m and m.organization_id), sharing=bool(m and m.signals_count > 0))
                if len(attempts) > limit:
                    self.login_bans[key] = now + rl.ban
                    self._save_limits()
                    raise self._login_ban(now, now + rl.ban, f"more than {limit} logins in {rl.window / 60:g} minutes")
                self._save_limits()
            if m is None:
                raise ApiError(403, _NOT_REGISTERED, "register the machine (POST /v3/watchers) before logging in")
            salt, stored = m.password_salt, m.password_hash
        matches = _password_matches(password, salt, stored)
        upgrade = _new_password_hash(password) if matches and m.legacy_hash else None
        with self.lock:
            if not matches or self.machines.get(machine_id) is not m or m.password_hash != stored:
                raise ApiError(403, _BAD_CREDENTIALS, "the password does not match the one registered")
            if upgrade is not None:
                m.password_salt, m.password_hash = upgrade
            now = self.clock()
            m.scenarios = sorted(set(scenarios))
            m.logins.append(now)
            del m.logins[:-_MAX_LOGINS_KEPT]
            m.login_count += 1
            expires = now + float(self.config.token_lifetime)
            jti = uuid_mod.uuid4().hex
            claims: dict[str, Any] = {
                "sub": machine_id,
                "machine_id": machine_id,
                "iat": int(now),
                "exp": int(expires),
                "jti": jti,
                "gen": m.token_generation,
                "iss": "cscapi-emulator",
                "subscription_type": "COMMUNITY",
            }
            if m.organization_id:
                claims["organization_id"] = m.organization_id
            spec = self.faults.get("login") or self.faults.get("*")
            if spec is not None and spec.token_lifetime is not None:
                self.early_tokens[jti] = now + float(spec.token_lifetime)
            self._save_machine(m)
            return encode_jwt(claims, self.secret), float(int(expires))

    def _login_ban(self, now: float, until: float, why: str) -> ApiError:
        """The 403 of a login refused by the rate limit: ``Retry-After`` (seconds until the ban lifts) and a message
        that never mentions credentials, so a client cannot mistake it for a wrong password (see docs/emulator.md)."""
        who = "this machine is" if self.config.login_rate_limit.per == "machine" else "this address is"
        return ApiError(
            403,
            f"too many logins: {who} banned from logging in until {rfc3339_seconds(until)}",
            why,
            {"Retry-After": str(max(1, math.ceil(until - now)))},
        )

    def _save_limits(self) -> None:
        if self._store is not None:
            self._store.set_meta(login_limits={"attempts": dict(self.login_attempts), "bans": self.login_bans})

    def clear_login_bans(self) -> None:
        """Lift every login ban and forget the login counters."""
        with self.lock:
            self.login_bans.clear()
            self.login_attempts.clear()
            self._save_limits()

    def authenticate(self, header: str | None) -> MachineRecord:
        """The machine behind an ``Authorization`` header (``Bearer <jwt>`` or a bare JWT); 401 otherwise."""
        if not header:
            raise ApiError(401, "Unauthorized", "missing Authorization header")
        token = header.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        with self.lock:
            try:
                claims = decode_jwt(token, self.secret)
            except InvalidToken:
                raise ApiError(401, "Unauthorized", "invalid token") from None
            now = self.clock()
            exp = claims.get("exp")
            if not isinstance(exp, (int, float)) or now >= exp:
                raise ApiError(401, "The incoming token has expired")
            early = self.early_tokens.get(str(claims.get("jti")))
            if early is not None and now >= early:
                raise ApiError(401, "The incoming token has expired", "the token was expired early (fault injection)")
            m = self.machines.get(str(claims.get("sub")))
            if m is None or claims.get("gen") != m.token_generation:
                raise ApiError(401, "Unauthorized", "token revoked")
            return m

    def expire_tokens(self, machine_id: str | None = None) -> int:
        """Revoke every token already issued (to one machine, or all); returns how many machines were affected."""
        with self.lock:
            targets = (
                [self.machines[machine_id]]
                if machine_id in self.machines
                else ([] if machine_id else list(self.machines.values()))
            )
            for m in targets:
                m.token_generation += 1
                self._save_machine(m)
            return len(targets)

    def enroll(self, m: MachineRecord, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``/watchers/enroll``: 200 if already enrolled (no overwrite), else 202.

        Any well-formed key (letters and digits, as the swagger's ``EnrollRequest`` says) is accepted, unless
        ``only_listed_keys`` is set: then a key not in ``attachment_keys`` is a 403.
        """
        key = body.get("attachment_key")
        if not isinstance(key, str) or not key.isascii() or not key.isalnum():
            raise ApiError(400, "invalid EnrollRequest: attachment_key must be ASCII letters and digits")
        with self.lock:
            if self.only_listed_keys and key not in self.attachment_keys:
                raise ApiError(
                    403,
                    "attachment key refused",
                    "unknown attachment key (the emulator only accepts listed keys: --attachment-key, "
                    "or POST /admin/attachment-keys)",
                )
            if m.enrollment is not None and not body.get("overwrite"):
                return 200, {"message": "machine already enrolled"}
            now = self.clock()
            m.organization_id = "org" + hashlib.sha256(key.encode()).hexdigest()[:20]
            m.enrollment = {
                "name": body.get("name"),
                "tags": list(body.get("tags") or []),
                "overwrite": bool(body.get("overwrite")),
                "organization_id": m.organization_id,
                "enrolled_at": rfc3339(now),
            }
            self._save_machine(m)
            self._record("enrollments", {"machine_id": m.machine_id, **m.enrollment})
            return 202, {"message": "enrollment accepted; log in again to get a token with organization_id"}

    def autoenroll(self, m: MachineRecord, body: dict[str, Any], base_url: str) -> dict[str, Any]:
        """An enrollment without attachment key: a console URL valid 15 minutes (``expire_at`` in unix ms).

        The emulator has no console to confirm it in: the machine stays not enrolled; the request is recorded.
        """
        with self.lock:
            now = self.clock()
            code = secrets.token_hex(8)
            answer = {
                "message": "open the URL to finish enrolling this machine",
                "url": f"{base_url}console/enroll/{code}",
                "expire_at": int((now + 900) * 1000),
            }
            self._record(
                "enrollments",
                {
                    "machine_id": m.machine_id,
                    "name": body.get("name"),
                    "tags": list(body.get("tags") or []),
                    "autoenroll": True,
                    "url": answer["url"],
                    "requested_at": rfc3339(now),
                },
            )
            return answer

    def add_attachment_key(self, key: str) -> None:
        """Accept one more attachment key (run time; not persisted)."""
        with self.lock:
            self.attachment_keys.add(key)

    def set_only_listed_keys(self, only_listed: bool) -> None:
        """Accept only listed attachment keys (``True``) or any well-formed one (``False``); run time only."""
        with self.lock:
            self.only_listed_keys = only_listed

    # ---- signals and payloads --------------------------------------------------------------------------------

    def add_signals(self, m: MachineRecord, items: list[dict[str, Any]], api: str) -> tuple[int, int]:
        """Record signals, skipping uuids this machine already sent; returns ``(accepted, duplicates)``."""
        with self.lock:
            now = self.clock()
            seen = self.signal_uuids[m.machine_id]
            rows: list[dict[str, Any]] = []
            duplicates = 0
            for item in items:
                u = item.get("uuid")
                if isinstance(u, str) and u:
                    if u in seen:
                        duplicates += 1
                        continue
                    seen.add(u)
                rows.append({"machine_id": m.machine_id, "received_at": now, "api": api, "signal": item})
            self.signals.extend(rows)
            if rows:
                m.signals_count += len(rows)
                if self._store is not None:
                    self._store.add_signals(rows)
                    self._save_machine(m)
            return len(rows), duplicates

    def record_payload(self, kind: str, m: MachineRecord, body: Any, api: str) -> None:
        """Keep a received payload (``metrics``, ``usage_metrics``, ``decisions_delete``, ``decisions_sync``)."""
        with self.lock:
            self._record(
                kind, {"machine_id": m.machine_id, "received_at": rfc3339(self.clock()), "api": api, "body": body}
            )

    def query_signals(self, machine_id: str | None = None, scenario: str | None = None) -> list[dict[str, Any]]:
        """Received signals, oldest first, optionally for one machine and/or one scenario."""
        with self.lock:
            out = []
            for rec in self.signals:
                if machine_id is not None and rec["machine_id"] != machine_id:
                    continue
                if scenario is not None and rec["signal"].get("scenario") != scenario:
                    continue
                out.append({**rec, "received_at": rfc3339(rec["received_at"])})
            return out

    # ---- the community list ----------------------------------------------------------------------------------

    def _add_seeds(self, seeds: list[SeedDecision], now: float) -> None:
        """Bulk-load already canonical seed decisions (start and reset): no re-parsing of values."""
        self.version += 1
        for s in seeds:
            d = CommunityDecision(
                self._next_id, s.uuid, s.value, s.scope, s.scenario, now + s.remaining, now, self.version
            )
            self._next_id += 1
            self._put(d)
        self._heap = [(d.expires_at, d.id, key) for key, d in self.decisions.items()]
        heapq.heapify(self._heap)
        if self._store is not None:
            self._store.save_decisions([d.to_dict() for d in self.decisions.values()], [], [], self.version)

    def _put(self, d: CommunityDecision) -> bool:
        """Insert ``d`` (last in version order), replacing a decision with the same key; True if it replaced one."""
        key = d.key
        replaced = self.decisions.pop(key, None) is not None
        self.decisions[key] = d
        self._live.setdefault((d.scope, d.value), set()).add(d.scenario)
        return replaced

    def _is_live(self, scope: str, value: str, only: set[str] | None = None) -> bool:
        """Whether ``value`` still has a live decision (among the scenarios in ``only``, when given)."""
        scenarios = self._live.get((scope, value))
        if not scenarios:
            return False
        return only is None or not scenarios.isdisjoint(only)

    def add_decisions(
        self, items: Iterable[dict[str, Any]], now: float | None = None
    ) -> tuple[list[CommunityDecision], int]:
        """Add or replace community decisions: ``{value, scope?, scenario?, duration (Go string or seconds), uuid?}``.

        A decision is identified by ``(scope, value, scenario)``: decisions of other scenarios on the same value are
        kept; one with the same scenario is replaced (its duration restarts). Within one call, a later item with
        the same key wins. Returns ``(decisions put in force, how many of them replaced a live one)``.
        Raises ``ApiError(400)`` naming the first bad item; nothing is applied then.
        """
        with self.lock:
            now = self.clock() if now is None else now
            prepared: dict[DecisionKey, tuple[float, str | None]] = {}
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ApiError(400, f"decisions[{i}] must be an object")
                if item.get("scope") is not None and not isinstance(item["scope"], str):
                    raise ApiError(400, f"decisions[{i}].scope must be a string such as ip or range")
                try:
                    value, scope = normalise_value(item.get("value", ""), item.get("scope"))
                except (ValueError, TypeError) as exc:
                    raise ApiError(400, f"decisions[{i}].value: not an IP address or range ({exc})") from None
                scenario = item.get("scenario") or DEFAULT_SCENARIO
                if not isinstance(scenario, str):
                    raise ApiError(400, f"decisions[{i}].scenario must be a string")
                seconds = decision_seconds(item.get("duration", 86400.0), f"decisions[{i}].duration")
                u = item.get("uuid")
                key = (scope, value, scenario)
                prepared.pop(key, None)  # a later item with the same key wins
                prepared[key] = (seconds, u if isinstance(u, str) else None)
            self.version += 1
            added: list[CommunityDecision] = []
            replaced = 0
            for (scope, value, scenario), (seconds, u) in prepared.items():
                key = (scope, value, scenario)
                self.tombstones.pop(key, None)
                d = CommunityDecision(
                    self._next_id, u or str(uuid_mod.uuid4()), value, scope, scenario, now + seconds, now, self.version
                )
                self._next_id += 1
                replaced += self._put(d)
                heapq.heappush(self._heap, (d.expires_at, d.id, key))
                added.append(d)
            if self._store is not None:
                self._store.save_decisions([d.to_dict() for d in added], [], [], self.version)
            return added, replaced

    def _tombstone(self, keys: list[DecisionKey], expire: bool) -> int:
        self.version += 1
        stones = []
        now = self.clock()
        for key in keys:
            d = self.decisions.pop(key, None)
            if d is None:
                continue
            scenarios = self._live.get((d.scope, d.value))
            if scenarios is not None:
                scenarios.discard(d.scenario)
                if not scenarios:
                    del self._live[(d.scope, d.value)]
            stone = {
                "scope": d.scope,
                "value": d.value,
                "scenario": d.scenario,
                "uuid": d.uuid,
                "id": d.id,
                "version": self.version,
                "removed_at": now,
                "reason": "expired" if expire else "deleted",
            }
            self.tombstones.pop(key, None)
            self.tombstones[key] = stone
            stones.append(stone)
        if stones and self._store is not None:
            self._store.save_decisions([], stones, [], self.version)
        return len(stones)

    def remove_decisions(self, values: Iterable[str], *, expire: bool = False, scenario: str | None = None) -> int:
        """Delete (or mark expired) the community decisions on these values (only ``scenario``'s, when given);
        returns how many decisions existed."""
        with self.lock:
            wanted = set()
            for v in values:
                try:
                    wanted.add(normalise_value(v)[0])
                except (ValueError, TypeError):
                    wanted.add(str(v))
            keys = [k for k in self.decisions if k[1] in wanted and (scenario is None or k[2] == scenario)]
            return self._tombstone(keys, expire)

    def expire_due(self) -> int:
        """Turn every decision whose time has come into a tombstone (cheap when nothing is due)."""
        with self.lock:
            now = self.clock()
            due: list[DecisionKey] = []
            while self._heap and self._heap[0][0] <= now:
                _, did, key = heapq.heappop(self._heap)
                d = self.decisions.get(key)
                if d is not None and d.id == did:
                    due.append(key)
            return self._tombstone(due, True) if due else 0

    def list_decisions(self) -> list[dict[str, Any]]:
        """The live community decisions with their remaining seconds."""
        with self.lock:
            self.expire_due()
            now = self.clock()
            return [
                {
                    "id": d.id,
                    "uuid": d.uuid,
                    "value": d.value,
                    "scope": d.scope,
                    "scenario": d.scenario,
                    "remaining": max(0.0, d.expires_at - now),
                    "until": rfc3339(d.expires_at),
                }
                for d in self.decisions.values()
            ]

    def _groups_json(self, decisions: Iterable[CommunityDecision], now: float) -> str:
        groups: dict[tuple[str, str], list[str]] = {}
        memo: dict[int, str] = {}
        for d in decisions:
            remaining = round(d.expires_at - now)
            if remaining < 1:
                remaining = 1
            dur = memo.get(remaining)
            if dur is None:
                dur = memo[remaining] = _int_duration(remaining)
            key = (d.scenario, d.scope)
            bucket = groups.get(key)
            if bucket is None:
                bucket = groups[key] = []
            bucket.append('{"value":' + d.value_json + ',"duration":"' + dur + '"}')
        parts = [
            '{"scenario":'
            + json.dumps(scenario)
            + ',"scope":'
            + json.dumps(scope)
            + ',"decisions":['
            + ",".join(items)
            + "]}"
            for (scenario, scope), items in groups.items()
        ]
        return "[" + ",".join(parts) + "]"

    def _scenario_filter(self, m: MachineRecord) -> tuple[str, ...] | None:
        """The scenarios this machine's list is tailored to (``tailor_to_scenarios``), or ``None`` for all."""
        return tuple(m.scenarios) if self.config.tailor_to_scenarios else None

    def _snapshot_json(self, now: float, only: tuple[str, ...] | None) -> tuple[str, tuple[Any, ...]]:
        """The full list as JSON, rebuilt when the list changed or the cached one is ``snapshot_max_age`` old."""
        snap = self._snapshots.get(only)
        max_age = self.config.snapshot_max_age if self.config.snapshot_cache else 0.0
        if snap is not None and snap[0] == self.version and 0.0 <= now - snap[1] < max_age:
            return snap[2], (snap[0], snap[1], only)
        chosen: Iterable[CommunityDecision] = self.decisions.values()
        if only is not None:
            wanted = set(only)
            chosen = (d for d in self.decisions.values() if d.scenario in wanted)
        text = self._groups_json(chosen, now)
        if snap is not None and snap[0] != self.version:
            self._snapshots.clear()
            self._responses.clear()
        if len(self._snapshots) >= 16:  # a handful of scenario sets at most; forget the rest
            self._snapshots.clear()
            self._responses.clear()
        self._snapshots[only] = (self.version, now, text)
        return text, (self.version, now, only)

    def _changes_since(
        self, since: int, only: tuple[str, ...] | None = None
    ) -> tuple[list[CommunityDecision], list[dict[str, Any]]]:
        wanted = set(only) if only is not None else None
        new: list[CommunityDecision] = []
        for d in reversed(self.decisions.values()):
            if d.version <= since:
                break
            if wanted is None or d.scenario in wanted:
                new.append(d)
        new.reverse()
        # `deleted` removes every CAPI decision on a value (protocol notes §6.2): a value is only reported once none
        # of its decisions this machine is served remains, however many of them were removed.
        gone: list[dict[str, Any]] = []
        for stone in reversed(self.tombstones.values()):
            if stone["version"] <= since:
                break
            if (wanted is None or stone["scenario"] in wanted) and not self._is_live(
                stone["scope"], stone["value"], wanted
            ):
                gone.append(stone)
        gone.reverse()
        return new, gone

    def _prune_tombstones(self) -> None:
        if len(self.tombstones) < _TOMBSTONE_PRUNE_AT:
            return
        pulled = [m.last_pull_version for m in self.machines.values() if m.last_pull_version is not None]
        floor = min(pulled) if pulled else self.version
        drop: list[DecisionKey] = []
        for key, stone in self.tombstones.items():  # ordered by version: stop at the first one still needed
            if stone["version"] > floor:
                break
            drop.append(key)
        for k in drop:
            del self.tombstones[k]
        if drop and self._store is not None:
            self._store.save_decisions([], [], drop, self.version)

    def _links(self, base_url: str, additional_pull: bool) -> dict[str, Any]:
        blocklists = (
            [
                {
                    "name": bl["name"],
                    "url": f"{base_url}downloads/blocklists/{bl['id']}",
                    "remediation": bl["remediation"],
                    "scope": bl["scope"],
                    "duration": bl["duration"],
                }
                for bl in self.blocklists.values()
            ]
            if additional_pull
            else []
        )
        allowlists = [
            {
                "id": al["id"],
                "name": al["name"],
                "description": al["description"],
                "url": f"{base_url}downloads/allowlists/{al['id']}",
                "created_at": rfc3339_seconds(al["created_at"]),
                "updated_at": rfc3339_seconds(al["updated_at"]),
            }
            for al in self.allowlists.values()
        ]
        return {"blocklists": blocklists, "allowlists": allowlists}

    def stream_v3(
        self, m: MachineRecord, *, startup: bool, community_pull: bool, additional_pull: bool, base_url: str
    ) -> bytes:
        """The JSON body of ``GET /v3/decisions/stream`` for this machine, and its pull position moves on.

        Full (startup) answers are cached per list version for up to ``snapshot_max_age`` seconds.
        """
        with self.lock:
            self.expire_due()
            now = self.clock()
            m.last_pull_at = now
            if community_pull and (startup or m.last_pull_version is None):
                new_json, ident = self._snapshot_json(now, self._scenario_filter(m))
                m.last_pull_version = self.version
                self._save_machine(m)
                key = (ident, self.lists_version, base_url, additional_pull)
                body = self._responses.get(key)
                if body is None:
                    links = json.dumps(self._links(base_url, additional_pull), separators=(",", ":"))
                    body = ('{"new":' + new_json + ',"deleted":[],"links":' + links + "}").encode()
                    if self.config.snapshot_cache:
                        if len(self._responses) >= 8:  # stale answers (older snapshots, older lists) go here
                            self._responses.clear()
                        self._responses[key] = body
                return body
            new_json = "[]"
            deleted_json = "[]"
            if community_pull:
                assert m.last_pull_version is not None
                new, gone = self._changes_since(m.last_pull_version, self._scenario_filter(m))
                new_json = self._groups_json(new, now)
                by_scope: dict[str, dict[str, None]] = {}  # ordered sets: a value once, however many decisions left
                for stone in gone:
                    by_scope.setdefault(stone["scope"], {})[stone["value"]] = None
                deleted_json = json.dumps(
                    [{"scope": scope, "decisions": list(values)} for scope, values in by_scope.items()],
                    separators=(",", ":"),
                )
                m.last_pull_version = self.version
            links = json.dumps(self._links(base_url, additional_pull), separators=(",", ":"))
            self._save_machine(m)
            self._prune_tombstones()
            return ('{"new":' + new_json + ',"deleted":' + deleted_json + ',"links":' + links + "}").encode()

    def stream_v2(self, m: MachineRecord, *, startup: bool, community_pull: bool, additional_pull: bool) -> bytes:
        """The flat, LAPI-style ``GET /v2/decisions/stream`` answer (protocol notes §6.4): no links, lists inline."""
        with self.lock:
            self.expire_due()
            now = self.clock()
            new: list[dict[str, Any]] = []
            deleted: list[dict[str, Any]] = []
            if community_pull:
                only = self._scenario_filter(m)
                if startup or m.last_pull_version is None:
                    chosen: Iterable[CommunityDecision] = [
                        d for d in self.decisions.values() if only is None or d.scenario in only
                    ]
                    gone: list[dict[str, Any]] = []
                else:
                    chosen, gone = self._changes_since(m.last_pull_version, only)
                for d in chosen:
                    new.append(
                        {
                            "id": d.id,
                            "uuid": d.uuid,
                            "origin": "CAPI",
                            "type": "ban",
                            "scope": d.scope.capitalize(),
                            "value": d.value,
                            "scenario": d.scenario,
                            "duration": format_go_duration(max(1, round(d.expires_at - now))),
                            "simulated": False,
                        }
                    )
                for stone in gone:
                    deleted.append(
                        {
                            "id": stone["id"],
                            "uuid": stone["uuid"],
                            "origin": "CAPI",
                            "type": "ban",
                            "scope": stone["scope"].capitalize(),
                            "value": stone["value"],
                            "scenario": stone["scenario"],
                            "duration": "0s",
                            "simulated": False,
                        }
                    )
                m.last_pull_version = self.version
            if additional_pull:
                self._v2_list_changes(m, startup, now, new, deleted)
            m.last_pull_at = now
            self._save_machine(m)
            return json.dumps({"new": new, "deleted": deleted}, separators=(",", ":")).encode()

    def _v2_list_changes(
        self, m: MachineRecord, startup: bool, now: float, new: list[dict[str, Any]], deleted: list[dict[str, Any]]
    ) -> None:
        """Published-list entries for a v2 pull, inline (v2 has no links): only what changed since this machine's
        previous pull (everything with ``startup``), and a ``deleted`` entry for each value no list holds any more.

        An entry already sent is sent again once the engine's copy (``duration`` from when it was sent) would run
        out before the next pull (LAPI pulls every 2 h; 15 min of margin, as LAPI refetches v3 links).
        """
        current: dict[str, tuple[dict[str, Any], str]] = {}
        for bl in self.blocklists.values():
            for line in bl["content"]:
                key = json.dumps([bl["name"], bl["scope"], line, bl["remediation"], bl["duration"]])
                current.setdefault(key, (bl, line))
        held = {(bl["scope"].lower(), line) for bl, line in current.values()}
        sent = m.v2_list_entries
        reported: set[tuple[str, str, str]] = set()
        for key in [k for k in sent if k not in current]:
            del sent[key]
            name, scope, value, remediation, _duration = json.loads(key)
            # 1.4.6 deletes every `lists` decision on the value: only once no list holds it any more
            if (scope.lower(), value) in held or (scope.lower(), value, remediation) in reported:
                continue
            reported.add((scope.lower(), value, remediation))
            deleted.append(
                {
                    "origin": "lists",
                    "type": remediation,
                    "scope": scope.capitalize(),
                    "value": value,
                    "scenario": name,
                    "duration": "0s",
                    "simulated": False,
                }
            )
        for key, (bl, line) in current.items():
            sent_at = sent.get(key)
            if not startup and sent_at is not None:
                seconds = parse_go_duration(bl["duration"])
                if sent_at + seconds - _V2_REFRESH_MARGIN > now:
                    continue
            sent[key] = now
            new.append(
                {
                    "origin": "lists",
                    "type": bl["remediation"],
                    "scope": bl["scope"].capitalize(),
                    "value": line,
                    "scenario": bl["name"],
                    "duration": bl["duration"],
                    "simulated": False,
                }
            )

    # ---- published lists -------------------------------------------------------------------------------------

    @staticmethod
    def list_id(name: str) -> str:
        """A stable, URL-safe id for a list name."""
        return hashlib.sha256(name.encode()).hexdigest()[:24]

    def _bump_time(self, previous: float | None) -> float:
        now = self.clock()
        # Last-Modified has one-second resolution: make each change visible to If-Modified-Since.
        return now if previous is None else max(now, float(int(previous)) + 1.0)

    def publish_blocklist(
        self, name: str, content: Iterable[str], remediation: str = "ban", scope: str = "ip", duration: str = "24h"
    ) -> dict[str, Any]:
        """Create or replace a blocklist (one IP or CIDR per item); 400 names the first bad value."""
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "blocklist name must be a non-empty string")
        for label, value in (("remediation", remediation), ("scope", scope)):
            if not isinstance(value, str) or not value:
                raise ApiError(400, f"blocklist {label} must be a non-empty string")
        if not isinstance(duration, str):
            raise ApiError(400, f"blocklist duration {duration!r} is not a positive Go duration like 24h")
        decision_seconds(duration, "blocklist duration")
        if isinstance(content, str):
            content = content.splitlines()
        lines: list[str] = []
        for i, raw in enumerate(content):
            if not isinstance(raw, str):
                raise ApiError(400, f"content[{i}] must be a string")
            if not raw.strip():
                continue
            try:
                lines.append(normalise_value(raw)[0])
            except ValueError:
                raise ApiError(400, f"content[{i}]: {raw!r} is not an IP address or range") from None
        with self.lock:
            list_id = self.list_id(name)
            previous = self.blocklists.get(list_id)
            now = self.clock()
            body = {
                "id": list_id,
                "name": name,
                "remediation": remediation,
                "scope": scope,
                "duration": duration,
                "content": lines,
                "created_at": previous["created_at"] if previous else now,
                "updated_at": self._bump_time(previous["updated_at"] if previous else None),
            }
            self.blocklists[list_id] = body
            self.lists_version += 1
            if self._store is not None:
                self._store.save_list("blocklist", list_id, body)
            return body

    def publish_allowlist(self, name: str, items: Iterable[Any] = (), description: str = "") -> dict[str, Any]:
        """Create or replace an allowlist; items are values or ``{value, description?, expiration?}``."""
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "allowlist name must be a non-empty string")
        if not isinstance(description, str):
            raise ApiError(400, "allowlist description must be a string")
        with self.lock:
            now = self.clock()
            entries: list[dict[str, Any]] = []
            for i, item in enumerate(items):
                entry = {"value": item} if isinstance(item, str) else item
                if not isinstance(entry, dict):
                    raise ApiError(400, f"items[{i}] must be a string or an object")
                try:
                    value = normalise_value(entry.get("value", ""))[0]
                except (ValueError, TypeError):
                    raise ApiError(
                        400, f"items[{i}].value: {entry.get('value')!r} is not an IP address or range"
                    ) from None
                out: dict[str, Any] = {
                    "value": value,
                    "description": str(entry.get("description") or ""),
                    "created_at": entry.get("created_at") or rfc3339_seconds(now),
                }
                expiration = entry.get("expiration")
                if expiration is not None:
                    try:
                        out["expiration"] = parse_timestamp(expiration).strftime("%Y-%m-%dT%H:%M:%SZ")
                    except ValueError:
                        raise ApiError(400, f"items[{i}].expiration: {expiration!r} is not an RFC 3339 time") from None
                entries.append(out)
            list_id = self.list_id(name)
            previous = self.allowlists.get(list_id)
            body = {
                "id": list_id,
                "name": name,
                "description": description,
                "items": entries,
                "created_at": previous["created_at"] if previous else now,
                "updated_at": self._bump_time(previous["updated_at"] if previous else None),
            }
            self.allowlists[list_id] = body
            self.lists_version += 1
            if self._store is not None:
                self._store.save_list("allowlist", list_id, body)
            return body

    def remove_list(self, kind: str, name_or_id: str) -> bool:
        """Unpublish a blocklist or allowlist by name or id; False when there was none."""
        with self.lock:
            lists = self.blocklists if kind == "blocklist" else self.allowlists
            list_id = name_or_id if name_or_id in lists else self.list_id(name_or_id)
            if lists.pop(list_id, None) is None:
                return False
            self.lists_version += 1
            if self._store is not None:
                self._store.save_list(kind, list_id, None)
            return True

    # ---- faults and counters ---------------------------------------------------------------------------------

    def set_fault(self, endpoint: str, spec: FaultSpec) -> None:
        """Install (or replace) the fault of one endpoint (``*`` = every CAPI endpoint without its own)."""
        with self.lock:
            self.faults[endpoint] = spec

    def clear_faults(self, endpoint: str | None = None) -> None:
        """Remove one endpoint's fault, or all of them."""
        with self.lock:
            if endpoint is None:
                self.faults.clear()
            else:
                self.faults.pop(endpoint, None)

    def take_fault(self, endpoint: str) -> FaultAction:
        """Decide what goes wrong with this request (counts down ``remaining``)."""
        with self.lock:
            name = endpoint if endpoint in self.faults else "*"
            spec = self.faults.get(name)
            if spec is None:
                return _NO_FAULT
            if spec.remaining is not None:
                spec.remaining -= 1
                if spec.remaining <= 0:
                    del self.faults[name]
            rng = self.fault_rng
            kind: str | None = None
            if spec.drop_rate and rng.random() < spec.drop_rate:
                kind = "drop"
            elif spec.rate_limit_rate and rng.random() < spec.rate_limit_rate:
                kind = "429"
            elif spec.error_rate and rng.random() < spec.error_rate:
                kind = "5xx"
            if kind is None and not spec.latency:
                return _NO_FAULT
            return FaultAction(spec.latency, kind, spec.error_status, spec.retry_after)

    def count_request(self, endpoint: str, status: int) -> None:
        """Count one answered request (admin ``/admin/requests``)."""
        with self.lock:
            self.request_counts[(endpoint, status)] += 1

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
                "persistent": self._store is not None,
            }
