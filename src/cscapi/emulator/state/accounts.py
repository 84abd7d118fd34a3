"""Machines and their tokens: registration, login (rate limit and bans), password hashing, token checks,
enrollment and attachment keys."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import uuid as uuid_mod
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cscapi.emulator.state.base import ApiError, StateContext, rfc3339, rfc3339_seconds
from cscapi.emulator.state.faults import Faults
from cscapi.emulator.tokens import InvalidToken, decode_jwt, encode_jwt

if TYPE_CHECKING:
    from cscapi.emulator.state.inbox import Inbox

__all__ = ["Accounts", "MachineRecord"]

_MAX_LOGINS_KEPT = 1000
#: Login refusals about credentials (never with ``Retry-After``): a client re-registers on these.
_BAD_CREDENTIALS = "invalid machine_id or password"
_NOT_REGISTERED = "machine not registered: invalid machine_id or password"


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


class Accounts:
    """The registered machines, the login counters and bans, the token secret, and the attachment keys."""

    def __init__(self, ctx: StateContext, faults: Faults, inbox: Inbox) -> None:
        self.ctx = ctx
        self.faults = faults
        self.inbox = inbox
        self.early_tokens: dict[str, float] = {}
        self.reset_settings()
        self.clear()

    def clear(self) -> None:
        """Forget every machine and login counter; a new token secret (every token issued before is invalid)."""
        self.secret = secrets.token_bytes(32)
        self.machines: dict[str, MachineRecord] = {}
        self.login_attempts: dict[str, list[float]] = defaultdict(list)
        self.login_bans: dict[str, float] = {}

    def reset_settings(self) -> None:
        """Back to the configured attachment keys; forget early-expiring tokens."""
        self.attachment_keys: set[str] = set(self.ctx.config.attachment_keys)
        self.only_listed_keys = bool(self.ctx.config.only_listed_attachment_keys)
        self.early_tokens.clear()

    def load(self, meta: dict[str, Any]) -> None:
        """Read the secret, the machines and the login counters back from the state file."""
        store = self.ctx.store
        assert store is not None
        self.secret = bytes.fromhex(meta["secret"])
        for body in store.rows("machines"):
            m = MachineRecord(**body)
            self.machines[m.machine_id] = m
        limits = meta.get("login_limits") or {}
        self.login_attempts.update({k: list(v) for k, v in limits.get("attempts", {}).items()})
        self.login_bans.update(limits.get("bans", {}))

    def register(self, machine_id: str, password: str, api: str = "v3") -> MachineRecord:
        """Create a machine; 409 if the id is taken."""
        taken = ApiError(
            409,
            f"machine {machine_id} is already registered",
            "register a new machine id, or log in with the existing credentials",
        )
        with self.ctx.lock:
            if machine_id in self.machines:
                raise taken
        salt, hashed = _new_password_hash(password)  # slow: outside the lock, so other requests go on
        with self.ctx.lock:
            if machine_id in self.machines:
                raise taken
            m = MachineRecord(machine_id, salt, hashed, self.ctx.clock(), api=api)
            self.machines[machine_id] = m
            self.ctx.save_machine(m)
            return m

    def reset_password(self, machine_id: str, password: str) -> None:
        """``/watchers/reset``: new password, and every token issued before is revoked."""
        with self.ctx.lock:
            if machine_id not in self.machines:
                raise ApiError(404, f"machine {machine_id} not found")
        salt, hashed = _new_password_hash(password)  # slow: outside the lock
        with self.ctx.lock:
            m = self.machines.get(machine_id)
            if m is None:
                raise ApiError(404, f"machine {machine_id} not found")
            m.password_salt, m.password_hash = salt, hashed
            m.token_generation += 1
            self.ctx.save_machine(m)

    def _limit_key(self, machine_id: str, client_ip: str) -> str:
        return machine_id if self.ctx.config.login_rate_limit.per == "machine" else f"ip:{client_ip}"

    def login(self, machine_id: str, password: str, scenarios: list[str], client_ip: str) -> tuple[str, float]:
        """Check the rate limit and the credentials, then issue a token; returns ``(token, expires_at)``.

        The password check (a slow key derivation) runs outside the lock, so other requests are not held up.
        """
        with self.ctx.lock:
            now = self.ctx.clock()
            rl = self.ctx.config.login_rate_limit
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
        with self.ctx.lock:
            if not matches or self.machines.get(machine_id) is not m or m.password_hash != stored:
                raise ApiError(403, _BAD_CREDENTIALS, "the password does not match the one registered")
            if upgrade is not None:
                m.password_salt, m.password_hash = upgrade
            now = self.ctx.clock()
            m.scenarios = sorted(set(scenarios))
            m.logins.append(now)
            del m.logins[:-_MAX_LOGINS_KEPT]
            m.login_count += 1
            expires = now + float(self.ctx.config.token_lifetime)
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
            early = self.faults.token_lifetime()
            if early is not None:
                self.early_tokens[jti] = now + early
            self.ctx.save_machine(m)
            return encode_jwt(claims, self.secret), float(int(expires))

    def _login_ban(self, now: float, until: float, why: str) -> ApiError:
        """The 403 of a login refused by the rate limit: ``Retry-After`` (seconds until the ban lifts) and a message
        that never mentions credentials, so a client cannot mistake it for a wrong password (see docs/emulator.md)."""
        who = "this machine is" if self.ctx.config.login_rate_limit.per == "machine" else "this address is"
        return ApiError(
            403,
            f"too many logins: {who} banned from logging in until {rfc3339_seconds(until)}",
            why,
            {"Retry-After": str(max(1, math.ceil(until - now)))},
        )

    def _save_limits(self) -> None:
        if self.ctx.store is not None:
            self.ctx.store.set_meta(login_limits={"attempts": dict(self.login_attempts), "bans": self.login_bans})

    def clear_login_bans(self) -> None:
        """Lift every login ban and forget the login counters."""
        with self.ctx.lock:
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
        with self.ctx.lock:
            try:
                claims = decode_jwt(token, self.secret)
            except InvalidToken:
                raise ApiError(401, "Unauthorized", "invalid token") from None
            now = self.ctx.clock()
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
        with self.ctx.lock:
            targets = (
                [self.machines[machine_id]]
                if machine_id in self.machines
                else ([] if machine_id else list(self.machines.values()))
            )
            for m in targets:
                m.token_generation += 1
                self.ctx.save_machine(m)
            return len(targets)

    def enroll(self, m: MachineRecord, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``/watchers/enroll``: 200 if already enrolled (no overwrite), else 202.

        Any well-formed key (letters and digits, as the swagger's ``EnrollRequest`` says) is accepted, unless
        ``only_listed_keys`` is set: then a key not in ``attachment_keys`` is a 403.
        """
        key = body.get("attachment_key")
        if not isinstance(key, str) or not key.isascii() or not key.isalnum():
            raise ApiError(400, "invalid EnrollRequest: attachment_key must be ASCII letters and digits")
        with self.ctx.lock:
            if self.only_listed_keys and key not in self.attachment_keys:
                raise ApiError(
                    403,
                    "attachment key refused",
                    "unknown attachment key (the emulator only accepts listed keys: --attachment-key, "
                    "or POST /admin/attachment-keys)",
                )
            if m.enrollment is not None and not body.get("overwrite"):
                return 200, {"message": "machine already enrolled"}
            now = self.ctx.clock()
            m.organization_id = "org" + hashlib.sha256(key.encode()).hexdigest()[:20]
            m.enrollment = {
                "name": body.get("name"),
                "tags": list(body.get("tags") or []),
                "overwrite": bool(body.get("overwrite")),
                "organization_id": m.organization_id,
                "enrolled_at": rfc3339(now),
            }
            self.ctx.save_machine(m)
            self.inbox.record("enrollments", {"machine_id": m.machine_id, **m.enrollment})
            return 202, {"message": "enrollment accepted; log in again to get a token with organization_id"}

    def autoenroll(self, m: MachineRecord, body: dict[str, Any], base_url: str) -> dict[str, Any]:
        """An enrollment without attachment key: a console URL valid 15 minutes (``expire_at`` in unix ms).

        The emulator has no console to confirm it in: the machine stays not enrolled; the request is recorded.
        """
        with self.ctx.lock:
            now = self.ctx.clock()
            code = secrets.token_hex(8)
            answer = {
                "message": "open the URL to finish enrolling this machine",
                "url": f"{base_url}console/enroll/{code}",
                "expire_at": int((now + 900) * 1000),
            }
            self.inbox.record(
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
        with self.ctx.lock:
            self.attachment_keys.add(key)

    def set_only_listed_keys(self, only_listed: bool) -> None:
        """Accept only listed attachment keys (``True``) or any well-formed one (``False``); run time only."""
        with self.ctx.lock:
            self.only_listed_keys = only_listed
