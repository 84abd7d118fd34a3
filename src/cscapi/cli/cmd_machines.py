"""``cscapi machines``: register a machine on CAPI, list the stored ones, show one's state, enroll into the console."""

from __future__ import annotations

import sys
from typing import Any

import click

from cscapi.cli._context import AppContext, json_option, pass_app
from cscapi.cli._lazy import FullHelpGroup
from cscapi.cli._output import esc, plural


@click.group(cls=FullHelpGroup)
def machines() -> None:
    """Machines ("security engines"): credentials kept in the signal storage, one token each."""


def _machine_row(machine: Any, counts: Any) -> dict[str, Any]:
    from cscapi.cli._runtime import describe_token

    return {
        "machine_id": machine.machine_id,
        "registered": bool(machine.registered),
        "token": describe_token(machine),
        "token_expires_at": machine.token_expires_at,
        "login_banned_until": machine.login_banned_until,
        "failing": bool(machine.is_failing or machine.failing_until),
        "failing_until": machine.failing_until,
        "failure_reason": machine.failure_reason,
        "organization_id": machine.organization_id,
        "enrolled": bool(machine.organization_id),
        "scenarios": [s for s in (machine.scenarios or "").split(",") if s],
        "created_at": machine.created_at,
        "signals": {
            "queued": counts.queued,
            "claimed": counts.claimed,
            "sent": counts.sent,
            "quarantined": counts.quarantined,
        },
    }


@machines.command()
@click.option("--machine-id", metavar="ID", help="Register this id (48 letters/digits) instead of a generated one.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (default: a generated one).")
@click.option("--new", "new", is_flag=True, help="Register another machine even if the storage already has one.")
@json_option
@pass_app
def register(app: AppContext, machine_id: str | None, password_stdin: bool, new: bool) -> None:
    """Register a machine on CAPI; its id and password are kept in the signal storage.

    The password is generated (64 random characters) unless given on stdin, and never printed.

    \b
    Example:
      cscapi machines register
      cscapi --target dev machines register --machine-id "$(cat /etc/machine-id)abcdefghijklmnop"
    """
    from cscapi.cli._runtime import session

    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise click.UsageError("--password-stdin read an empty password")
    settings = app.settings(machine_id=machine_id)
    with session(settings) as (storage, client):
        existing = storage.list_machines()
        if existing and machine_id is None and not new:
            machine = existing[0]
            created = False
            if not machine.registered:
                machine = client.register_machine(machine.machine_id)
                created = True
        else:
            before = {m.machine_id for m in existing}
            try:
                machine = client.register_machine(machine_id, password)
            except Exception:
                _forget_failed_registration(storage, before, generated=machine_id is None, own_password=password)
                raise
            created = machine.machine_id not in before or not any(
                m.registered for m in existing if m.machine_id == machine.machine_id
            )
        result = {
            "machine_id": machine.machine_id,
            "registered": bool(machine.registered),
            "newly_registered": created,
            "capi": settings.display_base_url,
            "storage": settings.display("storage"),
        }
    if app.json_mode:
        app.out.emit_json(result)
        return
    if created:
        app.out.ok(f"registered machine [bold]{machine.machine_id}[/bold] on {esc(settings.display_base_url)}")
    else:
        app.out.ok(f"machine [bold]{machine.machine_id}[/bold] is already registered (use --new for another)")
    app.out.print(f"  credentials stored in {esc(result['storage'])} (the password is never printed)")


def _forget_failed_registration(storage: Any, before: set[str], *, generated: bool, own_password: str | None) -> None:
    """After a failed ``register``, drop the machine it created, so that no half-registered machine is left behind.

    The library stores the password before sending it (an id/password pair must never change once CAPI may have seen
    it). Dropping it is safe when nobody else depends on the pair: a generated id (CAPI may keep an orphan, which is
    harmless), or a password the user gave and still has. A chosen id with a generated password is kept: if CAPI
    registered it, only the stored password can log in (`cscapi machines register` retries with it).
    """
    if not generated and own_password is None:
        return
    try:
        added = [m for m in storage.list_machines() if m.machine_id not in before and not m.registered]
        if added:
            storage.delete_machines([m.machine_id for m in added])
    except Exception:  # the original error matters more; a leftover machine is retried by the next register
        return


@machines.command("list")
@json_option
@pass_app
def list_(app: AppContext) -> None:
    """List the machines stored in the signal storage (no network call).

    \b
    Example:
      cscapi machines list --json
    """
    from cscapi.cli._runtime import open_storage

    settings = app.settings()
    storage = open_storage(settings, create=False)
    try:
        rows = [_machine_row(m, storage.count_signals(m.machine_id)) for m in storage.list_machines()]
    finally:
        storage.close()
    if app.json_mode:
        app.out.emit_json(rows)
        return
    table = [
        (
            r["machine_id"],
            "yes" if r["registered"] else "no",
            r["token"],
            _when(r["login_banned_until"]) or "-",
            "yes" if r["enrolled"] else "no",
            f"{r['signals']['queued'] + r['signals']['claimed']}/{r['signals']['sent']}/{r['signals']['quarantined']}",
        )
        for r in rows
    ]
    app.out.table(
        ["machine id", "registered", "token", "login banned until", "enrolled", "queued/sent/quarantined"],
        table,
        empty="no machine yet: run `cscapi machines register`",
    )


def _token_note(asked: bool, checked: bool, error: Any) -> str:
    """What ``status --login`` did about the token: logged in now, or reused it without asking CAPI."""
    if not asked or error is not None:
        return ""
    if checked:
        return " (checked with CAPI: logged in now)"
    return " (still valid, reused: no request sent, to spare CAPI's login rate limit)"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


@machines.command()
@click.argument("machine_id", required=False)
@click.option("--login", "do_login", is_flag=True, help="Check the credentials with CAPI (reuses a valid token).")
@json_option
@pass_app
def status(app: AppContext, machine_id: str | None, do_login: bool) -> None:
    """Show a machine: token expiry, login ban, organisation, scenarios, queued/sent/quarantined signals.

    Reads the storage only, unless --login: CAPI bans machines that log in too often, so checking is opt-in
    (and even then a still-valid token is reused, not renewed).

    \b
    Example:
      cscapi machines status
      cscapi machines status --login --json
    """
    from cscapi.cli._runtime import require_machine_id, session

    settings = app.settings(machine_id=machine_id)
    if do_login:
        settings.require_scenarios()
    with session(settings, create=False) as (storage, client):
        mid = require_machine_id(settings, storage)
        login_error = None
        logged_in = False
        if do_login:
            from cscapi.errors import LoginBannedError

            before = storage.get_machine_by_id(mid)
            try:
                after = client.login(mid)
                # a still-valid token is reused without a request: then nothing was checked with CAPI
                logged_in = before is None or after.token != before.token
            except LoginBannedError as exc:
                login_error = exc
        machine = storage.get_machine_by_id(mid)
        row = _machine_row(machine, storage.count_signals(mid))
        row["capi"] = settings.display_base_url
        row["checked_with_capi"] = logged_in
    if app.json_mode:
        app.out.emit_json(row)
    else:
        signals = row["signals"]
        app.out.key_values(
            [
                ("machine id", row["machine_id"]),
                ("CAPI", row["capi"]),
                ("registered", "yes" if row["registered"] else "no"),
                ("token", row["token"] + _token_note(do_login, row["checked_with_capi"], login_error)),
                (
                    "login ban",
                    f"banned until {_when(row['login_banned_until'])}" if row["login_banned_until"] else "none",
                ),
                ("organisation", row["organization_id"] or "not enrolled (`cscapi machines enroll`)"),
                ("scenarios", ", ".join(row["scenarios"]) or "(none sent yet)"),
                (
                    "failing",
                    f"until {_when(row['failing_until'])}: {row['failure_reason']}" if row["failing"] else "no",
                ),
                (
                    "signals",
                    f"{signals['queued']} queued, {signals['claimed']} being sent, {signals['sent']} sent, "
                    f"{signals['quarantined']} quarantined",
                ),
            ]
        )
    if login_error is not None:
        raise login_error


@machines.command("clear-ban")
@click.argument("machine_id")
@json_option
@pass_app
def clear_ban(app: AppContext, machine_id: str) -> None:
    """Forget a machine's stored login ban so that its next login is attempted at once (no network call).

    After CAPI answers a login with a ban (403, about an hour), cscapi stores it and attempts no login until it ends:
    retrying would only extend it. Use this when you know CAPI accepts the machine again (the ban ended early, or
    you fixed the cause). CAPI's own ban is not lifted: a login it still refuses stores the ban again (exit 4).

    \b
    Example:
      cscapi machines clear-ban 0123456789abcdef0123456789abcdef0123456789abcdef
      cscapi machines status --login
    """
    from cscapi.cli._runtime import session
    from cscapi.machines import validate_machine_id

    validate_machine_id(machine_id)
    settings = app.settings()
    with session(settings, create=False) as (storage, client):
        before = storage.get_machine_by_id(machine_id)
        cleared = client.clear_login_ban(machine_id)
    banned_until = before.login_banned_until if before is not None else None
    result = {"machine_id": machine_id, "cleared": cleared, "was_banned_until": banned_until}
    if app.json_mode:
        app.out.emit_json(result)
    elif cleared:
        until = f" (it ran until {_when(banned_until)})" if banned_until is not None else ""
        app.out.ok(f"cleared the stored login ban of machine {esc(machine_id)}{until}: its next login is attempted now")
    else:
        app.out.print(f"machine {esc(machine_id)} has no stored login ban: nothing to clear")


@machines.command()
@click.argument("machine_ids", nargs=-1)
@click.option("--key", "attachment_key", metavar="KEY", help="Console attachment key [env CSCAPI_ENROLL_KEY].")
@click.option("--name", metavar="NAME", help="The name shown in the console.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="A tag (repeat).")
@click.option("--overwrite", is_flag=True, help="Re-enroll a machine already enrolled elsewhere.")
@json_option
@pass_app
def enroll(
    app: AppContext,
    machine_ids: tuple[str, ...],
    attachment_key: str | None,
    name: str | None,
    tags: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Enroll machines into the CrowdSec console (default: the configured machine).

    \b
    Example:
      cscapi machines enroll --key "$CONSOLE_KEY" --name web-1 --tag prod
    """
    from cscapi.cli._runtime import require_machine_id, session
    from cscapi.errors import ConfigurationError

    settings = app.settings(enroll_key=attachment_key)
    settings.require_scenarios()  # enrolling logs in, and a login declares the scenarios
    key = settings.enroll_key
    if not key:
        raise ConfigurationError(
            "no attachment key", hint="Pass --key or set CSCAPI_ENROLL_KEY (the console shows it under Enroll)."
        )
    with session(settings) as (storage, client):
        ids = list(machine_ids) or [require_machine_id(settings, storage)]
        outcomes = client.enroll_machines(ids, name, key, list(tags), overwrite)
        organizations = {o.machine_id: _record_enrollment(app, client, o) for o in outcomes if o.ok}
    rows = [
        {
            "machine_id": o.machine_id,
            "status": o.status,
            "ok": o.ok,
            "reason": o.reason,
            "url": o.url,
            "organization_id": organizations.get(o.machine_id),
        }
        for o in outcomes
    ]
    if app.json_mode:
        app.out.emit_json(rows)
    else:
        app.out.table(
            ["machine id", "status", "detail"],
            [
                (
                    r["machine_id"],
                    str(r["status"]).replace("_", " "),
                    r["reason"] or r["url"] or (f"organisation {r['organization_id']}" if r["organization_id"] else ""),
                )
                for r in rows
            ],
        )
    failed = [r for r in rows if not r["ok"]]
    if failed:
        from cscapi.errors import EnrollmentError

        raise EnrollmentError(
            f"{len(failed)} of {plural(len(rows), 'machine')} not enrolled: {failed[0]['reason']}",
            hint=ENROLL_HINT,
        )


#: What to do when an enrollment is refused, for CrowdSec's console and for the emulator.
ENROLL_HINT = (
    "Copy the attachment key again from the CrowdSec console (Security Engines > Enroll). Against the cscapi "
    "emulator: it accepts any key of letters and digits, unless it was told to accept only listed keys (admin API "
    "PUT /admin/attachment-keys); then add yours with POST /admin/attachment-keys or `cscapi emulator "
    "--attachment-key KEY`."
)


def _record_enrollment(app: AppContext, client: Any, outcome: Any) -> str | None:
    """After a successful enrollment, log in once more so the stored token (hence `machines status` and `list`)
    carries the organisation at once; returns it (None while CAPI has not attached one yet).

    One extra login per enrollment: enrolling is rare, and CAPI only tells the organisation through a new token.
    """
    from cscapi.errors import CAPIError

    try:
        machine = client.login(outcome.machine_id, force=True)
    except CAPIError as exc:  # the enrollment itself succeeded: say why the status may lag, do not fail
        app.out.warn(
            f"machine {outcome.machine_id} is enrolled, but logging in again to record it failed ({exc.message}); "
            "`cscapi machines status` shows it after the next login"
        )
        return None
    return str(machine.organization_id) if machine.organization_id else None
