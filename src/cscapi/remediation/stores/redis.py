"""``redis://host:port/db``: the decision state shared by every worker of every host.

Every key lives under the namespace ``<p>#`` where ``<p>`` is ``key_prefix`` (default ``cscapi:``) with ``\\`` and
``#`` escaped by a backslash: ``<p>#state`` (a hash holding ``version`` and the serialised ``blob``, written together
by one Lua script that first checks the refresh lock's token), ``<p>#dirty``, ``<p>#lock`` (``SET NX PX``, released by
a token-checked Lua script), ``<p>#counters`` (a hash the workers' flushes add to, by a script applying each batch id
once), ``<p>#local_decisions`` and ``<p>#local_version``, ``<p>#bucket:*`` (detector buckets, with a TTL) and
``<p>#meta:*``. The first bare
``#`` ends the namespace, so no prefix's namespace is a prefix of another's keys (``a:`` never reaches ``a:x:``'s).
``clear`` deletes only that namespace (``SCAN`` + ``UNLINK``), never the database. Each commit (and ``clear``)
publishes on the ``<p>#events`` channel: the sync thread of every worker subscribes to it and reloads at once,
polling the version as well in case a notification is lost. Keys of the 0.7 layout (``<p>state``, ``<p>counters``,
...) are copied once into the new namespace by the first engine that finds it empty (then marked dirty, so the next
pull is a startup pull); they are never deleted automatically. The ``redis`` package is imported only when this store
is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from typing import Any

from cscapi.errors import ConfigurationError, DecisionStoreError
from cscapi.redact import mask_url, scrub
from cscapi.remediation.state import State, StateFormatError, decode_state, encode_state
from cscapi.remediation.stores.base import (
    CACHE_PREFIX,
    Counters,
    DecisionStore,
    LocalDecisions,
    _pack,
    _unpack,
    bucket_ttl,
    log,
)

__all__ = ["RedisStore"]

_COMMIT = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'blob', ARGV[2])
if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', KEYS[4], ARGV[1])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_DECR = """
for i = 1, #ARGV, 2 do
  local left = redis.call('HINCRBY', KEYS[1], ARGV[i], -tonumber(ARGV[i + 1]))
  if left == 0 then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 1
"""
_INCR = """
if ARGV[1] ~= '' and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', 600) then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], tonumber(ARGV[i + 1])) end
return 1
"""

_LEAK = """
local h = redis.call('HMGET', KEYS[1], 'l', 't', 'b')
local now, cap, leak, bh = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local level, last, till = tonumber(h[1]) or 0, tonumber(h[2]) or now, tonumber(h[3]) or 0
if till > now then return 0 end
if leak > 0 then level = math.max(0, level - math.max(0, now - last) / leak) end
level = level + 1
local over = 0
if level > cap then over, level, till = 1, 0, now + bh end
redis.call('HSET', KEYS[1], 'l', string.format('%.6f', level), 't', ARGV[1], 'b', string.format('%.6f', till))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return over
"""

_ADD_LOCAL = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or tonumber(cjson.decode(cur)[1]) < tonumber(ARGV[3]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], 'local')
return 1
"""

_MIGRATE = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[7]) == 1 then return 0 end
redis.call('SET', KEYS[7], '1')
local v = redis.call('HMGET', KEYS[2], 'version', 'blob')
if not v[1] or not v[2] then return 0 end
redis.call('HSET', KEYS[1], 'version', v[1], 'blob', v[2])
redis.call('SET', KEYS[5], '1')
if redis.call('EXISTS', KEYS[3]) == 0 and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[3], unpack(redis.call('HGETALL', KEYS[4])))
end
local last = redis.call('GET', KEYS[6])
if last then redis.call('SET', KEYS[8], last) end
return 1
"""


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def namespace(key_prefix: str) -> str:
    """The delimited namespace of ``key_prefix``: ``\\`` and ``#`` escaped, then a bare ``#`` (``cscapi:#``)."""
    return key_prefix.replace("\\", "\\\\").replace("#", "\\#") + "#"


class RedisStore(DecisionStore):
    """Decision store on Redis; ``key_prefix`` namespaces every key (several applications can share one database).

    Why this size: one short method per operation of the ``DecisionStore`` contract (state, lock, counters, meta,
    cache, local decisions, buckets), each a Redis command or script.
    """

    shared = True
    notifies = True

    def __init__(self, uri: str, *, key_prefix: str = "cscapi:", socket_timeout: float = 5.0) -> None:
        try:
            import redis
        except ImportError:
            raise ConfigurationError(
                "the Redis decision store needs the redis package", hint="pip install 'cscapi[redis]'"
            ) from None
        if not key_prefix:
            raise ConfigurationError("key_prefix must not be empty: every key of the Redis store lives under it")
        self.uri = mask_url(uri)
        self.prefix = key_prefix
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        try:
            self._redis: Any = redis.Redis.from_url(
                uri, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URI {self.uri!r}: {scrub(str(exc), uri)}") from None
        ns = self.namespace = namespace(key_prefix)
        self.k_state = ns + "state"
        self.k_lock = ns + "lock"
        self.k_dirty = ns + "dirty"
        self.k_counters = ns + "counters"
        self.k_events = ns + "events"
        self.k_meta = ns + "meta:"
        self.k_local = ns + "local_decisions"
        self.k_local_version = ns + "local_version"
        self._commit = self._redis.register_script(_COMMIT)
        self._release = self._redis.register_script(_RELEASE)
        self._decr = self._redis.register_script(_DECR)
        self._incr = self._redis.register_script(_INCR)
        self._leak = self._redis.register_script(_LEAK)
        self._add_local = self._redis.register_script(_ADD_LOCAL)
        self._migrate = self._redis.register_script(_MIGRATE)
        self._migrated = False
        self._pubsub: Any = None
        self._pubsub_pid = 0

    def _migrate_once(self) -> None:
        """Copy a 0.7-layout state (``<prefix>state``, counters, last push) into the namespace, once, if it is empty."""
        if self._migrated:
            return
        p = self.prefix
        keys = [self.k_state, p + "state", self.k_counters, p + "counters", self.k_dirty]
        keys += [p + "meta:last_metrics_push", self.namespace + "migrated", self.k_meta + "last_metrics_push"]
        if self._migrate(keys=keys, args=[]):
            log.warning(
                "decision store %s: copied the state of the old key layout (%sstate) into %sstate; the next pull is "
                "a startup pull; delete the old keys once every worker runs this version",
                self.uri,
                p,
                self.namespace,
            )
        self._migrated = True

    def _fail(self, exc: BaseException) -> DecisionStoreError:
        return DecisionStoreError(f"Redis decision store {self.uri} failed: {type(exc).__name__}: {exc}")

    def version(self) -> str | None:
        try:
            self._migrate_once()
            raw = self._redis.hget(self.k_state, "version")
        except self._errors as exc:
            raise self._fail(exc) from exc
        return None if raw is None else raw.decode()

    def load(self) -> tuple[str | None, State | None]:
        try:
            self._migrate_once()
            version, blob = self._redis.hmget(self.k_state, ["version", "blob"])
        except self._errors as exc:
            raise self._fail(exc) from exc
        if version is None:
            return None, None
        if not blob:  # a cleared store: a version, no state
            return version.decode(), None
        try:
            return version.decode(), decode_state(blob)
        except StateFormatError as exc:
            log.warning("decision store %s: %s; starting from an empty state", self.uri, exc)
            return version.decode(), None

    def commit(self, state: State, version: str, token: str, clean: bool) -> None:
        blob = encode_state(state)
        try:
            ok = self._commit(
                keys=[self.k_state, self.k_lock, self.k_dirty, self.k_events],
                args=[version, blob, token, "1" if clean else "0"],
            )
        except self._errors as exc:
            raise self._fail(exc) from exc
        if not ok:
            raise DecisionStoreError("the refresh lock was lost before the commit (cleared or expired)")

    def is_dirty(self) -> bool:
        try:
            return bool(self._redis.exists(self.k_dirty))
        except self._errors as exc:
            raise self._fail(exc) from exc

    def mark_dirty(self) -> None:
        try:
            self._redis.set(self.k_dirty, "1")
        except self._errors as exc:
            raise self._fail(exc) from exc

    def acquire_lock(self, token: str, ttl: float) -> bool:
        try:
            return bool(self._redis.set(self.k_lock, token, nx=True, px=max(1, int(ttl * 1000))))
        except self._errors as exc:
            raise self._fail(exc) from exc

    def release_lock(self, token: str) -> None:
        try:
            self._release(keys=[self.k_lock], args=[token])
        except self._errors as exc:
            raise self._fail(exc) from exc

    @staticmethod
    def _field(origin: str, remediation: str) -> str:
        return json.dumps([origin, remediation], separators=(",", ":"))

    def incr_counter(self, origin: str, remediation: str, delta: int = 1) -> None:
        try:
            self._redis.hincrby(self.k_counters, self._field(origin, remediation), delta)
        except self._errors as exc:
            raise self._fail(exc) from exc

    def incr_counters(self, counts: Counters, batch_id: str | None = None) -> None:
        """Every ``HINCRBY`` in one script (atomic); with ``batch_id``, applied once only (a marker key kept 10 min):
        when a reply is lost, the caller retries the same batch and nothing is counted twice."""
        if not counts:
            return
        args: list[Any] = [batch_id or ""]
        for (origin, remediation), delta in counts.items():
            args += [self._field(origin, remediation), delta]
        try:
            self._incr(keys=[self.k_counters, self.namespace + "flushed:" + (batch_id or "")], args=args)
        except self._errors as exc:
            raise self._fail(exc) from exc

    # ---- local decisions ------------------------------------------------------------------------------------

    def add_local_decision(self, ip: str, type_: str, until: float, scenario: str) -> None:
        """One script: keep the later expiry of (ip, type) in the hash, ``INCR`` the local version, publish."""
        value = json.dumps([float(until), scenario], separators=(",", ":"))
        try:
            self._add_local(
                keys=[self.k_local, self.k_local_version, self.k_events],
                args=[ip + "\x1f" + type_, value, repr(float(until))],
            )
        except self._errors as exc:
            raise self._fail(exc) from exc

    def leak_bucket(self, key: str, capacity: int, leak_seconds: float, blackhole: float, now: float) -> bool:
        """One Lua script (atomic): read, leak, pour, write back; the key expires once the bucket is empty and out of
        its blackhole (``<p>#bucket:<key>``)."""
        ttl_ms = int(bucket_ttl(capacity, leak_seconds, blackhole) * 1000)
        args: list[Any] = [repr(float(now)), capacity, repr(float(leak_seconds)), repr(float(blackhole)), ttl_ms]
        try:
            return bool(self._leak(keys=[self.namespace + "bucket:" + key], args=args))
        except self._errors as exc:
            raise self._fail(exc) from exc

    def local_version(self) -> str | None:
        try:
            raw = self._redis.get(self.k_local_version)
        except self._errors as exc:
            raise self._fail(exc) from exc
        return None if raw is None else raw.decode()

    def local_decisions(self, now: float) -> tuple[str | None, LocalDecisions]:
        """Read version and decisions together (``MULTI``); expired entries are deleted (``HDEL``) as they are seen."""
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self.k_local_version)
                pipe.hgetall(self.k_local)
                raw_version, raw = pipe.execute()
            live: LocalDecisions = []
            expired: list[bytes] = []
            for field, value in raw.items():
                try:
                    ip, sep, type_ = field.decode().partition("\x1f")
                    until, scenario = json.loads(value)
                    entry = (ip, type_, float(until), str(scenario))
                    if not sep:
                        raise ValueError(field)
                except (ValueError, TypeError):
                    log.warning("ignoring an unreadable local decision in %s", self.uri)
                    continue
                if entry[2] > now:
                    live.append(entry)
                else:
                    expired.append(field)
            if expired:
                self._redis.hdel(self.k_local, *expired)
        except self._errors as exc:
            raise self._fail(exc) from exc
        return (None if raw_version is None else raw_version.decode()), live

    def counters(self) -> Counters:
        try:
            raw = self._redis.hgetall(self.k_counters)
        except self._errors as exc:
            raise self._fail(exc) from exc
        out: Counters = {}
        for field, count in raw.items():
            try:
                origin, remediation = json.loads(field)
                n = int(count)
            except (ValueError, TypeError):
                log.warning("ignoring an unreadable usage counter %r in %s", field, self.uri)
                continue
            if n:
                out[(str(origin), str(remediation))] = n
        return out

    def decr_counters(self, pushed: Counters) -> None:
        args: list[Any] = []
        for (origin, remediation), n in pushed.items():
            args += [self._field(origin, remediation), n]
        if not args:
            return
        try:
            self._decr(keys=[self.k_counters], args=args)
        except self._errors as exc:
            raise self._fail(exc) from exc

    def get_meta(self, key: str) -> str | None:
        try:
            raw = self._redis.get(self.k_meta + key)
        except self._errors as exc:
            raise self._fail(exc) from exc
        return None if raw is None else raw.decode()

    def set_meta(self, key: str, value: str) -> None:
        try:
            self._redis.set(self.k_meta + key, value)
        except self._errors as exc:
            raise self._fail(exc) from exc

    def cache_get(self, key: str, now: float) -> str | None:
        return _unpack(self.get_meta(CACHE_PREFIX + key), now)

    def cache_put(self, key: str, value: str, expires_at: float, now: float) -> None:
        """``SET`` with a TTL: Redis drops the entry itself when it expires."""
        ttl_ms = int((expires_at - now) * 1000)
        if ttl_ms <= 0:
            return
        try:
            self._redis.set(self.k_meta + CACHE_PREFIX + key, _pack(value, expires_at), px=ttl_ms)
        except self._errors as exc:
            raise self._fail(exc) from exc

    def clear(self) -> None:
        """UNLINK every key of the namespace except the usage counters and meta (SCAN, never FLUSHDB), then leave a
        "cleared" version (no state): other workers then know the store was emptied on purpose, not lost."""
        keep = {self.k_counters.encode(), (self.namespace + "migrated").encode(), self.k_local_version.encode()}
        meta = self.k_meta.encode()
        try:
            batch: list[bytes] = []
            for key in self._redis.scan_iter(match=_glob_escape(self.namespace) + "*", count=500):
                if key in keep or key.startswith(meta):
                    continue
                batch.append(key)
                if len(batch) >= 500:
                    self._redis.unlink(*batch)
                    batch = []
            if batch:
                self._redis.unlink(*batch)
            # the 0.7 layout's own keys, by exact name (never a pattern: it would reach a longer prefix's keys)
            self._redis.unlink(self.prefix + "state", self.prefix + "lock", self.prefix + "dirty")
            self._redis.hset(self.k_state, "version", f"cleared-{time.time_ns():x}-{uuid.uuid4().hex[:12]}")
            if self._redis.exists(self.k_local_version):
                self._redis.incr(self.k_local_version)  # the local decisions went too: workers drop theirs
            self._redis.publish(self.k_events, "clear")
        except self._errors as exc:
            raise self._fail(exc) from exc

    def wait_change(self, timeout: float) -> bool:
        """Wait on the ``<p>events`` channel (subscribed on first use, in the calling thread: the sync thread)."""
        if self._pubsub_pid != os.getpid():
            self._pubsub = None  # a forked child must not read from its parent's connection
        try:
            if self._pubsub is None:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.k_events)
                self._pubsub, self._pubsub_pid = pubsub, os.getpid()
            return self._pubsub.get_message(timeout=timeout) is not None
        except self._errors as exc:
            self._drop_pubsub()
            raise self._fail(exc) from exc

    def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None and self._pubsub_pid == os.getpid():
            with contextlib.suppress(*self._errors, OSError):
                pubsub.close()

    def close(self) -> None:
        self._drop_pubsub()
        with contextlib.suppress(*self._errors):
            self._redis.close()
