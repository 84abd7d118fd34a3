"""``cscapi demo``: the whole flow, told step by step: emulator, machine, detection, signals, decisions, lookups.

With no configuration it runs against an embedded CAPI emulator on a free loopback port, with its databases in a
temporary directory, and finishes in a few seconds. ``--target dev|prod|URL`` does the same against a real CAPI.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cscapi.cli._context import AppContext, json_option, pass_app
from cscapi.cli._output import esc, plural

SCENARIOS = ["crowdsecurity/ssh-bf", "crowdsecurity/http-probing"]
BLOCKLIST = "demo-botnet"
ALLOWLIST = "demo-partners"


@dataclass(frozen=True)
class Probe:
    """An IP the demo asks about, what the emulator is set up to answer, and why a person should care."""

    ip: str
    expected: str
    why: str


PROBES = (
    Probe("198.51.100.23", "CAPI", "failed only twice here, below the threshold, but the community already bans it"),
    Probe("198.51.100.200", f"lists:{BLOCKLIST}", f"inside 198.51.100.128/25, banned by the '{BLOCKLIST}' blocklist"),
    Probe("192.0.2.10", f"allowlist:{ALLOWLIST}", "your deploy user: on the community list too, but allowlisted"),
    Probe("203.0.113.80", "clean", "a crawler with one 404: nothing against it"),
)


def _setup_emulator(emu: Any) -> dict[str, Any]:
    """Publish what the story needs through the emulator's admin API; return what was published."""
    admin = emu.admin
    values = [p.ip for p in PROBES]
    admin.delete_decisions(values)  # the generated community list uses documentation IPs too: start from known ground
    admin.add_decision("198.51.100.23", "crowdsecurity/ssh-bf", "24h")
    admin.add_decision("192.0.2.10", "crowdsecurity/ssh-bf", "24h")
    admin.publish_blocklist(BLOCKLIST, ["198.51.100.128/25", "2001:db8:bad::/48"], scope="range", duration="24h")
    admin.publish_allowlist(ALLOWLIST, [{"value": "192.0.2.10", "description": "office VPN / deploy user"}])
    return {"community_decisions": len(admin.decisions()), "blocklists": [BLOCKLIST], "allowlists": [ALLOWLIST]}


@click.command()
@click.option(
    "--target",
    "demo_target",
    metavar="TARGET",
    help="emulator (default: an embedded one), or dev, prod, a CAPI URL: the same flow for real.",
)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Keep the demo's databases here (default: temp).")
@click.option("--yes", is_flag=True, help="Do not ask before talking to a real CAPI.")
@json_option
@pass_app
def demo(app: AppContext, demo_target: str | None, data_dir: str | None, yes: bool) -> None:
    """Run the whole flow and explain each step: register, detect, share, pull, protect.

    Needs no configuration, account or network: an embedded CAPI emulator plays CrowdSec's Central API.

    \b
    Examples:
      cscapi demo
      cscapi demo --target dev --yes      # the same, for real, against CrowdSec's dev CAPI
    """
    from cscapi.settings import load_settings

    target = demo_target or app.root_flags.get("target") or "emulator"
    embedded = target == "emulator"
    # The demo ignores the config file: it must work on a fresh machine and never touch your real queue.
    settings = load_settings(
        {"target": "http://127.0.0.1:1/" if embedded else target, "scenarios": SCENARIOS},
        config_path=None,
        env={k: v for k, v in os.environ.items() if k in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")},
    )
    if not embedded and not yes:
        if not sys.stdin.isatty():
            from cscapi.errors import ConfigurationError

            raise ConfigurationError(
                f"the demo would register a machine and send sample signals to {settings.display_base_url}",
                hint="Pass --yes to confirm (the signals come from documentation IP ranges).",
            )
        click.confirm(f"Register a machine and send sample signals to {settings.display_base_url}?", abort=True)

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if data_dir:
            base = Path(data_dir).expanduser()
            base.mkdir(parents=True, exist_ok=True)
        elif embedded:
            import tempfile

            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cscapi-demo-")))
        else:  # a real CAPI: keep the machine between runs, never register a new one each time
            base = settings.data_dir / "demo"
            base.mkdir(parents=True, exist_ok=True, mode=0o700)
        summary = _Story(app, settings, base, embedded, stack).run()
    summary["seconds"] = round(time.monotonic() - started, 2)
    failed = summary["signals"]["failed_machines"]
    if app.json_mode:
        app.out.emit_json(summary)
        _fail_if_not_sent(failed)
        return
    app.out.step(f"Done in {summary['seconds']:.1f} s.")
    if embedded and not data_dir:
        app.out.print("The emulator and the temporary databases are gone. To keep going:")
    activate = _activate_hint()
    if activate:
        app.out.print(f"  {esc(activate)}")
    app.out.print("  cscapi init                  # write ~/.config/cscapi/config.toml (target, scenarios, stores)")
    app.out.print("  cscapi emulator              # a CAPI emulator in another terminal, or --target dev|prod")
    app.out.print("  cscapi machines register && cscapi run")
    app.out.print("Docs: README.md and docs/ (cli.md, configuration.md, remediation.md, emulator.md).")
    _fail_if_not_sent(failed)


def _activate_hint() -> str:
    """``source .venv/bin/activate ...`` when ``cscapi`` is not on the PATH (installed in a virtual environment that
    is not active, as the README's first command does), else ""."""
    import shutil

    if shutil.which("cscapi") is not None or sys.prefix == sys.base_prefix:
        return ""
    activate = Path(sys.prefix) / "bin" / "activate"
    return f"source {activate}      # cscapi is not on your PATH yet (or call {Path(sys.prefix) / 'bin' / 'cscapi'})"


def _fail_if_not_sent(failed: dict[str, str]) -> None:
    """The demo went on after a failed push (to show the rest), but it did not succeed: exit 1."""
    if failed:
        from cscapi.errors import CAPIError

        machine, reason = next(iter(failed.items()))
        raise CAPIError(
            f"the demo's signals were not sent (machine {machine[:12]}…: {reason.rstrip('.')})",
            hint="They stay queued in the demo's storage; check the CAPI URL and the network, then run it again.",
        )


class _Story:
    """The demo's steps, each printing what it did as a person would want to read it."""

    def __init__(self, app: AppContext, settings: Any, base: Path, embedded: bool, stack: Any) -> None:
        self.app = app
        self.out = app.out
        self.settings = settings
        self.base = base
        self.embedded = embedded
        self.stack = stack
        self.summary: dict[str, Any] = {"target": "embedded emulator" if embedded else settings.display_base_url}

    def run(self) -> dict[str, Any]:
        out = self.out
        out.print(
            "[bold]cscapi demo[/bold]: share attacks with CrowdSec's Central API (CAPI), "
            "and protect with what it returns."
        )
        base_url = self.start_capi()
        client, storage = self.open_client(base_url)
        machine_id = self.register(client)
        detections = self.detect()
        self.share(client, storage, machine_id, detections)
        engine = self.pull(client, machine_id)
        self.protect(engine)
        return self.summary

    # ---- steps -------------------------------------------------------------------------------------------

    def start_capi(self) -> str:
        if not self.embedded:
            self.out.step(f"1. Talk to the real CAPI at {self.settings.display_base_url}")
            self.out.print(f"   databases in {esc(self.base)} (the machine is reused on the next run)")
            return str(self.settings.base_url)
        from cscapi.emulator import EmbeddedEmulator, EmulatorConfig

        self.out.step("1. Start a local CAPI emulator (it speaks the real protocol)")
        emu = self.stack.enter_context(EmbeddedEmulator(EmulatorConfig(seed=1, community_size=1000)))
        published = _setup_emulator(emu)
        self.emulator = emu
        self.summary["emulator"] = {"base_url": emu.base_url, **published}
        self.out.ok(f"listening on {emu.base_url}")
        self.out.print(
            f"   community blocklist of {published['community_decisions']} decisions; a blocklist '{BLOCKLIST}' "
            f"and an allowlist '{ALLOWLIST}' are published (through the emulator's admin API)"
        )
        return str(emu.base_url)

    def open_client(self, base_url: str) -> tuple[Any, Any]:
        from cscapi.client import CAPIClient, CAPIClientConfig
        from cscapi.sql_storage import SQLStorage

        storage = SQLStorage(f"sqlite:///{self.base / 'cscapi.db'}")
        self.stack.callback(storage.close)
        config = CAPIClientConfig(
            scenarios=SCENARIOS,
            base_url=base_url,
            user_agent_prefix="cscapi-demo",
            max_retries=1 if self.embedded else 3,
            timeout=10.0,
        )
        client = CAPIClient(storage, config)
        self.stack.callback(client.close)
        return client, storage

    def register(self, client: Any) -> str:
        self.out.step("2. Register a machine (a 'security engine' in CrowdSec's words)")
        existing = client.storage.list_machines()
        machine = existing[0] if existing else client.register_machine()
        if not machine.registered:
            machine = client.register_machine(machine.machine_id)
        client.login(machine.machine_id)
        self.summary["machine_id"] = machine.machine_id
        self.out.ok(f"machine [bold]{machine.machine_id}[/bold] {'reused' if existing else 'registered'} and logged in")
        self.out.print(
            f"   its generated password and token are kept in {self.base / 'cscapi.db'}; the token is reused "
            "until it expires (CAPI bans machines that log in too often)"
        )
        return str(machine.machine_id)

    def detect(self) -> list[Any]:
        from cscapi.data import SAMPLE_FILES, sample_lines
        from cscapi.data.detector import detect
        from cscapi.timeutil import utcnow

        self.out.step("3. Detect attacks in sample logs (an sshd auth.log and an nginx access.log)")
        lines = sample_lines()
        per_file = {name: sum(1 for f, _ in lines if f == name) for name in SAMPLE_FILES}
        found = detect([line for _, line in lines], rebase_to=utcnow())
        self.summary["detections"] = [
            {"ip": d.ip, "scenario": d.scenario, "events": d.events, "evidence": d.evidence} for d in found
        ]
        self.out.print(
            f"   read {len(lines)} lines ({', '.join(f'{n}: {c}' for n, c in per_file.items())}); "
            "5 auth failures or 8 probed paths from one IP within 10 minutes make a detection:"
        )
        self.out.table(
            ["ip", "scenario", "events", "last event"],
            [(d.ip, d.scenario, d.events, _shorten(_log_message(d.evidence), 48)) for d in found],
        )
        return found

    def share(self, client: Any, storage: Any, machine_id: str, detections: list[Any]) -> None:
        from cscapi.signals import create_signal
        from cscapi.timeutil import format_rfc3339

        self.out.step("4. Share them with CAPI as signals")
        signals = [
            create_signal(
                d.ip,
                d.scenario,
                d.last_seen,
                machine_id,
                decision_type="ban",
                duration="4h",
                message=d.message,
                start_at=format_rfc3339(d.first_seen),
                stop_at=format_rfc3339(d.last_seen),
                context={"log_line": d.evidence[:200]},
            )
            for d in detections
        ]
        queued = client.add_signals(signals)
        self.out.ok(f"queued {plural(queued, 'signal')} (each a 4 h ban decision) in the durable local queue")
        report = client.send_signals(prune_after_send=False)
        counts = storage.count_signals()
        self.summary["signals"] = {
            "queued": queued,
            "sent": report.sent,
            "batches": report.batches,
            "failed_machines": report.failed_machines,
        }
        line = f"pushed {plural(report.sent, 'signal')} in {plural(report.batches, 'request')}"
        if self.embedded:
            received = len(self.emulator.admin.signals(machine_id=machine_id))
            self.summary["signals"]["received_by_capi"] = received
            line += f"; the emulator received {received}"
        if report.failed_machines:  # never a ✓ for a push that failed
            self.out.print(f"[red]✗[/red] {line}")
            for failed, reason in report.failed_machines.items():
                self.out.print(f"[red]✗[/red] machine {esc(failed)}: {esc(reason)}")
        else:
            self.out.ok(line)
        if counts.pending:
            self.out.warn(f"{plural(counts.pending, 'signal')} still queued (`cscapi signals push` retries them)")
        self.out.print(
            "   in the real CAPI, signals from thousands of machines build the community blocklist you pull next"
        )

    def pull(self, client: Any, machine_id: str) -> Any:
        from cscapi.remediation import RemediationEngine

        self.out.step("5. Pull the decisions: community blocklist, subscribed blocklists, allowlists")
        engine = RemediationEngine(client, store=f"sqlite:///{self.base / 'decisions.db'}", machine_id=machine_id)
        self.stack.callback(engine.close)
        try:
            report = engine.refresh_decisions()
        except Exception as exc:
            from cscapi.errors import RefreshTooSoonError

            if not isinstance(exc, RefreshTooSoonError):
                raise
            self.out.print("   pulled less than 1 h 30 ago (CAPI's minimum interval): using the cached decisions")
            self.summary["refresh"] = {"skipped": "too soon", "decisions": engine.index.decisions}
            return engine
        self.summary["refresh"] = {
            "new": report.new,
            "deleted": report.deleted,
            "decisions": report.decisions,
            "lists": {o: {"status": v.status, "entries": v.entries} for o, v in report.lists.items()},
        }
        self.out.ok(f"community blocklist: {report.new} decisions ({'startup' if report.startup else 'delta'} pull)")
        for outcome in report.lists.values():
            mark = "[green]✓[/green]" if outcome.ok else "[red]✗[/red]"
            self.out.print(
                f"{mark} {outcome.kind} '{esc(outcome.name)}': {outcome.status.replace('_', ' ')}, "
                f"{plural(outcome.entries, 'entry', 'entries')}"
            )
        self.out.print(
            f"   {stored_counts(report)} stored in {self.base / 'decisions.db'}: every worker process of your "
            "application reads them from there"
        )
        return engine

    def protect(self, engine: Any) -> None:
        self.out.step("6. Protect: ask what to do with a few IPs (answered from memory, no I/O)")
        rows = []
        checks = []
        for probe in PROBES:
            t0 = time.perf_counter_ns()
            answer = engine.get_ip_remediation(probe.ip)
            elapsed = time.perf_counter_ns() - t0
            checks.append(
                {
                    "ip": probe.ip,
                    "remediation": answer.remediation,
                    "origin": answer.origin,
                    "expected_origin": probe.expected if self.embedded else None,
                    "nanoseconds": elapsed,
                }
            )
            style = {"ban": "red", "captcha": "yellow"}.get(answer.remediation, "green")
            why = probe.why if self.embedded else ""
            rows.append((probe.ip, f"[{style}]{esc(answer.remediation)}[/]", esc(answer.origin), esc(why)))
        self.summary["checks"] = checks
        self.out.table(["ip", "remediation", "origin", "why"], rows, markup=True)
        if self.embedded:
            wrong = [c for c in checks if c["origin"] != c["expected_origin"]]
            if wrong:
                from cscapi.errors import CAPIError

                raise CAPIError(
                    f"the demo expected {wrong[0]['ip']} to come from {wrong[0]['expected_origin']}, "
                    f"got {wrong[0]['origin']}",
                    hint="This is a bug in cscapi; please report it with the output above.",
                )
        self.out.print("   in your application: engine.get_ip_remediation(request_ip) on every request")


def _log_message(line: str) -> str:
    """The interesting part of a log line: after ``sshd[pid]:`` for syslog, the request for an access log."""
    if "]: " in line:
        return line.split("]: ", 1)[1]
    if '"' in line:
        return line.split('"')[1]
    return line


def stored_counts(report: Any) -> str:
    """``1003 decisions and 1 allowlist entry``: what a refresh left in the store, allowlist entries counted apart
    (``report.decisions`` counts both)."""
    allowed = sum(o.entries for o in report.lists.values() if o.kind == "allowlist")
    text = plural(max(0, report.decisions - allowed), "decision")
    return text + (f" and {plural(allowed, 'allowlist entry', 'allowlist entries')}" if allowed else "")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
