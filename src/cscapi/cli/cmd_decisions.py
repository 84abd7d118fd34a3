"""``cscapi decisions``: pull CAPI's decisions into the decision store, check IPs against them, show what it holds."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import click

from cscapi.cli._context import AppContext, json_option, pass_app
from cscapi.cli._lazy import FullHelpGroup
from cscapi.cli._output import esc, plural


@click.group(cls=FullHelpGroup)
def decisions() -> None:
    """The decisions cache (community blocklist, subscribed blocklists, allowlists)."""


@contextlib.contextmanager
def _engine(app: AppContext, settings: Any = None) -> Iterator[tuple[Any, Any, Any]]:
    """(settings, client, engine) for a refresh: the storage, a client on it, the engine on the decision store."""
    from cscapi.cli._runtime import open_engine, require_machine_id, session

    settings = settings or app.settings()
    _refuse_memory(settings)
    if settings.is_lapi:  # a local CrowdSec engine: no machine, no scenarios, no CAPI cadence guard
        from cscapi.cli._runtime import open_lapi_client

        with open_lapi_client(settings) as lapi_client:
            lapi_source = _ProgressSource(lapi_client)
            lapi_engine = open_engine(settings, lapi_source, None)
            try:
                yield settings, lapi_source, lapi_engine
            finally:
                lapi_engine.close()
        return
    settings.require_scenarios()
    with session(settings) as (storage, client):
        machine_id = require_machine_id(settings, storage)
        source = _ProgressSource(client)
        engine = open_engine(settings, source, machine_id)
        try:
            yield settings, source, engine
        finally:
            engine.close()


@contextlib.contextmanager
def _reader(app: AppContext) -> Iterator[tuple[Any, Any]]:
    """(settings, engine) for lookups only: no client, no signal storage, nothing created.

    A missing SQLite decision store is a usage error (exit 2); one that cannot be read (Redis down, corrupt file) a
    ``DecisionStoreError`` (exit 6): never "bypass/clean" answers from a store that was not read.
    """
    from cscapi.cli._runtime import open_engine
    from cscapi.errors import DecisionStoreError

    settings = app.settings()
    _refuse_memory(settings)
    hint = "Check that the decision store is reachable (decision_store, --decision-store, CSCAPI_DECISION_STORE)."
    try:
        engine = open_engine(settings, None, None, create=False, strict=True)
    except DecisionStoreError as exc:
        raise DecisionStoreError(exc.message, hint=hint) from None
    try:
        try:
            engine.require_ready()
        except DecisionStoreError as exc:
            raise DecisionStoreError(exc.message, hint=hint) from None
        yield settings, engine
    finally:
        engine.close()


def _refuse_memory(settings: Any) -> None:
    from cscapi.errors import ConfigurationError

    if settings.decision_store_uri.startswith("memory:"):
        raise ConfigurationError(
            "the decision store memory:// lives inside one process, so the CLI cannot keep or read decisions in it",
            hint="Use sqlite:///path/decisions.db or redis://host:6379/0 (decision_store, CSCAPI_DECISION_STORE).",
        )


class _ProgressSource:
    """Wraps the client given to the engine to advance a progress bar: the stream first, then one step per list."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.bar: Any = None  # a cscapi.cli._output.Progress while a refresh runs
        self._names: dict[str, str] = {}

    def get_decisions(self, *args: Any, **kwargs: Any) -> Any:
        stream = self._client.get_decisions(*args, **kwargs)
        links = [*stream.blocklists, *stream.allowlists]
        self._names = {link.url: link.name for link in links}
        if self.bar is not None:
            self.bar.update(total=len(links) + 1, description="decisions stream pulled")
            self.bar.advance()
        return stream

    def download_link(self, url: str, *args: Any, **kwargs: Any) -> Any:
        if self.bar is not None:
            self.bar.update(description=f"downloading list {esc(self._names.get(url, '?'))}")
        try:
            return self._client.download_link(url, *args, **kwargs)
        finally:
            if self.bar is not None:
                self.bar.advance()

    def __getattr__(self, name: str) -> Any:
        """Anything else is the client's (a LAPI source's ``min_refresh_interval``, ``mode``, ...)."""
        return getattr(self.__dict__["_client"], name)

    def default_machine_id(self) -> str:
        return str(self._client.default_machine_id())

    def push_usage_metrics(self, machine_id: str, payload: dict[str, Any]) -> None:
        self._client.push_usage_metrics(machine_id, payload)


def _ago(seconds: float | None) -> str:
    from cscapi.timeutil import format_go_duration

    if seconds is None or not _finite(seconds):
        return "never"
    return f"{format_go_duration(max(0, round(seconds)))} ago"


def _span(seconds: float | None) -> str:
    from cscapi.timeutil import format_go_duration

    if seconds is None or not _finite(seconds):
        return "-"
    return format_go_duration(round(seconds)) if seconds > 0 else "expired"


def _finite(seconds: float | None) -> float | None:
    """``seconds``, or None for infinity/NaN (a state written by an older version): JSON has no Infinity."""
    return seconds if seconds is not None and abs(seconds) < float("inf") else None


@decisions.command()
@click.option("--force", is_flag=True, help="Pull even within CAPI's 1 h 30 minimum interval (CAPI may rate-limit).")
@json_option
@pass_app
def refresh(app: AppContext, force: bool) -> None:
    """Pull the decisions stream and every blocklist/allowlist into the decision store.

    \b
    Example:
      cscapi decisions refresh
      cscapi decisions refresh --force --json
    """
    from cscapi.errors import ConfigurationError, RefreshTooSoonError

    first = app.settings()
    lapi = first.is_lapi
    if lapi and first.lapi_mode == "live":
        raise ConfigurationError(
            "the LAPI source is in live mode: there is nothing to pull, each IP is asked when it is checked",
            hint='Use `cscapi decisions check IP`, or set mode = "stream" in [source] (CSCAPI_LAPI_MODE=stream).',
        )
    with _engine(app, first) as (settings, source, engine):
        try:
            where = settings.display("lapi_url") if lapi else settings.display_base_url
            pulling = f"pulling the decisions stream from {where}"
            with app.out.progress(pulling, total=None, counted=True) as bar:  # the lists' count comes with it
                source.bar = bar
                report = engine.refresh_decisions(force=force)
        except RefreshTooSoonError as exc:
            raise RefreshTooSoonError(
                "the last pull was less than 1 h 30 ago (CAPI's minimum interval)",
                next_allowed_at=exc.next_allowed_at,
                hint=f"The next pull is allowed at {exc.next_allowed_at:%Y-%m-%d %H:%M:%S} UTC; --force pulls anyway.",
            ) from None
    lists = [
        {
            "origin": origin,
            "name": o.name,
            "kind": o.kind,
            "status": o.status,
            "entries": o.entries,
            "skipped": o.skipped,
            "reason": o.reason,
        }
        for origin, o in report.lists.items()
    ]
    result = {
        "new": report.new,
        "deleted": report.deleted,
        "startup": report.startup,
        "decisions": report.decisions,
        "skipped": report.skipped,
        "skipped_reasons": report.skipped_reasons,
        "removed_lists": list(report.removed_lists),
        "lists": lists,
        "seconds": round(report.seconds, 3),
    }
    if app.json_mode:
        app.out.emit_json(result)
    else:
        pull = "full (startup) pull" if report.startup else "delta pull"
        what = "LAPI decisions" if lapi else "community blocklist"
        app.out.ok(f"{what}: {report.new} new, {report.deleted} deleted ({pull}, {report.seconds:.2f} s)")
        for item in lists:
            mark = "[red]✗[/red]" if item["status"] == "failed" else "[green]✓[/green]"
            detail = {"downloaded": "downloaded", "not_modified": "unchanged (304)", "failed": "FAILED"}.get(
                item["status"], item["status"]
            )
            extra = f": {item['reason']} (previous content kept)" if item["reason"] else ""
            skipped = f", {plural(item['skipped'], 'unreadable line')} skipped" if item["skipped"] else ""
            entries = plural(item["entries"], "entry", "entries")
            app.out.print(f"{mark} {item['kind']} {esc(item['name'])}: {detail}, {entries}{skipped}{esc(extra)}")
        for name in report.removed_lists:
            app.out.print(f"  list {esc(name)} is no longer offered by CAPI: dropped")
        if report.skipped:
            reasons = ", ".join(f"{k}: {v}" for k, v in report.skipped_reasons.items())
            app.out.warn(f"{plural(report.skipped, 'stream item')} could not be used ({reasons})")
        from cscapi.cli.cmd_demo import stored_counts

        app.out.print(f"{stored_counts(report)} cached in {esc(settings.display('decision_store'))}")
    failed = [item for item in lists if item["status"] == "failed"]
    if failed:
        from cscapi.errors import CAPIError

        raise CAPIError(
            f"{plural(len(failed), 'list')} could not be downloaded: {', '.join(i['name'] for i in failed)}",
            hint="Their previous content is still enforced; the next refresh retries them.",
        )


@decisions.command()
@click.argument("ips", nargs=-1, required=True)
@json_option
@pass_app
def check(app: AppContext, ips: tuple[str, ...]) -> None:
    """Say what to do with each IP (ban, captcha, bypass ...) and why (its origin), from the decision store.

    \b
    Example:
      cscapi decisions check 203.0.113.7 2001:db8::1
    """
    from cscapi.signals import canonical_ip

    for ip in ips:
        canonical_ip(ip, "ip")  # every IP is checked before any answer is printed
    settings = app.settings()
    if settings.is_lapi and settings.lapi_mode == "live":
        _check_live(app, settings, ips)
        return
    with _reader(app) as (_settings, engine):
        rows = []
        for ip in ips:
            answer = engine.get_ip_remediation(ip)
            rows.append({"ip": ip, "remediation": answer.remediation, "origin": answer.origin})
        empty = engine.version is None
    if empty:
        app.out.warn("the decisions cache is empty: run `cscapi decisions refresh` first")
    _print_checks(app, rows)


def _check_live(app: AppContext, settings: Any, ips: tuple[str, ...]) -> None:
    """LAPI live mode: each IP is asked to the LAPI on a cache miss (the answer cached in the decision store)."""
    from cscapi.cli._runtime import open_engine, open_lapi_client

    _refuse_memory(settings)
    with open_lapi_client(settings) as client:
        engine = open_engine(settings, client, None)
        try:
            rows = []
            for ip in ips:
                answer = engine.lookup_ip_remediation(ip)
                rows.append({"ip": ip, "remediation": answer.remediation, "origin": answer.origin})
        finally:
            engine.close()
    failed = [r["ip"] for r in rows if r["origin"] == "lapi-unavailable"]
    _print_checks(app, rows)
    if failed:
        from cscapi.errors import TransportError

        raise TransportError(
            f"the LAPI did not answer for {', '.join(failed)}: the fallback remediation was printed",
            hint="Check the LAPI with `cscapi lapi status`.",
        )


def _print_checks(app: AppContext, rows: list[dict[str, Any]]) -> None:
    """The answers as JSON or a table."""
    if app.json_mode:
        app.out.emit_json(rows)
        return
    styles = {"ban": "red", "captcha": "yellow", "bypass": "green"}
    app.out.table(
        ["ip", "remediation", "origin"],
        [
            (
                esc(r["ip"]),
                f"[{styles.get(r['remediation'], 'magenta')}]{esc(r['remediation'])}[/]",
                esc(r["origin"]),
            )
            for r in rows
        ],
        markup=True,
    )


def decision_stats(state: Any, now: float) -> dict[str, Any]:
    """Live decisions in a remediation-engine state, counted by origin, scope and type, with each list's freshness."""
    by_origin: Counter[str] = Counter()
    by_scope: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    from cscapi.remediation.state import group_origin  # CAPI, or a LAPI source's origin (crowdsec, cscli, lists:...)

    expired = 0
    for (scenario, type_, scope), group in state.capi.items():  # {(scenario, type, scope): {value: expiry}}
        live = sum(1 for expiry in group.values() if expiry > now)
        expired += len(group) - live
        by_origin[group_origin(scenario)] += live
        by_scope[scope] += live
        by_type[type_] += live
    lists = []
    for blocklist in state.blocklists.values():
        live = len(blocklist.values) if blocklist.expires_at > now else 0
        by_origin[blocklist.origin] += live
        by_scope[blocklist.scope] += live
        by_type[blocklist.remediation] += live
        lists.append(
            {
                "origin": blocklist.origin,
                "kind": "blocklist",
                "entries": live,
                "pulled_seconds_ago": _finite(now - blocklist.pulled_at) if blocklist.pulled_at else None,
                "expires_in_seconds": _finite(blocklist.expires_at - now),
            }
        )
    for allowlist in state.allowlists.values():
        live_values = [v for v, exp in allowlist.entries.items() if exp is None or exp > now]
        by_origin[allowlist.origin] += len(live_values)
        for value in live_values:
            by_scope["range" if "/" in value else "ip"] += 1
        by_type["allow"] += len(live_values)
        lists.append(
            {
                "origin": allowlist.origin,
                "kind": "allowlist",
                "entries": len(live_values),
                "pulled_seconds_ago": _finite(now - allowlist.pulled_at) if allowlist.pulled_at else None,
                "expires_in_seconds": None,
            }
        )
    return {
        "total": sum(by_origin.values()),
        "expired_not_pruned": expired,
        "by_origin": {k: v for k, v in by_origin.most_common() if v},
        "by_scope": {k: v for k, v in by_scope.most_common() if v},
        "by_type": {k: v for k, v in by_type.most_common() if v},
        "last_pull_seconds_ago": _finite(now - state.last_pull) if state.last_pull else None,
        "lists": lists,
    }


@decisions.command()
@json_option
@pass_app
def stats(app: AppContext) -> None:
    """Count the cached decisions by origin, scope and type, and say how fresh each list is.

    \b
    Example:
      cscapi decisions stats --json
    """
    import time

    with _reader(app) as (settings, engine):
        version, state = engine.store.load()
        store = settings.display("decision_store")
    if state is None:
        result: dict[str, Any] = {"store": store, "version": None, "total": 0, "lists": []}
        if app.json_mode:
            app.out.emit_json(result)
        else:
            app.out.print(f"{esc(store)} is empty: run `cscapi decisions refresh`")
        return
    result = {"store": store, "version": version, **decision_stats(state, time.time())}
    if app.json_mode:
        app.out.emit_json(result)
        return
    app.out.print(
        f"{result['total']} live decisions in {esc(store)}; "
        f"{'LAPI' if settings.is_lapi else 'community'} stream pulled {_ago(result['last_pull_seconds_ago'])}"
    )
    for title, key in (("origin", "by_origin"), ("scope", "by_scope"), ("type", "by_type")):
        app.out.table([title, "decisions"], list(result[key].items()), title=f"by {title}")
    app.out.table(
        ["list", "kind", "entries", "pulled", "expires in"],
        [
            (
                item["origin"],
                item["kind"],
                item["entries"],
                _ago(item["pulled_seconds_ago"]),
                _span(item["expires_in_seconds"]),
            )
            for item in result["lists"]
        ],
        title="lists",
        empty="no blocklist or allowlist",
    )
