"""The refresh and prune logic, written once as sans-I/O flows of :mod:`cscapi.runtime`.

Each flow yields runtime effects: ``Blocking`` calls on the engine's store, ``Delegate`` calls on the decision source
(the client), ``Compute`` for CPU-heavy work and ``Now`` for the time, and receives their results (or has their
exception thrown in). ``RemediationEngine`` runs them with ``run_sync``, ``AsyncRemediationEngine`` with ``run_async``
(the client's coroutines awaited, store calls and computations in a worker thread): no refresh logic is written twice.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from cscapi.errors import RefreshInProgressError, RefreshTooSoonError
from cscapi.gcpause import without_gc
from cscapi.models import AllowlistLink, BlocklistLink, DecisionStream, LinkDownload
from cscapi.redact import mask_url
from cscapi.remediation.index import Index, Policy, build_index
from cscapi.remediation.models import ListOutcome, ListStatus, RefreshReport
from cscapi.remediation.parsing import ParseTally, canonical_value, parse_allowlist, parse_blocklist
from cscapi.remediation.state import (
    AllowlistState,
    BlocklistState,
    CapiDecisions,
    LapiDups,
    State,
    group_scenario,
)
from cscapi.runtime import EPOCH, MONOTONIC, Blocking, Compute, Delegate, Flow

__all__ = ["FlowContext", "RefreshStore", "apply_stream", "new_version", "prune_flow", "prune_state", "refresh_flow"]

_SCOPES = frozenset({"ip", "range"})


class RefreshStore(Protocol):
    """The store calls the flows make (a ``DecisionStore``, or the engine's bookkeeping wrapper around one)."""

    def acquire_lock(self, token: str, ttl: float) -> bool: ...
    def release_lock(self, token: str) -> None: ...
    def load(self) -> tuple[str | None, State | None]: ...
    def is_dirty(self) -> bool: ...
    def mark_dirty(self) -> None: ...
    def commit(self, state: State, version: str, token: str, clean: bool) -> None: ...


@dataclass
class FlowContext:
    """What the flows need from the engine: its options, policy and logger.

    ``clock`` (float Unix seconds) is the clock the engine hands to the runtime's driver: flows never call it, they
    read the time by yielding ``EPOCH``.
    """

    policy: Policy
    logger: logging.Logger
    clock: Callable[[], float]
    machine_id: str | None
    community_pull: bool
    additional_pull: bool
    min_refresh_interval: float
    lock_ttl: float


def new_version() -> str:
    """A version stamp no other commit will ever reuse (so a worker never mistakes a new state for its old one)."""
    return f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"


@dataclass
class StreamResult:
    state: State
    new: int
    deleted: int
    tally: ParseTally


@without_gc
def apply_stream(
    state: State, stream: DecisionStream, now: float, startup: bool, logger: logging.Logger
) -> StreamResult:
    """Apply the stream's ``deleted`` then ``new`` parts to the CAPI decisions (a startup pull replaces them all)."""
    tally = ParseTally()
    if stream.skipped:
        tally.reasons["unreadable stream item"] = stream.skipped
    capi: CapiDecisions = {} if startup else {key: dict(group) for key, group in state.capi.items()}
    dups: LapiDups = {} if startup else {key: dict(group) for key, group in state.lapi_dups.items()}
    deleted = 0
    doomed: set[str] = set()
    kinds: dict[tuple[str, str], list[tuple[str, str, str]]] = {}  # (type, scope) -> its groups
    for group_key in capi:
        kinds.setdefault((group_key[1], group_key[2]), []).append(group_key)
    for item in stream.deleted:
        try:
            value = canonical_value(item.value)
        except ValueError as exc:
            tally.skip(str(exc), item.value, logger, "the stream's deleted part")
            continue
        if item.scenario is not None and item.type is not None:  # a LAPI deletion names its decision
            key = (group_scenario(item.origin or "CAPI", item.scenario), item.type, item.scope.lower())
            named = capi.get(key)
            shared = None
            if named is not None and value in named:
                shared = dups.get(key, {}).pop(value, None)  # several decisions of this group: drop only this one
            if shared is not None and named is not None:
                gone = item.id if item.id in shared else -1  # -1: the first one, whose id was not kept
                if gone not in shared:
                    dups[key][value] = shared  # it names a decision this state does not hold
                    continue
                rest = {i: e for i, e in shared.items() if i != gone and e > now}
                if rest:
                    named[value] = max(rest.values())
                    dups[key][value] = rest  # even one: its id is known, a deletion naming another leaves it
                    deleted += 1
                    continue
            # A LAPI sends one decision per type and value (the longest), and a deletion once no decision of that type
            # stands on the value any more: it may name another scenario than the one held, so the value leaves
            # every group of this type and scope (a captcha deletion never lifts a ban).
            for other in kinds.get((key[1], key[2]), ()):
                if capi[other].pop(value, None) is not None:
                    deleted += 1
                    if other in dups:
                        dups[other].pop(value, None)
            continue
        doomed.add(value)
    if doomed and capi:
        for group in capi.values():
            for value in doomed.intersection(group):
                del group[value]
                deleted += 1
    new = 0
    ids: dict[tuple[tuple[str, str, str], str], int] = {}  # the id of each value's decision applied by this pull
    for d in stream.new:
        scope = d.scope.lower() if isinstance(d.scope, str) else d.scope
        if scope not in _SCOPES:
            tally.skip(f"unsupported scope {d.scope!r}", d.value, logger, "the stream's new part")
            continue
        try:
            value = canonical_value(d.value)
        except ValueError as exc:
            tally.skip(str(exc), d.value, logger, "the stream's new part")
            continue
        duration = d.duration
        if not isinstance(duration, (int, float)) or math.isnan(duration) or duration <= 0:
            tally.skip("no duration left", d.value, logger, "the stream's new part")
            continue
        key = (group_scenario(d.origin, d.scenario), d.type or "ban", scope)
        bucket = capi.get(key)
        if bucket is None:
            bucket = capi[key] = {}
        expiry = now + float(duration)
        held = bucket.get(value)
        if held is not None and d.id is not None:  # another LAPI decision on this value: keep both, enforce the longest
            group_dups = dups.setdefault(key, {})
            shared = dict(group_dups.get(value) or {ids.get((key, value), -1): held})
            shared[d.id] = expiry
            group_dups[value] = shared
            expiry = max(shared.values())
        elif key in dups:
            dups[key].pop(value, None)
        if d.id is not None:
            ids[(key, value)] = d.id
        bucket[value] = expiry
        new += 1
    if doomed and dups:
        for group_dups in dups.values():
            for value in doomed.intersection(group_dups):
                del group_dups[value]
    capi = {k: g for k, g in capi.items() if g}
    dups = {k: g for k, g in dups.items() if g and k in capi}
    return StreamResult(state.evolve(capi=capi, lapi_dups=dups), new, deleted, tally)


def _blocklist_result(
    previous: BlocklistState | None, link: BlocklistLink, dl: LinkDownload, now: float, logger: logging.Logger
) -> tuple[BlocklistState, ListOutcome]:
    origin = f"lists:{link.name}"
    duration = float(link.duration)
    if dl.not_modified and previous is not None:
        kept = BlocklistState(
            name=link.name,
            url=link.url,
            remediation=link.remediation,
            scope=link.scope,
            duration=duration,
            values=previous.values,
            pulled_at=now,
            expires_at=now + duration,
            last_modified=dl.last_modified or previous.last_modified,
        )
        return kept, ListOutcome(link.name, origin, "blocklist", ListStatus.NOT_MODIFIED, len(kept.values))
    tally = ParseTally()
    values = parse_blocklist(dl.text, tally, logger, link.name)
    fresh = BlocklistState(
        name=link.name,
        url=link.url,
        remediation=link.remediation,
        scope=link.scope,
        duration=duration,
        values=values,
        pulled_at=now,
        expires_at=now + duration,
        last_modified=dl.last_modified,
    )
    return fresh, ListOutcome(link.name, origin, "blocklist", ListStatus.DOWNLOADED, len(values), tally.total)


def _allowlist_result(
    previous: AllowlistState | None, link: AllowlistLink, dl: LinkDownload, now: float, logger: logging.Logger
) -> tuple[AllowlistState, ListOutcome, ParseTally]:
    origin = f"allowlist:{link.name}"
    tally = ParseTally()
    if dl.not_modified and previous is not None:
        last_modified = dl.last_modified or previous.last_modified
        kept = AllowlistState(link.name, link.id, link.url, previous.entries, now, last_modified)
        return kept, ListOutcome(link.name, origin, "allowlist", ListStatus.NOT_MODIFIED, len(kept.entries)), tally
    entries = parse_allowlist(dl.text, now, tally, logger, link.name)
    fresh = AllowlistState(link.name, link.id, link.url, entries, now, dl.last_modified)
    outcome = ListOutcome(link.name, origin, "allowlist", ListStatus.DOWNLOADED, len(entries), tally.total)
    return fresh, outcome, tally


def _failure(exc: BaseException, url: str) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc).replace(url, mask_url(url)) or type(exc).__name__
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {text}"


def _lap(timings: dict[str, float], name: str, since: float) -> Flow[float]:
    now: float = yield MONOTONIC
    timings[name] = round(now - since, 4)
    return now


def refresh_flow(ctx: FlowContext, force: bool, store: RefreshStore, source: Any) -> Flow[tuple[RefreshReport, Index]]:
    """Pull the stream and every list from ``source`` (a ``DecisionSource`` or ``AsyncDecisionSource``), build the
    new index and commit it to ``store``, under the store's refresh lock."""
    started: float = yield MONOTONIC
    token = uuid.uuid4().hex
    if not (yield Blocking(store.acquire_lock, (token, ctx.lock_ttl))):
        raise RefreshInProgressError("another worker is refreshing the decisions right now")
    try:
        _version, loaded = yield Blocking(store.load)
        dirty = yield Blocking(store.is_dirty)
        now: float = yield EPOCH
        if not force and loaded is not None and loaded.last_pull is not None:
            next_at = loaded.last_pull + ctx.min_refresh_interval
            if now < next_at:
                raise RefreshTooSoonError(
                    f"decisions were pulled {now - loaded.last_pull:.0f} s ago; CAPI's minimum interval is "
                    f"{ctx.min_refresh_interval:.0f} s.",
                    next_allowed_at=datetime.fromtimestamp(next_at, timezone.utc),
                )
        startup = loaded is None or bool(dirty)
        state = loaded if loaded is not None else State()
        machine_id = ctx.machine_id
        if not machine_id:
            machine_id = yield Delegate(source.default_machine_id)
        # Until the new state is committed, the store says "do not trust a delta": a crash or a failure anywhere
        # from here on makes the next pull a startup pull.
        yield Blocking(store.mark_dirty)
        timings: dict[str, float] = {}
        mark: float = yield MONOTONIC
        pull = {"startup": startup, "community_pull": ctx.community_pull, "additional_pull": ctx.additional_pull}
        stream: DecisionStream = yield Delegate(source.get_decisions, (machine_id,), pull)
        mark = yield from _lap(timings, "pull", mark)
        result: StreamResult = yield Compute(apply_stream, (state, stream, now, startup, ctx.logger))
        mark = yield from _lap(timings, "apply", mark)
        tally = result.tally
        outcomes: dict[str, ListOutcome] = {}
        links_given = "links" in stream.raw or bool(stream.blocklists) or bool(stream.allowlists)
        blocklists = {} if links_given else dict(state.blocklists)
        allowlists = {} if links_given else dict(state.allowlists)

        for link in stream.blocklists:
            previous = state.blocklists.get(link.name)
            usable = previous is not None and previous.values and previous.expires_at > now
            ims = previous.last_modified if usable and previous is not None else None
            try:
                dl = yield Delegate(source.download_link, (link.url,), {"if_modified_since": ims})
                if not dl.not_modified and dl.status_code != 200:
                    raise ValueError(f"unexpected HTTP {dl.status_code}")
                if dl.not_modified and previous is None:
                    raise ValueError("304 Not Modified for a list never downloaded")
                at = yield EPOCH
                fresh, outcome = yield Compute(_blocklist_result, (previous, link, dl, at, ctx.logger))
                blocklists[link.name] = fresh
            except Exception as exc:
                reason = _failure(exc, link.url)
                ctx.logger.warning("blocklist %r: download failed, keeping its previous content: %s", link.name, reason)
                if previous is not None:
                    blocklists[link.name] = previous
                outcome = ListOutcome(
                    link.name, f"lists:{link.name}", "blocklist", ListStatus.FAILED,
                    len(previous.values) if previous else 0, reason=reason,
                )  # fmt: skip
            outcomes[outcome.origin] = outcome
            if outcome.skipped:
                tally.reasons[f"bad line in blocklist {link.name}"] = outcome.skipped

        for alink in stream.allowlists:
            aprevious = state.allowlists.get(alink.name)
            try:
                ims = aprevious.last_modified if aprevious else None
                dl = yield Delegate(source.download_link, (alink.url,), {"if_modified_since": ims})
                if not dl.not_modified and dl.status_code != 200:
                    raise ValueError(f"unexpected HTTP {dl.status_code}")
                if dl.not_modified and aprevious is None:
                    raise ValueError("304 Not Modified for a list never downloaded")
                at = yield EPOCH
                afresh, outcome, atally = yield Compute(_allowlist_result, (aprevious, alink, dl, at, ctx.logger))
                allowlists[alink.name] = afresh
                tally.merge(atally)
            except Exception as exc:
                reason = _failure(exc, alink.url)
                ctx.logger.warning("allowlist %r: download failed, kept its previous content: %s", alink.name, reason)
                if aprevious is not None:
                    allowlists[alink.name] = aprevious
                outcome = ListOutcome(
                    alink.name, f"allowlist:{alink.name}", "allowlist", ListStatus.FAILED,
                    len(aprevious.entries) if aprevious else 0, reason=reason,
                )  # fmt: skip
            outcomes[outcome.origin] = outcome

        removed = tuple(
            [f"lists:{n}" for n in state.blocklists if n not in blocklists]
            + [f"allowlist:{n}" for n in state.allowlists if n not in allowlists]
        )
        if removed:
            ctx.logger.info("lists no longer offered by CAPI, dropped: %s", ", ".join(removed))
        new_state = result.state.evolve(blocklists=blocklists, allowlists=allowlists, last_pull=now)
        version = new_version()
        mark = yield from _lap(timings, "lists", mark)
        at = yield EPOCH
        index: Index = yield Compute(build_index, (new_state, ctx.policy, version, at))
        mark = yield from _lap(timings, "index", mark)
        yield Blocking(store.commit, (new_state, version, token, True))
        finished = yield from _lap(timings, "commit", mark)
        report = RefreshReport(
            new=result.new,
            deleted=result.deleted,
            startup=startup,
            lists=outcomes,
            skipped=tally.total,
            skipped_reasons=dict(tally.reasons),
            removed_lists=removed,
            decisions=index.decisions,
            version=version,
            seconds=finished - started,
            timings=timings,
        )
        ctx.logger.info(
            "decisions refreshed (%s): %d new, %d deleted, %d lists, %d skipped, %d live in the index",
            "startup" if startup else "delta", report.new, report.deleted, len(outcomes), report.skipped,
            index.decisions,
        )  # fmt: skip
    except Exception:
        # never a yield in a `finally`: a driver that abandons the flow (KeyboardInterrupt, a cancelled task) closes
        # it with GeneratorExit, which must not yield; the engine then releases the lock it saw taken itself
        yield Blocking(store.release_lock, (token,))
        raise
    yield Blocking(store.release_lock, (token,))
    return report, index


def prune_state(state: State, now: float) -> tuple[State, int]:
    """Drop what has expired at ``now``; returns the new state and how many decisions went."""
    removed = 0
    capi: CapiDecisions = {}
    for key, group in state.capi.items():
        kept = {v: e for v, e in group.items() if e > now}
        removed += len(group) - len(kept)
        if kept:
            capi[key] = kept
    blocklists: dict[str, BlocklistState] = {}
    for name, bl in state.blocklists.items():
        if bl.expires_at > now:
            blocklists[name] = bl
        else:
            removed += len(bl.values)
    allowlists: dict[str, AllowlistState] = {}
    for name, al in state.allowlists.items():
        entries = {v: e for v, e in al.entries.items() if e is None or e > now}
        removed += len(al.entries) - len(entries)
        allowlists[name] = AllowlistState(al.name, al.id, al.url, entries, al.pulled_at, al.last_modified)
    return state.evolve(capi=capi, blocklists=blocklists, allowlists=allowlists), removed


def prune_flow(ctx: FlowContext, store: RefreshStore) -> Flow[tuple[int, Index | None]]:
    """Remove expired decisions from the shared state (under the refresh lock) and rebuild the index."""
    token = uuid.uuid4().hex
    if not (yield Blocking(store.acquire_lock, (token, ctx.lock_ttl))):
        raise RefreshInProgressError("another worker is refreshing the decisions right now")
    try:
        _version, loaded = yield Blocking(store.load)
        index: Index | None = None
        removed = 0
        if loaded is not None:
            now = yield EPOCH
            pruned, removed = yield Compute(prune_state, (loaded, now))
            version = new_version()
            at = yield EPOCH
            index = yield Compute(build_index, (pruned, ctx.policy, version, at))
            yield Blocking(store.commit, (pruned, version, token, False))
    except Exception:  # no yield in a `finally`: see refresh_flow
        yield Blocking(store.release_lock, (token,))
        raise
    yield Blocking(store.release_lock, (token,))
    return removed, index
