"""Run the emulator on a loopback port inside the current process (tests, demos): uvicorn in a background thread.

The thread owns its event loop, so this works from plain synchronous code and from inside a running asyncio loop.
``start()`` returns once the server accepts connections; ``stop()`` shuts it down within about a second.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

from cscapi.emulator.config import EmulatorConfig
from cscapi.emulator.state import EmulatorState
from cscapi.errors import ConfigurationError

__all__ = ["EmbeddedEmulator", "guarded_h11_protocol", "is_loopback_host", "uvicorn_config"]

log = logging.getLogger("cscapi.emulator")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def guarded_h11_protocol(header_timeout: float) -> type[Any]:
    """uvicorn's h11 protocol, plus a deadline for request headers: a connection that has not sent a whole request
    head ``header_timeout`` seconds after connecting (or after its previous answer) is closed. uvicorn itself only
    times out connections idle after an answer, so a client that connects and sends nothing (or a byte a minute)
    would otherwise hold its connection forever."""
    import asyncio

    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_for: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._waiting_for:
                self._disarm_header_timer()  # a request head arrived

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._waiting_for = self.cycle
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is self._waiting_for and not self.transport.is_closing():
                self.transport.close()  # no request started since the timer was armed

    return GuardedH11Protocol


def uvicorn_config(app: Any, config: EmulatorConfig, **options: Any) -> Any:
    """The uvicorn settings every emulator server uses: connection cap, keep-alive and header timeouts (the body
    deadline and the in-flight body budget are enforced by the app itself)."""
    import uvicorn

    return uvicorn.Config(
        app,
        lifespan="off",
        http=guarded_h11_protocol(config.header_timeout),
        limit_concurrency=config.max_connections,
        timeout_keep_alive=config.keep_alive_timeout,
        **options,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); ``ConfigurationError`` if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # IPPROTO_TCP: asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror}", hint="Pick another --port, or 0 for a free one."
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def base_url_for(host: str, port: int) -> str:
    """``http://HOST:PORT/`` (IPv6 hosts bracketed), the URL to give a CAPI client."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class EmbeddedEmulator:
    """A running emulator: ``with EmbeddedEmulator(EmulatorConfig(seed=1)) as emu: emu.base_url, emu.admin``."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 10.0,
        access_log: bool = False,
    ) -> None:
        from cscapi.emulator.app import create_app

        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.access_log = access_log
        self.app = create_app(self.config)
        self.state: EmulatorState = self.app.state.emulator
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._admin: Any = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/`` once started."""
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() or use it as a context manager")
        return base_url_for(self.host, self.port)

    @property
    def admin_token(self) -> str:
        """The admin API token."""
        return self.config.admin_token

    @property
    def admin(self) -> Any:
        """An :class:`~cscapi.emulator.admin.EmulatorAdminClient` bound to this emulator."""
        if self._admin is None:
            from cscapi.emulator.admin import EmulatorAdminClient

            self._admin = EmulatorAdminClient(self.base_url, self.config.admin_token)
        return self._admin

    def start(self) -> EmbeddedEmulator:
        """Bind, start uvicorn in a thread and wait until it serves; raises if it cannot start."""
        if self._server is not None:
            return self
        if self._stopped:
            raise RuntimeError(
                "an EmbeddedEmulator runs once; create a new one (with the same state_path to keep state)"
            )
        import uvicorn

        sock = bind_socket(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        if not is_loopback_host(self.host):
            log.warning("the emulator listens on %s, reachable from other hosts: use trusted networks only", self.host)
        # log_config=None: leave the host's logging configuration alone (uvicorn's loggers propagate to the root).
        config = uvicorn_config(
            self.app,
            self.config,
            log_level="warning",
            access_log=self.access_log,
            log_config=None,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server = server

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # reported to start() / stop()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"cscapi-emulator-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server = None
                self.stop()
                raise RuntimeError(f"the emulator did not start on {self.host}:{self.port}: {self._error!r}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Shut the server down and wait for its thread (at most a few seconds)."""
        server, thread = self._server, self._thread
        self._stopped = True
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        self._server = None
        self._thread = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        self.state.close()

    def __enter__(self) -> EmbeddedEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        running = self._server is not None
        return f"EmbeddedEmulator(host={self.host!r}, port={self.port!r}, running={running})"
