"""The framework-neutral bouncer: a request view in, a :class:`Decision` out, and the response to send for it."""

from __future__ import annotations

import inspect
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cscapi.errors import ConfigurationError
from cscapi.web._ip import FORWARDED_HEADERS, UNRESOLVED, Networks, parse_hop, resolve_client_ip
from cscapi.web._signing import Signer
from cscapi.web.captcha import CaptchaContext, CaptchaKind, ProofOfWork
from cscapi.web.walls import Walls

__all__ = ["Bouncer", "BouncerCounters", "Decision", "Reason", "Request", "Response", "safe_return_path", "status_line"]

logger = logging.getLogger("cscapi.web")

_COOKIE_PURPOSE = "cscapi-pass"
_CHALLENGE_PURPOSE = "cscapi-challenge"  # captcha.py's signed challenge token
_KNOWN = ("ban", "captcha", "bypass")
_PATH_SAFE = "/:@!$&'()*+,;=~-._"
_QUERY_SAFE = _PATH_SAFE + "?%"


class Reason:
    """Why a :class:`Decision` was taken (its ``reason``)."""

    CLEAN = "clean"
    """No decision covers the client IP."""
    DECISION = "decision"
    """A decision of the engine applies (its ``origin`` says where it comes from)."""
    EXEMPT_PATH = "exempt-path"
    EXEMPT_IP = "exempt-ip"
    CAPTCHA_SOLVED = "captcha-solved"
    """The IP is under captcha, but the request carries a valid pass cookie for it."""
    NO_CLIENT_IP = "no-client-ip"
    """The peer has no IP address (a Unix socket not listed in ``trusted_proxies``): nothing to look up."""
    STORE_UNAVAILABLE = "store-unavailable"
    """The decision store could not be read: passed (``fail_open``) or refused with 503."""
    UNRESOLVED_CLIENT_IP = "unresolved-client-ip"
    """A trusted proxy's forwarding header could not be read (``for=unknown``, garbage, no ``for=``): passed
    (``fail_open``) or refused with 503, counted and warned about; never the proxy's own address."""


class Decision(NamedTuple):
    """What the bouncer does with one request.

    ``remediation``: ``bypass`` (let it through), ``ban`` (403 wall), ``captcha`` (401 challenge wall) or
    ``unavailable`` (503: the store could not be read and ``fail_open`` is False). ``origin``: where the engine's
    decision comes from (``CAPI``, ``lists:<name>``, ``local``, ``clean``, ...; empty when no lookup was made).
    ``ip``: the client IP (canonical), None if unknown. ``reason``: a :class:`Reason` value.

    A named tuple: immutable, and cheap to build on every request.
    """

    remediation: str
    origin: str
    ip: str | None
    reason: str

    @property
    def allowed(self) -> bool:
        """True when the application should run."""
        return self.remediation == "bypass"


class Request:
    """A framework-neutral view of a request: what the bouncer reads, built cheaply by each adapter.

    ``headers`` is a mapping by lower-case name (repeated headers joined with ``", "``, cookies with ``"; "``; a plain
    dict is copied with its names lowered, any other mapping is used as is and must answer lower-case names); an
    adapter may pass ``raw_headers`` instead (``(name, value)`` pairs, bytes or str), decoded only if read.
    ``peer`` is the socket peer's address text (None for a Unix socket); ``scheme`` ``http`` or ``https``
    (``ws``/``wss`` are read as such).
    """

    __slots__ = ("_cookies", "_headers", "_raw", "method", "path", "peer", "query", "scheme")

    def __init__(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        raw_headers: Iterable[tuple[bytes | str, bytes | str]] | None = None,
        peer: str | None = None,
        scheme: str = "http",
    ) -> None:
        self.method = method.upper()
        self.path = path or "/"
        self.query = query
        self.peer = peer
        self.scheme = scheme
        if isinstance(headers, dict):
            headers = {k.lower(): v for k, v in headers.items()}
        self._headers: Mapping[str, str] | None = headers
        self._raw = raw_headers
        self._cookies: dict[str, str] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers by lower-case name."""
        if self._headers is None:
            merged: dict[str, str] = {}
            for name, value in self._raw or ():
                key = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                if key in merged:
                    merged[key] += ("; " if key == "cookie" else ", ") + text
                else:
                    merged[key] = text
            self._headers = merged
        return self._headers

    @property
    def cookies(self) -> Mapping[str, str]:
        """The cookies of the ``Cookie`` header (the first of a repeated name wins)."""
        if self._cookies is None:
            jar: dict[str, str] = {}
            for part in self.headers.get("cookie", "")[:8192].split(";"):
                name, sep, value = part.partition("=")
                name = name.strip()
                if sep and name and name not in jar:
                    jar[name] = value.strip().strip('"')
            self._cookies = jar
        return self._cookies

    @property
    def target(self) -> str:
        """The path and query the client asked for, percent-encoded (where a solved captcha returns)."""
        path = urllib.parse.quote(self.path, safe=_PATH_SAFE)
        if not self.query:
            return path
        return f"{path}?{urllib.parse.quote(self.query, safe=_QUERY_SAFE, encoding='latin-1', errors='replace')}"

    def __repr__(self) -> str:
        return f"Request({self.method} {self.path!r} from {self.peer!r})"


@dataclass(frozen=True)
class Response:
    """A response for an adapter to send as is: ``status``, ``headers`` (name, value) pairs and ``body`` bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


_REASON_PHRASES = {
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    413: "Content Too Large",
    503: "Service Unavailable",
}


def status_line(status: int) -> str:
    """``"403 Forbidden"``: the WSGI status text of the statuses the bouncer answers with."""
    return f"{status} {_REASON_PHRASES.get(status, 'Unknown')}"


def safe_return_path(target: object) -> str:
    """``target`` if it is a same-origin path (``/...``), else ``/``: refuses ``//host``, ``/\\host``, absolute URLs,
    backslashes, control characters, spaces, non-ASCII and texts over 2048 characters (no open redirect; a target built
    by :attr:`Request.target` is percent-encoded, so it passes)."""
    if not isinstance(target, str) or not target.startswith("/") or len(target) > 2048:
        return "/"
    if target.startswith("//") or "\\" in target:
        return "/"
    if any(not 0x21 <= ord(c) <= 0x7E for c in target):  # control characters, spaces, non-ASCII
        return "/"
    return target


class _RateLimitedWarning:
    def __init__(self, every: float) -> None:
        self.every = every
        self.last = float("-inf")
        self.suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            extra = f" ({self.suppressed} similar warnings suppressed)" if self.suppressed else ""
            logger.warning(message + extra, *args)
            self.last = now
            self.suppressed = 0
        else:
            self.suppressed += 1


_DEFAULT_CAPTCHA: Any = object()

UNAVAILABLE_ORIGIN = "unavailable"
"""The usage-metrics origin of a request passed (``fail_open``) because the engine's lookup raised."""


@dataclass
class BouncerCounters:
    """What the bouncer saw since it started (plain ints; read them for monitoring)."""

    store_unavailable: int = 0
    """Requests checked while the store could not be read (passed or refused per ``fail_open``)."""
    metrics_errors: int = 0
    unresolved_client_ip: int = 0
    """Requests from a trusted proxy whose forwarding header could not be read (passed or refused per ``fail_open``)."""
    captcha_solved: int = 0
    captcha_failed: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Bouncer:
    """Decides what to do with each request from the engine's decisions, and builds the walls.

    ``engine``: a :class:`~cscapi.remediation.RemediationEngine` or :class:`~cscapi.remediation.AsyncRemediationEngine`
    (only its in-memory lookup, ``healthy`` and ``update_metrics_origins_count`` are used per request).
    ``trusted_proxies``: CIDRs (or ``"unix"``) whose forwarding header is believed (see docs/web.md, "Client IP").
    ``forwarded_header``: the ONE header those proxies set, ``x-forwarded-for`` (default), ``forwarded`` or
    ``x-real-ip`` (the others are ignored: a client could add one its proxy passes untouched).
    ``exempt_paths``: path prefixes never checked, matched on segment boundaries (``/health`` covers ``/health`` and
    ``/health/db``, not ``/healthz``). ``exempt_ips``: CIDRs never checked. ``secret_key``: signs challenges and pass
    cookies (give the same key to every worker; None: a random key per process, with a warning). ``captcha``: a
    :class:`~cscapi.web.captcha.CaptchaKind` (default :class:`~cscapi.web.captcha.ProofOfWork`). ``fail_open``: pass
    (True) or answer 503 (False) when the store cannot be read. ``walls``: how pages look. ``grace_period``: seconds a
    solved captcha lets the IP through. ``challenge_lifetime``: seconds to solve one challenge. ``captcha_path``: where
    the challenge form posts (handled by the bouncer). ``cookie_name``; ``max_body``: largest captcha POST read.
    ``remediation_map``: how to treat custom remediation types (``{"mfa": "captcha"}``); an unmapped type is treated
    as the engine's fallback remediation, and as ``bypass`` if that is custom too. ``clock``: for tests.
    ``detectors``: a :class:`cscapi.web.detect.Detectors` fed by :meth:`report`, :meth:`report_failed_login` and the
    middlewares' 404 hook (:meth:`observe_status`).

    Why this size: the one framework-neutral object every adapter calls (decide, respond, captcha, detectors); the
    work is in ``_ip.py``, ``walls.py``, ``captcha.py``, ``_signing.py`` and ``detect.py``.
    """

    def __init__(
        self,
        engine: Any,
        *,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "x-forwarded-for",
        exempt_paths: Iterable[str] = (),
        exempt_ips: Iterable[str] = (),
        secret_key: str | bytes | None = None,
        captcha: CaptchaKind = _DEFAULT_CAPTCHA,
        fail_open: bool = True,
        walls: Walls | None = None,
        grace_period: float = 1800.0,
        challenge_lifetime: float = 300.0,
        captcha_path: str = "/.cscapi/captcha",
        cookie_name: str = "cscapi_captcha",
        max_body: int = 16 * 1024,
        remediation_map: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        detectors: Any = None,
    ) -> None:
        for name in ("get_ip_remediation", "update_metrics_origins_count"):
            if not callable(getattr(engine, name, None)):
                raise ConfigurationError(f"engine must be a RemediationEngine (it has no {name}())")
        if not hasattr(engine, "healthy"):
            raise ConfigurationError("engine must be a RemediationEngine (it has no healthy property)")
        self.engine = engine
        self.trusted_proxies = Networks(trusted_proxies, what="trusted_proxies")
        if not isinstance(forwarded_header, str) or forwarded_header.lower() not in FORWARDED_HEADERS:
            raise ConfigurationError(
                f"forwarded_header must be one of {', '.join(FORWARDED_HEADERS)} (the header your proxy sets), "
                f"not {str(forwarded_header)[:60]!r}"
            )
        self.forwarded_header = forwarded_header.lower()
        self.exempt_ips = Networks(exempt_ips, what="exempt_ips")
        paths = []
        for p in exempt_paths if not isinstance(exempt_paths, str) else [exempt_paths]:
            if not isinstance(p, str) or not p.startswith("/"):
                raise ConfigurationError(f"exempt_paths entries must start with '/', not {p!r}")
            base = p.rstrip("/")
            paths.append((base or "/", base + "/"))
        self._exempt_paths = tuple(paths)
        if secret_key is None:
            logger.warning(
                "cscapi.web.Bouncer: no secret_key given, using a random one for this process: captcha cookies "
                "will not survive a restart nor be accepted by other workers; give a secret_key in production"
            )
            key = secrets.token_bytes(32)
        elif isinstance(secret_key, str | bytes) and len(secret_key) >= 16:
            key = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
        else:
            raise ConfigurationError("secret_key must be a str or bytes of at least 16 characters (or None)")
        self._signer = Signer(key)
        if captcha is _DEFAULT_CAPTCHA:
            captcha = ProofOfWork()
        if not isinstance(captcha, CaptchaKind):
            raise ConfigurationError("captcha must be a cscapi.web.captcha kind such as ProofOfWork()")
        self.captcha = captcha
        self.fail_open = bool(fail_open)
        self.walls = walls or Walls()
        if not grace_period > 0 or not challenge_lifetime > 0:
            raise ConfigurationError("grace_period and challenge_lifetime must be > 0 seconds")
        self.grace_period = float(grace_period)
        self.challenge_lifetime = float(challenge_lifetime)
        if safe_return_path(captcha_path) != captcha_path or "?" in captcha_path:
            raise ConfigurationError("captcha_path must be a plain absolute path such as /.cscapi/captcha")
        self.captcha_path = captcha_path
        if not cookie_name or not cookie_name.replace("_", "").replace("-", "").isalnum():
            raise ConfigurationError("cookie_name must be letters, digits, '_' and '-'")
        self.cookie_name = cookie_name
        if not 1024 <= max_body <= 1024 * 1024:
            raise ConfigurationError("max_body must be between 1 KiB and 1 MiB")
        self.max_body = max_body
        policy = getattr(engine, "policy", None)
        fallback = getattr(policy, "fallback", "bypass")
        self._fallback = fallback if fallback in _KNOWN else "bypass"
        mapping = dict(remediation_map or {})
        for custom, target in mapping.items():
            if target not in _KNOWN:
                raise ConfigurationError(f"remediation_map[{custom!r}] must be one of {_KNOWN}, not {target!r}")
        self._map = mapping
        self._clock = clock or time.time
        self.counters = BouncerCounters()
        self._warn_store = _RateLimitedWarning(60.0)
        self._warn_metrics = _RateLimitedWarning(60.0)
        self._warn_unresolved = _RateLimitedWarning(60.0)
        self._peers: dict[str, str | None] = {}
        if detectors is not None and not callable(getattr(detectors, "observe_status", None)):
            raise ConfigurationError("detectors must be a cscapi.web.detect.Detectors")
        store = getattr(engine, "store", None)
        self._shared_store: Any = store if getattr(store, "shared", False) is True else None
        """The engine's store when shared by workers (SQLite, Redis): solved challenge ids are recorded there."""
        self.detectors = detectors
        """The :class:`cscapi.web.detect.Detectors` fed by ``report``/``report_failed_login``/the 404 hook, or None."""

    # ---- detectors (cscapi.web.detect) ----------------------------------------------------------------------------

    def _ip_of(self, request_or_ip: Request | str) -> str | None:
        return request_or_ip if isinstance(request_or_ip, str) else self.client_ip(request_or_ip)

    def report(self, request_or_ip: Request | str, scenario: str) -> bool:
        """Pour one event of ``scenario`` for this request's client IP (or an IP) into the detectors; no I/O.

        True when it overflowed here (the local decision is already in force). Needs ``detectors``."""
        if self.detectors is None:
            raise ConfigurationError("this Bouncer has no detectors: Bouncer(..., detectors=Detectors(...))")
        ip = self._ip_of(request_or_ip)
        return False if ip is None else bool(self.detectors.report(ip, scenario))

    def report_failed_login(self, request_or_ip: Request | str) -> bool:
        """A failed login (the detectors' ``failed_login`` scenario); False without detectors or that scenario."""
        if self.detectors is None:
            return False
        ip = self._ip_of(request_or_ip)
        return False if ip is None else bool(self.detectors.report_failed_login(ip))

    def observe_status(self, request: Request, status: int) -> None:
        """The middlewares' hook, once the application answered: 404 bursts feed the ``not_found`` scenario."""
        detectors = self.detectors
        if detectors is None or status != 404 or detectors.not_found is None:
            return
        try:
            ip = self.client_ip(request)
            if ip is not None:
                detectors.observe_status(ip, request.path, status)
        except Exception as exc:  # never break a response for a detector
            logger.warning("detectors: the 404 hook failed: %s", exc)

    # ---- per request --------------------------------------------------------------------------------------------

    def _peer_ip(self, peer: str) -> str | None:
        """``parse_hop(peer)``, cached (bounded): peers repeat, and this runs on every request."""
        cache = self._peers
        try:
            return cache[peer]
        except KeyError:
            ip = parse_hop(peer)
            if len(cache) >= 16384:
                cache.clear()
            cache[peer] = ip
            return ip

    def _resolve(self, request: Request) -> str | None:
        """:meth:`client_ip`, with ``UNRESOLVED`` ("") when a trusted proxy's header cannot be read."""
        peer = request.peer
        ip = self._peer_ip(peer) if peer else None
        if peer and ip is None:
            return None
        if not self.trusted_proxies:
            return ip
        return resolve_client_ip(ip, request.headers, self.trusted_proxies, self.forwarded_header)

    def client_ip(self, request: Request) -> str | None:
        """The client's canonical IP (the peer, or what trusted proxies say: docs/web.md, "Client IP"); None when
        unknown (no IP peer, or a trusted proxy's header that cannot be read)."""
        return self._resolve(request) or None

    def _unresolved(self) -> Decision:
        self.counters.unresolved_client_ip += 1
        self._warn_unresolved(
            "a trusted proxy's %s header could not be read (unknown, obfuscated or garbage hop): %s requests",
            self.forwarded_header,
            "passing" if self.fail_open else "refusing (503)",
        )
        return Decision("bypass" if self.fail_open else "unavailable", "", None, Reason.UNRESOLVED_CLIENT_IP)

    def _exempt_path(self, path: str) -> bool:
        if "/." in path:  # a dot segment (/static/../admin) is never exempt: the application may normalise it
            return False
        return any(path == base or path.startswith(prefix) for base, prefix in self._exempt_paths)

    def decide(self, request: Request) -> Decision:
        """The :class:`Decision` for ``request`` (counted in the engine's usage metrics unless exempt)."""
        return self._decide(request, None)

    async def adecide(self, request: Request) -> Decision:
        """:meth:`decide` for async adapters. A live-mode engine (LAPI asked per IP) answers a miss after asking the
        LAPI, never with the fallback: the async engine's lookup is awaited, a sync engine's runs in a thread (the
        loop never blocks). Cache hits and stream-mode engines stay synchronous and I/O-free."""
        engine = self.engine
        if getattr(engine, "live", None) is None or (self._exempt_paths and self._exempt_path(request.path)):
            return self._decide(request, None)
        ip = self._resolve(request)
        if not ip or (self.exempt_ips and ip in self.exempt_ips):
            return self._decide(request, None)
        live = engine.live
        clock = getattr(engine, "_clock", time.time)
        if live.cached(ip, clock()) is not None:
            return self._decide(request, None)  # a cached answer: the engine's I/O-free lookup gives it
        lookup = engine.lookup_ip_remediation
        known: Any
        try:
            if inspect.iscoroutinefunction(lookup):
                known = await lookup(ip)
            else:
                import asyncio

                known = await asyncio.to_thread(lookup, ip)  # a sync engine's miss asks the LAPI: off the loop
        except Exception as exc:
            known = exc
        if not isinstance(known, Exception) and live.cached(ip, clock()) is not None:
            known = None  # now cached: the engine's own lookup answers it (its local decisions included)
        return self._decide(request, known)

    def _decide(self, request: Request, known: Any) -> Decision:
        """:meth:`decide`; ``known``: the engine's answer (or the exception it raised) already awaited, or None."""
        if self._exempt_paths and self._exempt_path(request.path):
            return Decision("bypass", "", None, Reason.EXEMPT_PATH)
        ip = self._resolve(request)
        if not ip:
            return self._unresolved() if ip == UNRESOLVED else Decision("bypass", "", None, Reason.NO_CLIENT_IP)
        if self.exempt_ips and ip in self.exempt_ips:
            return Decision("bypass", "", ip, Reason.EXEMPT_IP)
        engine = self.engine
        try:
            if not engine.healthy:
                raise _Unavailable
            if known is None:
                found = engine.get_ip_remediation(ip)
            elif isinstance(known, Exception):
                raise known
            else:
                found = known
        except Exception as exc:
            self.counters.store_unavailable += 1
            why = "its last sync failed" if isinstance(exc, _Unavailable) else f"the lookup raised {type(exc).__name__}"
            self._warn_store(
                "decision store unavailable (%s): %s requests", why, "passing" if self.fail_open else "refusing (503)"
            )
            if not self.fail_open:
                return Decision("unavailable", "", ip, Reason.STORE_UNAVAILABLE)
            if not isinstance(exc, _Unavailable) or isinstance(known, Exception):
                self._count(UNAVAILABLE_ORIGIN, "bypass")  # passed without an answer: say so in the usage metrics
                return Decision("bypass", UNAVAILABLE_ORIGIN, ip, Reason.STORE_UNAVAILABLE)
            # unhealthy: the engine still serves its last good index (or the answer the LAPI just gave)
            found = engine.get_ip_remediation(ip) if known is None else known
        remediation = found.remediation
        origin = found.origin
        if remediation not in _KNOWN:
            remediation = self._map.get(remediation, self._fallback)
        if remediation == "bypass":
            decision = Decision("bypass", origin, ip, Reason.CLEAN if origin == "clean" else Reason.DECISION)
        elif remediation == "captcha" and self._has_pass(request, ip):
            decision = Decision("bypass", origin, ip, Reason.CAPTCHA_SOLVED)
        else:
            decision = Decision(remediation, origin, ip, Reason.DECISION)
        self._count(origin, decision.remediation)
        return decision

    def _count(self, origin: str, remediation: str) -> None:
        # One engine call per request; its counters are meant to be in-process (no store I/O on this path).
        try:
            self.engine.update_metrics_origins_count(origin, remediation)
        except Exception as exc:
            self.counters.metrics_errors += 1
            self._warn_metrics("could not count a request in the usage metrics: %s", type(exc).__name__)

    def _has_pass(self, request: Request, ip: str) -> bool:
        token = request.cookies.get(self.cookie_name)
        if not token:
            return False
        fields = self._signer.unsign(_COOKIE_PURPOSE, token)
        if fields is None or len(fields) != 2 or fields[0] != ip:
            return False
        try:
            return int(fields[1]) > self._clock()
        except ValueError:
            return False

    # ---- responses ----------------------------------------------------------------------------------------------

    def is_captcha_post(self, request: Request) -> bool:
        """True for the challenge form's POST, which the adapter answers with :meth:`solve` (after a bounded read)."""
        return request.method == "POST" and request.path == self.captcha_path

    def handle(self, request: Request, body: bytes | None = None) -> Response | None:
        """The response to send instead of running the application, or None to run it.

        For :meth:`is_captcha_post` requests pass the body (at most ``max_body + 1`` bytes read); else leave it None.
        """
        if self.is_captcha_post(request):
            return self.solve(request, body or b"")
        return self.respond(request, self.decide(request))

    async def ahandle(self, request: Request, body: bytes | None = None) -> Response | None:
        """:meth:`handle` for async adapters (third-party captchas are verified with ``httpx.AsyncClient``)."""
        if self.is_captcha_post(request):
            return await self.asolve(request, body or b"")
        return await self.arespond(request, await self.adecide(request))

    def respond(self, request: Request, decision: Decision) -> Response | None:
        """The wall for ``decision`` (None for ``bypass``): HTML, or JSON for clients that ask for it."""
        if decision.remediation == "bypass":
            return None
        if decision.remediation == "captcha":
            return self._challenge(request, decision.ip or "", error=False)
        if decision.remediation == "unavailable":
            return self._page(request, 503, "unavailable", extra_headers=(("retry-after", "30"),))
        return self._page(request, 403, "ban")

    async def arespond(self, request: Request, decision: Decision) -> Response | None:
        """:meth:`respond` for async adapters: a challenge whose widget is costly to make (the image captcha's PNG)
        is made off the event loop (:meth:`CaptchaKind.aissue`)."""
        if decision.remediation == "captcha":
            return await self._achallenge(request, decision.ip or "", error=False)
        return self.respond(request, decision)

    async def _achallenge(self, request: Request, ip: str, *, error: bool) -> Response:
        if self._wants_json(request):  # no widget in a JSON answer
            return self._challenge(request, ip, error=error)
        lang = self.walls.language(request.headers.get("accept-language"))
        nonce = secrets.token_urlsafe(16)
        issued = await self.captcha.aissue(self._context(ip, lang, nonce))
        return self._page(request, 401, "captcha", content=lambda _lang, _nonce: issued, error=error, nonce=nonce)

    def _wants_json(self, request: Request) -> bool:
        accept = request.headers.get("accept", "")
        return "application/json" in accept and "text/html" not in accept

    def _page(
        self,
        request: Request,
        status: int,
        kind: str,
        *,
        content: Callable[[str, str], tuple[dict[str, str], str]] | None = None,
        error: bool = False,
        extra_headers: tuple[tuple[str, str], ...] = (),
        nonce: str | None = None,
    ) -> Response:
        lang = self.walls.language(request.headers.get("accept-language"))
        base = (("cache-control", "no-store"), ("x-content-type-options", "nosniff"), *extra_headers)
        if self._wants_json(request):
            texts = self.walls.texts.get(lang) or self.walls.texts[self.walls.default_language]
            remediation = {"ban": "ban", "captcha": "captcha"}.get(kind, kind)
            body = json.dumps({"remediation": remediation, "message": texts[f"{kind}_message"]}).encode()
            return Response(status, (("content-type", "application/json"), *base), body)
        nonce = nonce or secrets.token_urlsafe(16)
        inner = ""
        if content is not None:
            attrs, html_inner = content(lang, nonce)
            import html as _html

            attr_text = "".join(f' {k}="{_html.escape(v)}"' for k, v in attrs.items())
            inner = (
                f'<form id="cscapi-form" method="post" action="{_html.escape(self.captcha_path)}"{attr_text}>'
                f'<input type="hidden" name="return" value="{_html.escape(safe_return_path(request.target))}">'
                f"{html_inner}</form>"
            )
        page = self.walls.render(kind, lang, content=inner, error=error, nonce=nonce)
        headers = [("content-type", "text/html; charset=utf-8"), *base]
        if not self.captcha.external_origins or kind != "captcha":
            headers.append(
                (
                    "content-security-policy",
                    f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src data:; "
                    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                )
            )
        return Response(status, tuple(headers), page.encode())

    def _context(self, ip: str, lang: str, nonce: str) -> CaptchaContext:
        texts = self.walls.texts.get(lang) or self.walls.texts[self.walls.default_language]
        return CaptchaContext(self._signer, ip, self._clock(), self.challenge_lifetime, nonce, texts)

    def _challenge(self, request: Request, ip: str, *, error: bool) -> Response:
        return self._page(
            request,
            401,
            "captcha",
            content=lambda lang, nonce: self.captcha.issue(self._context(ip, lang, nonce)),
            error=error,
        )

    # ---- the challenge form's POST ------------------------------------------------------------------------------

    def _read_form(self, body: bytes) -> dict[str, str]:
        form: dict[str, str] = {}
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), max_num_fields=32)
        except ValueError:
            return form
        for name, value in pairs:
            form.setdefault(name, value)
        return form

    def _before_solve(self, request: Request, body: bytes) -> tuple[Response | None, dict[str, str], str, str]:
        if len(body) > self.max_body:
            return (
                Response(413, (("content-type", "text/plain"), ("cache-control", "no-store")), b"too large"),
                {},
                "",
                "",
            )
        form = self._read_form(body)
        target = safe_return_path(form.get("return"))
        decision = self._lookup_only(request)
        if decision.remediation != "captcha" or decision.ip is None:
            if decision.remediation == "bypass":
                return self._redirect(target), form, target, ""
            return self.respond(request, decision), form, target, ""
        return None, form, target, decision.ip

    def _lookup_only(self, request: Request) -> Decision:
        ip = self._resolve(request)
        if not ip:
            return self._unresolved() if ip == UNRESOLVED else Decision("bypass", "", None, Reason.NO_CLIENT_IP)
        try:
            found = self.engine.get_ip_remediation(ip)
        except Exception:
            return Decision("bypass" if self.fail_open else "unavailable", "", ip, Reason.STORE_UNAVAILABLE)
        remediation = found.remediation
        if remediation not in _KNOWN:
            remediation = self._map.get(remediation, self._fallback)
        return Decision(remediation, found.origin, ip, Reason.DECISION)

    def _after_solve(self, request: Request, ok: bool, target: str, ip: str) -> Response:
        if not ok:
            self.counters.captcha_failed += 1
            return self._challenge(request, ip, error=True)
        self.counters.captcha_solved += 1
        expires = int(self._clock() + self.grace_period)
        cookie = f"{self.cookie_name}={self._signer.sign(_COOKIE_PURPOSE, ip, str(expires))}; Path=/; " + (
            f"Max-Age={int(self.grace_period)}; HttpOnly; SameSite=Lax"
        )
        if self._is_https(request):
            cookie += "; Secure"
        return self._redirect(target, (("set-cookie", cookie),))

    def _is_https(self, request: Request) -> bool:
        if request.scheme in ("https", "wss"):
            return True
        if self.trusted_proxies and request.peer is not None:
            peer = parse_hop(request.peer)
            if peer in self.trusted_proxies:
                proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
                return proto == "https"
        return False

    def _redirect(self, target: str, extra: tuple[tuple[str, str], ...] = ()) -> Response:
        return Response(303, (("location", target), ("cache-control", "no-store"), *extra))

    def solve(self, request: Request, body: bytes) -> Response:
        """Answer the challenge form's POST: a 303 back to the page asked for (with the pass cookie when solved), the
        challenge again (401) when the answer is wrong, 413 for a body over ``max_body``."""
        early, form, target, ip = self._before_solve(request, body)
        if early is not None:
            return early
        ok = self.captcha.verify(self._context(ip, "en", ""), form)
        if ok and self._shared_store is not None:
            ok = self._claim_across_workers(form)
        return self._after_solve(request, ok, target, ip)

    async def asolve(self, request: Request, body: bytes) -> Response:
        """:meth:`solve` for async adapters."""
        early, form, target, ip = self._before_solve(request, body)
        if early is not None:
            return early
        ok = await self.captcha.averify(self._context(ip, "en", ""), form)
        if ok and self._shared_store is not None:
            import asyncio

            ok = await asyncio.to_thread(self._claim_across_workers, form)  # store I/O: off the event loop
        if not ok:
            self.counters.captcha_failed += 1
            return await self._achallenge(request, ip, error=True)
        return self._after_solve(request, ok, target, ip)

    def _claim_across_workers(self, form: Mapping[str, str]) -> bool:
        """True the first time any worker sharing the engine's store accepts this (already verified) challenge id:
        one atomic store operation (a leaky bucket of capacity 0 whose blackhole lasts until the challenge expires:
        the first pour overflows, every later one is ignored). A store error accepts it (this process's own single-use
        check still applies), counted and warned about."""
        fields = self._signer.unsign(_CHALLENGE_PURPOSE, form.get("cscapi_challenge", ""))
        if fields is None or len(fields) < 3:
            return False
        now = self._clock()
        try:
            keep = max(1.0, float(fields[2]) - now + 1.0)
            store = self._shared_store
            return bool(store.leak_bucket(f"challenge:{fields[1]}", 0, 0.0, keep, now))
        except Exception as exc:
            self.counters.store_unavailable += 1
            self._warn_store(
                "could not record a solved challenge in the shared store (%s): accepted", type(exc).__name__
            )
            return True

    def __repr__(self) -> str:
        return (
            f"Bouncer(trusted_proxies={self.trusted_proxies!r}, exempt_ips={self.exempt_ips!r}, "
            f"captcha={self.captcha!r}, fail_open={self.fail_open}, secret_key=***)"
        )


class _Unavailable(Exception):
    """The engine reports its store unreadable."""
