"""``cscapi signals``: queue signals (from flags or a file), push them to CAPI, list and prune the queue."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import click

from cscapi.cli._context import AppContext, json_option, pass_app
from cscapi.cli._lazy import FullHelpGroup
from cscapi.cli._output import esc, plural


@click.group(cls=FullHelpGroup)
def signals() -> None:
    """The signal queue: add (validated, all or nothing), push, list, prune."""


def _signal_row(signal: Any, state: str) -> dict[str, Any]:
    decision = signal.decisions[0] if signal.decisions else None
    return {
        "id": signal.alert_id,
        "uuid": signal.uuid,
        "created_at": signal.created_at,
        "machine_id": signal.machine_id,
        "scenario": signal.scenario,
        "source": signal.source.value if signal.source else None,
        "scope": signal.source.scope if signal.source else None,
        "decision": f"{decision.type} {decision.duration}" if decision else None,
        "state": state,
    }


@signals.command()
@click.option("--ip", metavar="IP", help="The attacker's IP (or a CIDR range) for one signal.")
@click.option("--scenario", metavar="AUTHOR/NAME", help="The scenario it triggered (one signal).")
@click.option("--decision", "decision_type", metavar="TYPE", help="Also a decision, e.g. ban (default: a whisper).")
@click.option(
    "--duration", metavar="DURATION", help="The decision's duration, a Go duration such as 4h (needs --decision)."
)
@click.option("--message", metavar="TEXT", help="The signal's message.")
@click.option("--created-at", metavar="TIME", help="When it happened (RFC 3339; default now).")
@click.option("--context", "contexts", multiple=True, metavar="KEY=VALUE", help="Context metadata (repeat).")
@click.option(
    "-f",
    "--file",
    "path",
    metavar="PATH",
    help="Many signals from a JSON-lines or CSV file ('-' for stdin).",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), help="The file's format (default: extension).")
@click.option("--skip-invalid", is_flag=True, help="Queue the valid lines even if some are rejected.")
@click.option(
    "--to",
    "to",
    type=click.Choice(["capi", "lapi", "both"]),
    help="Queue for CAPI, the local LAPI (`LapiWatcher`) or both (default: [signals] destinations).",
)
@json_option
@pass_app
def add(
    app: AppContext,
    ip: str | None,
    scenario: str | None,
    decision_type: str | None,
    duration: str | None,
    message: str | None,
    created_at: str | None,
    contexts: tuple[str, ...],
    path: str | None,
    fmt: str | None,
    skip_invalid: bool,
    to: str | None,
) -> None:
    """Queue signals; they are validated first and stored in one transaction (all or nothing).

    \b
    Examples:
      cscapi signals add --ip 203.0.113.7 --scenario crowdsecurity/ssh-bf --decision ban --duration 4h
      cscapi signals add --file attacks.jsonl
      cscapi signals add --file attacks.csv --skip-invalid --json

    \b
    File lines (JSON lines shown; CSV uses the same names as header columns, context.KEY for context):
      {"ip": "203.0.113.7", "scenario": "crowdsecurity/ssh-bf", "decision": "ban", "duration": "4h"}
    """
    from cscapi.cli._runtime import lapi_signal_machine_id, require_machine_id, session
    from cscapi.errors import ValidationError

    if path and (ip or scenario or decision_type or duration or message or created_at or contexts):
        raise click.UsageError("give either --file or --ip/--scenario/..., not both")
    if not path and not (ip and scenario):
        raise click.UsageError("give --ip and --scenario for one signal, or --file for many")
    if duration and not decision_type:
        raise click.UsageError(
            "--duration needs --decision: a signal without one is a whisper, which has no duration; "
            "give --decision ban --duration 4h for a ban, or drop --duration for a whisper"
        )
    settings = app.settings()
    destinations = ("capi", "lapi") if to == "both" else (to,) if to else tuple(settings.signal_destinations)
    # Queuing needs no secret: the machine is looked up without decrypting its password (no CSCAPI_STORAGE_KEY needed).
    with session(settings) as (storage, client):
        if "capi" in destinations:
            machine_id = require_machine_id(settings, storage, secrets=False)
        else:  # only the LAPI: its watcher pushes them under its own login, no CAPI machine needed
            machine_id = lapi_signal_machine_id(settings)
        if path:
            from cscapi.cli import _signal_input as reader

            kind = reader.detect_format(path, fmt)
            reader.check_text_file(path)
            total = reader.count_lines(path)
            stream = reader.open_input(path)
            try:
                with app.out.progress(f"validating {esc(path)}", total=total) as bar:
                    parsed = reader.parse_stream(stream, kind, machine_id, on_line=bar.advance)
            finally:
                if path != "-":
                    stream.close()
            valid, rejected, lines = parsed.signals, parsed.rejected, parsed.lines
        else:
            from cscapi.signals import create_signal

            context = {}
            for item in contexts:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise click.UsageError(f"--context {item!r} must be KEY=VALUE")
                context[key] = value
            kwargs: dict[str, Any] = {"message": message} if message else {}
            if "/" in ip:  # type: ignore[operator]
                kwargs["scope"] = "range"
            valid = [
                create_signal(
                    ip,  # type: ignore[arg-type]
                    scenario,  # type: ignore[arg-type]
                    created_at,
                    machine_id,
                    context=context or None,
                    decision_type=decision_type,
                    duration=duration,
                    **kwargs,
                )
            ]
            rejected, lines = [], 1
        stored = 0
        if valid and (not rejected or skip_invalid):
            with app.out.progress(f"queuing {plural(len(valid), 'signal')} in one transaction", total=None):
                stored = client.add_signals(valid, destinations)
        counts = storage.count_signals()
        lapi_counts = storage.count_signals(destination="lapi") if "lapi" in destinations else None
    report = {
        "lines": lines,
        "valid": len(valid),
        "rejected": [{"line": r.line, "reason": r.reason} for r in rejected],
        "queued": stored,
        "duplicates": len(valid) * len(destinations) - stored if stored or not rejected or skip_invalid else 0,
        "queue": {"queued": counts.queued, "sent": counts.sent, "quarantined": counts.quarantined},
        "destinations": list(destinations),
    }
    if lapi_counts is not None:
        report["lapi_queue"] = {
            "queued": lapi_counts.queued,
            "sent": lapi_counts.sent,
            "quarantined": lapi_counts.quarantined,
        }
    if app.json_mode:
        app.out.emit_json(report)
    else:
        if rejected:
            app.out.table(
                ["line", "reason"], [(r.line, r.reason) for r in rejected[:200]], title=f"{len(rejected)} rejected"
            )
            if len(rejected) > 200:
                app.out.print(f"... and {len(rejected) - 200} more (use --json for all)")
        if stored or not rejected or skip_invalid:
            dup = f" ({report['duplicates']} already queued)" if report["duplicates"] else ""
            app.out.ok(
                f"queued {plural(stored, 'signal')}{dup}; {counts.queued} waiting to be pushed (`cscapi signals push`)"
            )
    if rejected and not skip_invalid:
        first = rejected[0]
        raise ValidationError(
            f"{len(rejected)} of {plural(lines, 'line')} rejected (first: line {first.line}: {first.reason})",
            hint="Nothing was queued. Fix those lines, or pass --skip-invalid to queue the valid ones.",
        )


_QUEUE = click.option(
    "--to",
    "to",
    type=click.Choice(["capi", "lapi"]),
    default="capi",
    show_default=True,
    help="Which queue: CAPI's, or the local LAPI's (`signals add --to lapi`, pushed as alerts by a watcher).",
)


def _push_lapi(app: AppContext, settings: Any, keep_sent: bool) -> tuple[Any, Any, Any]:
    """Push the lapi queue with the ``[source]`` settings' watcher: (report, counts before, counts after)."""
    from cscapi.cli._runtime import open_lapi_watcher, open_storage

    storage = open_storage(settings)
    try:
        watcher = open_lapi_watcher(settings, storage)
        try:
            before = storage.count_signals(destination="lapi")
            with app.out.progress(f"pushing {plural(before.pending, 'queued signal')} to LAPI", total=None):
                report = watcher.send_signals()
            if not keep_sent:
                storage.prune(destination="lapi")
            after = storage.count_signals(destination="lapi")
        finally:
            watcher.close()
    finally:
        storage.close()
    return report, before, after


@signals.command()
@click.option("--keep-sent/--prune-sent", default=True, help="Keep sent signals for `signals list` (default).")
@click.option(
    "--now",
    "now",
    is_flag=True,
    help="Try machines cooling down after a recent failure at once (clears their cool-down; not a login ban).",
)
@_QUEUE
@json_option
@pass_app
def push(app: AppContext, keep_sent: bool, now: bool, to: str) -> None:
    """Send every queued signal to CAPI now (the agent does this every push_interval); `--to lapi`: the LAPI
    queue, as alerts, with the [source] watcher credentials.

    \b
    Example:
      cscapi signals push --json
      cscapi signals push --now        # CAPI is back: do not wait out the cool-down of the last failure
      cscapi signals push --to lapi    # the local CrowdSec engine's queue (lapi_machine_id, lapi_password)
    """
    from cscapi.cli._runtime import session, stored_machine_id

    settings = app.settings()
    if to == "lapi":
        report, before, after = _push_lapi(app, settings, keep_sent)
        _report_push(app, report, before, after, "LAPI")
        return
    settings.require_scenarios()
    with session(settings) as (storage, client):
        if now:
            _clear_cooldowns(storage)
        before = storage.count_signals()
        machine_id = stored_machine_id(settings, storage)
        if before.pending and machine_id is not None and storage.count_signals(machine_id).pending:
            # Log in first (a valid token is reused): an unreachable CAPI or a ban is reported as such.
            client.login(machine_id)
        with app.out.progress(f"pushing {plural(before.pending, 'queued signal')}", total=None):
            report = client.send_signals(prune_after_send=not keep_sent)
        after = storage.count_signals()
    _report_push(app, report, before, after, "CAPI")


def _report_push(app: AppContext, report: Any, before: Any, after: Any, target: str) -> None:
    """Print (or emit as JSON) a push's outcome; a push that failed for some machines exits non-zero."""
    # machines whose queued signals were not tried: they wait out an earlier failure's cool-down or a login ban
    held = {m: exc for m, exc in report.errors.items() if m not in report.failed_machines}
    result = {
        "sent": report.sent,
        "quarantined": report.quarantined,
        "batches": report.batches,
        "failed_machines": report.failed_machines,
        "cooling_down": {m: until for m, exc in held.items() if (until := _held_until(exc)) is not None},
        "errors": {m: {"type": type(exc).__name__, "message": exc.message} for m, exc in report.errors.items()},
        "queue": {"queued": after.queued, "sent": after.sent, "quarantined": after.quarantined},
    }
    failed = bool(report.failed_machines or held)
    if app.json_mode:
        app.out.emit_json(result)
    else:
        line = f"sent {plural(report.sent, 'signal')} in {plural(report.batches, 'request')}"
        if not before.pending and not report.sent and not report.quarantined and not failed:
            app.out.print("nothing queued")
        elif failed:  # never a ✓ for a push that failed, even in part
            app.out.print(line)
        else:
            app.out.ok(line)
        if report.quarantined:
            app.out.warn(
                f"{plural(report.quarantined, 'signal')} refused by {target} and quarantined "
                f"(`cscapi signals list --state quarantined{' --to lapi' if target == 'LAPI' else ''}`)"
            )
        for machine, reason in report.failed_machines.items():
            app.out.print(f"[red]✗[/red] machine {esc(machine)}: {esc(reason)} (its signals stay queued)")
        for machine, exc in held.items():
            until = _held_until(exc)
            why = getattr(exc, "reason", None) or exc.message
            wait = f"its signals wait until {until:%H:%M:%S} UTC, then are retried" if until else "its signals wait"
            app.out.print(f"[red]✗[/red] machine {esc(machine)} failed recently ({esc(why.rstrip('.'))}): {wait}")
    if report.failed_machines or held:
        _fail_push(app, report.failed_machines, held, report.errors)


def _clear_cooldowns(storage: Any) -> int:
    """Forget the cool-down of every machine failing after an earlier push (``push --now``); login bans and refused
    credentials are kept (``machines clear-ban`` is for those). Returns how many machines were cleared."""
    from dataclasses import replace

    from cscapi._core import LOGIN_REFUSED

    cleared = 0
    for machine in storage.list_machines():
        if not (machine.is_failing or machine.failing_until):
            continue
        if (machine.failure_reason or "").startswith(LOGIN_REFUSED):
            continue  # a refused login: retrying at once counts against the machine on CAPI's side
        storage.update_or_create_machine(replace(machine, is_failing=False, failing_until=None, failure_reason=None))
        cleared += 1
    return cleared


def _held_until(exc: Exception) -> datetime | None:
    """When a held machine's signals are tried again (a cool-down's or a login ban's end)."""
    until = getattr(exc, "until", None)
    return until if isinstance(until, datetime) else None


def push_exit_code(failures: Iterable[BaseException]) -> int:
    """The exit code of a push that failed for some machines (docs/cli.md, "Exit codes").

    3 when every failure says CAPI is unreachable or failing (network, 5xx, 429 after the retries), else 4 if a
    machine is login-banned, 5 if CAPI refused credentials, else 1. Codes come from ``cscapi.cli._exit``.
    """
    from cscapi.cli import _exit
    from cscapi.errors import LoginBannedError, RateLimitedError

    errors = list(failures)
    if not errors:
        return _exit.FAILURE
    # a 429 after every retry means the same thing for a push as a 5xx: CAPI cannot take the signals now
    codes = [_exit.UNREACHABLE if isinstance(e, RateLimitedError) else _exit.code_for(e) for e in errors]
    if all(code == _exit.UNREACHABLE for code in codes):
        return _exit.UNREACHABLE
    if any(isinstance(e, LoginBannedError) for e in errors):
        return _exit.LOGIN_BANNED
    if _exit.AUTHENTICATION in codes:
        return _exit.AUTHENTICATION
    return _exit.FAILURE


def _fail_push(app: AppContext, failed: dict[str, str], held: dict[str, Any], errors: dict[str, Any]) -> None:
    """Print the one-line error of a push that failed for some machines, then exit with ``push_exit_code``."""
    from cscapi.cli import _exit, report_error
    from cscapi.errors import CAPIError

    code = push_exit_code(errors.values())
    if failed:
        machine, reason = next(iter(failed.items()))
        todo = {
            _exit.LOGIN_BANNED: "wait for the ban to lift, do not retry in a loop",
            _exit.AUTHENTICATION: "check the machine's credentials (`cscapi machines status`)",
        }.get(code, "check the CAPI URL and the network (for the local emulator: is `cscapi emulator` running?)")
        why = reason.rstrip(".")
        summary = CAPIError(
            f"signals of {plural(len(failed), 'machine')} were not sent (machine {machine[:12]}…: {why})",
            hint=f"They stay queued and are retried on the next push; {todo}.",
        )
    else:
        machine, exc = next(iter(held.items()))
        until = _held_until(exc)
        at = f", until {until:%H:%M:%S} UTC" if until else ""
        wait = "a login ban" if code == _exit.LOGIN_BANNED else "the cool-down of a recent failure"
        retry = (
            "`cscapi signals push --now` retries at once if CAPI is back"
            if code != _exit.LOGIN_BANNED
            else "wait for the ban to lift"
        )
        machines = plural(len(held), "machine")
        summary = CAPIError(
            f"signals of {machines} were not sent: they wait out {wait} (machine {machine[:12]}…{at})",
            hint=f"They stay queued and are retried after it; {retry}; `cscapi machines status` shows why.",
        )
    report_error(app, summary)
    raise click.exceptions.Exit(code)


@signals.command("list")
@click.option(
    "--state",
    type=click.Choice(["queued", "sent", "quarantined", "all"]),
    default="all",
    show_default=True,
    help="Which signals.",
)
@click.option(
    "--limit", type=click.IntRange(1, 100000), default=50, show_default=True, help="Show at most this many signals."
)
@_QUEUE
@json_option
@pass_app
def list_(app: AppContext, state: str, limit: int, to: str) -> None:
    """List signals in the queue, oldest first, with their state (`--to lapi`: the LAPI queue's quarantined
    signals and its counts).

    \b
    Example:
      cscapi signals list --state quarantined
      cscapi signals list --to lapi --state quarantined
    """
    from cscapi.cli._runtime import open_storage

    if to == "lapi" and state in ("queued", "sent"):
        raise click.UsageError(
            "--to lapi lists quarantined signals (--state quarantined or all) and counts the others; "
            "queued and sent LAPI signals are read back with `cscli alerts list`"
        )
    settings = app.settings()
    storage = open_storage(settings, create=False)
    rows: list[dict[str, Any]] = []
    try:
        if to == "lapi":
            for signal, reason in storage.list_quarantined(limit=limit, destination="lapi"):
                rows.append({**_signal_row(signal, "quarantined"), "reason": reason})
            counts = storage.count_signals(destination="lapi")
        else:
            quarantined = storage.list_quarantined(limit=100000 if state == "all" else limit)
            reasons = {s.alert_id: reason for s, reason in quarantined}
            if state == "quarantined":
                for signal, reason in quarantined[:limit]:
                    rows.append({**_signal_row(signal, "quarantined"), "reason": reason})
            else:
                sent = {"queued": False, "sent": True, "all": None}[state]
                for signal in storage.get_signals(limit, 0, sent=sent):
                    if signal.alert_id in reasons:
                        if state == "queued":
                            continue
                        rows.append({**_signal_row(signal, "quarantined"), "reason": reasons[signal.alert_id]})
                    else:
                        rows.append(_signal_row(signal, "sent" if signal.sent else "queued"))
            counts = storage.count_signals()
    finally:
        storage.close()
    if app.json_mode:
        app.out.emit_json(rows)
        return
    app.out.table(
        ["id", "created", "scenario", "source", "decision", "state", "machine"],
        [
            (
                r["id"],
                (r["created_at"] or "")[:19].replace("T", " "),
                r["scenario"],
                r["source"],
                r["decision"] or "whisper",
                r["state"] + (f": {r['reason']}" if r.get("reason") else ""),
                (r["machine_id"] or "")[:12] + "…",
            )
            for r in rows
        ],
        empty="no signals",
    )
    app.out.print(
        f"{counts.queued} queued, {counts.claimed} being sent, {counts.sent} sent, {counts.quarantined} quarantined"
    )


@signals.command()
@click.option("--sent", "sent", is_flag=True, help="Delete every sent signal.")
@click.option("--sent-before", metavar="AGE|TIME", help="Delete sent signals older than this (24h, 7d or RFC 3339).")
@click.option("--quarantined", is_flag=True, help="Delete quarantined signals.")
@click.option("--failing-machines", is_flag=True, help="Delete the queued signals of machines failing right now.")
@click.option(
    "--requeue-quarantined", is_flag=True, help="Instead of deleting, put quarantined signals back in the queue."
)
@_QUEUE
@json_option
@pass_app
def prune(
    app: AppContext,
    sent: bool,
    sent_before: str | None,
    quarantined: bool,
    failing_machines: bool,
    requeue_quarantined: bool,
    to: str,
) -> None:
    """Delete what each flag names (sent, quarantined, failing machines' signals); nothing else is touched.

    \b
    Examples:
      cscapi signals prune --sent-before 7d
      cscapi signals prune --quarantined
      cscapi signals prune --requeue-quarantined
      cscapi signals prune --to lapi --quarantined
    """
    from datetime import datetime, timezone

    from cscapi.cli._runtime import open_client, open_storage

    deleting = sent or bool(sent_before) or quarantined or failing_machines
    if requeue_quarantined and deleting:
        raise click.UsageError("--requeue-quarantined cannot be combined with the delete options")
    if not requeue_quarantined and not deleting:
        raise click.UsageError(
            "say what to prune: --sent, --sent-before AGE, --quarantined, --failing-machines or --requeue-quarantined"
        )
    if failing_machines and to == "lapi":
        raise click.UsageError("--failing-machines is about CAPI machines: it cannot be combined with --to lapi")
    cutoff = _parse_age(sent_before) if sent_before else None
    if not (sent or sent_before):
        # storage.prune always deletes sent signals before a cut-off: one before any signal was sent deletes none
        cutoff = datetime(1970, 1, 2, tzinfo=timezone.utc)
    settings = app.settings()
    storage = open_storage(settings)
    try:
        result: dict[str, int] = {}
        queue: dict[str, Any] = {} if to == "capi" else {"destination": to}  # CAPI's: the 0.7.0 call (any storage)
        if requeue_quarantined:
            result["requeued"] = storage.requeue_quarantined(**queue)
        else:
            result["deleted"] = 0
            if sent or sent_before or quarantined:
                result["deleted"] = storage.prune(sent_before=cutoff, quarantined=quarantined, **queue)
            if failing_machines:
                client = open_client(settings, storage)
                try:
                    result["deleted_failing"] = client.prune_failing_machines_signals()
                finally:
                    client.close()
        counts = storage.count_signals(**queue)
    finally:
        storage.close()
    result.update({"queued": counts.queued, "sent": counts.sent, "quarantined": counts.quarantined})
    if app.json_mode:
        app.out.emit_json(result)
        return
    if requeue_quarantined:
        app.out.ok(f"put {plural(result['requeued'], 'quarantined signal')} back in the queue")
    else:
        extra = f" and {result['deleted_failing']} of failing machines" if failing_machines else ""
        app.out.ok(f"deleted {plural(result['deleted'], 'signal')}{extra}")
    app.out.print(f"{counts.queued} queued, {counts.sent} sent, {counts.quarantined} quarantined")


def _parse_age(text: str) -> Any:
    """``7d``, ``24h``, ``90m`` (ago) or an RFC 3339 time, as an aware datetime."""
    from datetime import timedelta

    from cscapi.errors import ConfigurationError
    from cscapi.timeutil import parse_go_duration, parse_timestamp, utcnow

    value = text.strip()
    try:
        if value.endswith("d") and value[:-1].replace(".", "", 1).isdigit():
            return utcnow() - timedelta(days=float(value[:-1]))
        return utcnow() - timedelta(seconds=parse_go_duration(value))
    except ValueError:
        pass
    try:
        return parse_timestamp(value)
    except ValueError:
        raise ConfigurationError(
            f"--sent-before {text!r} is neither an age nor a time", hint="Use 7d, 24h, 90m or 2026-11-01T00:00:00Z."
        ) from None
