"""``cscapi run``: the long-running agent (``cscapi.agent.Agent``) with signal handling and one log line per action."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from cscapi.cli._context import AppContext, json_option, pass_app
from cscapi.limits import MAX_PUSH_INTERVAL, MIN_METRICS_INTERVAL, MIN_PUSH_INTERVAL, MIN_REFRESH_INTERVAL

if TYPE_CHECKING:
    from cscapi.agent import Agent


@click.command()
@click.option(
    "--push-interval",
    type=float,
    metavar="SECONDS",
    help=f"Push queued signals every N s ({MIN_PUSH_INTERVAL:g} to {MAX_PUSH_INTERVAL:g}).",
)
@click.option(
    "--refresh-interval", type=float, metavar="SECONDS", help=f"Pull decisions every N s (>= {MIN_REFRESH_INTERVAL})."
)
@click.option("--refresh-jitter", type=float, metavar="SECONDS", help="Move each pull by up to ± N s.")
@click.option(
    "--metrics-interval", type=float, metavar="SECONDS", help=f"Push metrics every N s (>= {MIN_METRICS_INTERVAL:g})."
)
@click.option("--health-port", type=int, metavar="PORT", help="Serve JSON health on 127.0.0.1:PORT (0: off).")
@click.option("--no-refresh", is_flag=True, help="Only push signals and metrics; do not pull decisions.")
@click.option("--no-metrics", is_flag=True, help="Do not push metrics.")
@click.option("--once", is_flag=True, help="Do every job once and exit (for cron or a first check).")
@click.option(
    "--stop-timeout",
    type=click.FloatRange(1, 300),
    default=10.0,
    show_default=True,
    envvar="CSCAPI_STOP_TIMEOUT",
    metavar="SECONDS",
    help="After SIGTERM/SIGINT, exit within N s (the job in flight is abandoned if needed; locks released).",
)
@click.option(
    "--stall-after",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    envvar="CSCAPI_STALL_AFTER",
    metavar="SECONDS",
    help="Health says degraded (HTTP 503) while a job runs longer than N s.",
)
@json_option
@pass_app
def run(
    app: AppContext,
    push_interval: float | None,
    refresh_interval: float | None,
    refresh_jitter: float | None,
    metrics_interval: float | None,
    health_port: int | None,
    no_refresh: bool,
    no_metrics: bool,
    once: bool,
    stop_timeout: float,
    stall_after: float,
) -> None:
    """Run the agent until SIGTERM/SIGINT: push signals, refresh decisions with jitter, push metrics, log health.

    One agent per signal storage (a lock file next to a SQLite database, a lease row in a shared one, renewed by
    its own thread). On the first SIGTERM/SIGINT the job in flight may finish for up to --stop-timeout minus 3 s,
    then is abandoned; the agent releases its locks and exits 0 within --stop-timeout. A second signal abandons
    the job at once (exit 130). Abandoned signals are sent again later: the queue's lease makes that safe.

    \b
    Examples:
      cscapi run
      cscapi run --push-interval 30 --health-port 9109
      cscapi run --once --json
    """
    import logging

    from cscapi.agent import Agent, AgentConfig, AgentLock
    from cscapi.cli._context import _HANDLER
    from cscapi.cli._runtime import open_engine, open_storage, require_machine_id
    from cscapi.errors import ConfigurationError

    settings = app.settings(
        push_interval=push_interval,
        refresh_interval=refresh_interval,
        refresh_jitter=refresh_jitter,
        metrics_interval=metrics_interval,
        health_port=health_port,
    )
    lapi = settings.is_lapi  # decisions from a local CrowdSec engine; signals (if any machine) still go to CAPI
    if not lapi:
        settings.require_scenarios()
    refresh = not no_refresh
    if lapi and settings.lapi_mode == "live":
        refresh = False  # live mode: each IP is asked to the LAPI by your application's engine, nothing to pull
    if refresh and settings.decision_store_uri.startswith("memory:"):
        raise ConfigurationError(
            "the agent cannot refresh decisions into memory://: no other process would see them",
            hint="Set decision_store to sqlite:///... or redis://..., or pass --no-refresh.",
        )

    # One line per action, with a timestamp; the library's own INFO lines would repeat ours, so they stay at WARNING.
    level = getattr(logging, settings.log_level)
    if not app.debug:
        _HANDLER.service_format(True)
        _HANDLER.setLevel(level)
        logging.getLogger("cscapi").setLevel(max(level, logging.WARNING))
    agent_log = logging.getLogger("cscapi.agent")
    agent_log.setLevel(level)

    cadence: dict[str, float] = {
        "refresh_interval": settings.refresh_interval,
        "refresh_jitter": settings.refresh_jitter,
    }
    capi_machine = not lapi or _has_machine(settings)  # on a LAPI without a CAPI machine: decisions only
    if lapi:  # the LAPI cadence (10 s by default), no CAPI minimum
        cadence = {"refresh_interval": settings.lapi_refresh_interval, "refresh_jitter": 0.0, "min_refresh_interval": 0}
    config = AgentConfig(
        push_interval=settings.push_interval,
        **cadence,
        metrics_interval=settings.metrics_interval,
        batch_size=settings.batch_size,
        health_port=settings.health_port,
        refresh_decisions=refresh,
        push_metrics=not no_metrics and capi_machine,
        stop_timeout=stop_timeout,
        stall_after=stall_after,
    )
    from cscapi.cli._runtime import open_client

    storage = open_storage(settings)
    agent: Agent | None = None
    deadline: float | None = None
    try:
        if not capi_machine:
            machine_id = ""  # no CAPI machine: decisions from the LAPI, nothing pushed to CAPI
            agent_log.info("no CAPI machine is registered: nothing is pushed to CAPI; decisions come from the LAPI")
        else:
            machine_id = require_machine_id(settings, storage)
        client = open_client(settings, storage, logger=logging.getLogger("cscapi.client"))
        engine = None
        source: Any = None
        watcher: Any = None
        try:
            if refresh:
                source = client
                if lapi:
                    from cscapi.cli._runtime import open_lapi_client

                    source = open_lapi_client(settings, logger=logging.getLogger("cscapi.lapi"))
                # a long-running agent outlives a store outage: it logs it and serves the last decisions it read
                engine = open_engine(settings, source, machine_id or None, strict=False)
            lock = AgentLock(storage, settings.storage_uri)
            if "lapi" in settings.signal_destinations:  # the lapi signal queue, pushed as alerts by a watcher
                from cscapi.cli._runtime import open_lapi_watcher

                watcher = open_lapi_watcher(settings, storage, logger=logging.getLogger("cscapi.lapi"))
            agent = Agent(
                client, engine, config=config, machine_id=machine_id, lock=lock, logger=agent_log, watcher=watcher
            )
            if once:
                health = agent.run_once()
                if app.json_mode:
                    app.out.emit_json(health)
                failing = [name for name, job in health["jobs"].items() if job["last_error"]]
                if failing:
                    from cscapi.errors import CAPIError

                    raise CAPIError(f"job(s) failed: {', '.join(failing)}", hint="See the log lines above.")
                return
            _run_until_signal(agent)
        finally:
            deadline = agent.stop_deadline if agent is not None else None
            if engine is not None:
                _close_by(engine.close, deadline)
            if source is not None and source is not client:
                _close_by(source.close, deadline)
            if watcher is not None:
                _close_by(watcher.close, deadline)
            _close_by(client.close, deadline)
    finally:
        _close_by(storage.close, deadline)
        _HANDLER.service_format(False)


def _has_machine(settings: Any) -> bool:
    """Whether the signal storage holds a CAPI machine (read without any secret; a missing SQLite file: no)."""
    from cscapi.cli._runtime import _sqlite_path, open_storage, stored_machine_id

    path = _sqlite_path(settings.storage_uri)
    if path is not None and not path.is_file():
        return False
    storage = open_storage(settings, create=False)
    try:
        return stored_machine_id(settings, storage, secrets=False) is not None
    finally:
        storage.close()


def _close_by(close: Any, deadline: float | None) -> None:
    """Close now; after a stop request, give up at ``deadline`` (a job abandoned in flight may hold a connection)."""
    import threading
    import time

    if deadline is None:
        close()
        return
    thread = threading.Thread(target=close, name="cscapi-close", daemon=True)
    thread.start()
    thread.join(timeout=max(0.1, deadline - time.monotonic()))


def _run_until_signal(agent: Agent) -> None:
    """Run the agent in this thread; the first SIGTERM/SIGINT stops it (bounded by ``stop_timeout``), a second one
    abandons the job in flight at once (exit 130)."""
    import signal as sig
    import threading as th

    received = {"count": 0}

    def on_signal(signum: int, _frame: object) -> None:
        received["count"] += 1
        running = agent.in_flight or agent.running_job
        if received["count"] == 1:
            what = (
                f" (finishing the {running} in flight for up to {max(0.0, agent.config.stop_timeout - 3):g} s; "
                "signal again to abandon it)"
                if running
                else ""
            )
            agent.log.info("received %s: stopping%s", sig.Signals(signum).name, what)
            agent.stop()
        else:
            agent.log.warning("second signal: abandoning the batch in flight (its signals are resent later)")
            agent.abandon()

    previous: dict[sig.Signals, Any] = {}
    if th.current_thread() is th.main_thread():
        for name in (sig.SIGTERM, sig.SIGINT):
            previous[name] = sig.signal(name, on_signal)
    try:
        agent.run()
    finally:
        for name, handler in previous.items():
            sig.signal(name, handler)
    if received["count"] > 1:
        raise KeyboardInterrupt  # exit 130: stopped by a second signal
