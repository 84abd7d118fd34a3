"""The scenarios every framework adapter must pass (Flask, Django, FastAPI), each driven by the framework's own test
client through a small :class:`Site` adapter: walls, ranges, IPv6, the captcha flow and its refusals, allowlist,
exempt paths, proxies, JSON clients, fail-open and fail-closed, detectors across workers. A test module gives
``build(bouncer) -> Site``; its application answers every path, and ``POST /login`` reports a failed login through the
framework's own helper."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cscapi.remediation import RemediationEngine
from cscapi.web import Bouncer
from test_remediation_support import FakeSource, allowlist, decision, stream
from test_web_support import (
    BANNED,
    CAPTCHA,
    CLEAN_IP,
    PROXY,
    RANGE_IP,
    V6_BANNED,
    V6_CAPTCHA,
    form_fields,
    make_bouncer,
    make_engine,
    solved_form,
    wrong_answer,
)

ALLOWED_BANNED = "192.0.2.50"  # banned by CAPI, and in the "office" allowlist


@dataclass
class Resp:
    status: int
    headers: dict[str, str]  # lower-case names
    text: str
    set_cookie: str | None  # the pass cookie's value, when one was set


class Site(Protocol):
    ran: list[str]  # the paths the application ran for

    def get(self, ip: str, path: str, *, headers: dict[str, str] | None = None, cookie: str | None = None) -> Resp: ...

    def post(self, ip: str, path: str, form: dict[str, str], *, cookie: str | None = None) -> Resp: ...


Build = Callable[[Bouncer], Site]


class RecordingBouncer(Bouncer):
    """A bouncer with a failed-login detector that records what it is told (the hook's contract)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_logins: list[Any] = []

    def report_failed_login(self, request_or_ip: Any) -> bool:
        self.failed_logins.append(request_or_ip)
        return True


def engine_with_allowlist() -> RemediationEngine:
    """A real engine where ``ALLOWED_BANNED`` is banned by the community blocklist but allowlisted."""
    source = FakeSource()
    office = allowlist("office")
    source.links[office.url] = f'{{"value": "{ALLOWED_BANNED}"}}\n'
    source.streams.append(stream([decision(ALLOWED_BANNED), decision(BANNED)], allowlists=[office]))
    engine = RemediationEngine(source, sync_interval_ms=0)
    engine.refresh_decisions()
    return engine


def clean_passes_and_walls_stop(build: Build) -> None:
    engine = make_engine()
    try:
        site = build(make_bouncer(engine))
        r = site.get(CLEAN_IP, "/hello?x=1")
        assert r.status == 200 and r.text == "app /hello" and r.set_cookie is None
        for ip in (BANNED, RANGE_IP, V6_BANNED, f"::ffff:{BANNED}"):
            r = site.get(ip, "/secret")
            assert r.status == 403, ip
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["content-type"].startswith("text/html")
            assert "<h1>Access denied</h1>" in r.text
        for ip in (CAPTCHA, V6_CAPTCHA):
            assert site.get(ip, "/secret").status == 401, ip
        assert site.ran == ["/hello"]
        assert engine.get_origins_count() == {"clean": {"bypass": 1}, "CAPI": {"ban": 4, "captcha": 2}}
    finally:
        engine.close()


def json_clients_get_json(build: Build) -> None:
    engine = make_engine()
    try:
        site = build(make_bouncer(engine))
        r = site.get(BANNED, "/api", headers={"accept": "application/json"})
        assert r.status == 403 and r.headers["content-type"] == "application/json"
        assert '"remediation": "ban"' in r.text
        r = site.get(CAPTCHA, "/api", headers={"accept": "application/json"})
        assert r.status == 401 and '"remediation": "captcha"' in r.text
        assert site.ran == []
    finally:
        engine.close()


def captcha_flow(build: Build) -> None:
    """Challenge, wrong answer, right answer (computed from the page), redirect back, cookie reuse, no replay."""
    engine = make_engine()
    try:
        bouncer = make_bouncer(engine)
        site = build(bouncer)
        r = site.get(CAPTCHA, "/shop/cart?item=3")
        assert r.status == 401 and site.ran == []
        assert form_fields(r.text)["return"] == "/shop/cart?item=3"
        wrong = site.post(CAPTCHA, "/.cscapi/captcha", solved_form(r.text, answer=wrong_answer(r.text)))
        assert wrong.status == 401 and wrong.set_cookie is None and 'role="alert"' in wrong.text
        form = solved_form(r.text)
        ok = site.post(CAPTCHA, "/.cscapi/captcha", form)
        assert ok.status == 303 and ok.headers["location"] == "/shop/cart?item=3"
        assert ok.set_cookie
        # The client's own cookie jar carries the pass cookie: reused on every page.
        assert site.get(CAPTCHA, "/shop/cart").status == 200
        assert site.get(CAPTCHA, "/other").status == 200
        assert site.ran == ["/shop/cart", "/other"]
        assert site.post(CAPTCHA, "/.cscapi/captcha", form).status == 401  # the same answer again: refused
        assert bouncer.counters.captcha_solved == 1 and bouncer.counters.captcha_failed == 2
        assert engine.get_origins_count()["CAPI"]["bypass"] == 2  # a solved captcha counts as bypass
    finally:
        engine.close()


def bad_cookies_are_refused(build: Build) -> None:
    """A tampered cookie, another IP's cookie and an expired cookie get the challenge again."""
    engine = make_engine()
    now = [1_000_000.0]
    try:
        site = build(make_bouncer(engine, clock=lambda: now[0]))
        ok = site.post(CAPTCHA, "/.cscapi/captcha", solved_form(site.get(CAPTCHA, "/").text))
        assert ok.status == 303 and ok.set_cookie
        value = ok.set_cookie
        assert site.get(V6_CAPTCHA, "/", cookie=value).status == 401  # another IP's cookie
        tampered = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
        assert site.get(CAPTCHA, "/", cookie=tampered).status == 401
        assert site.get(CAPTCHA, "/", cookie=value).status == 200
        now[0] += 1801
        assert site.get(CAPTCHA, "/", cookie=value).status == 401  # expired
        assert site.get(BANNED, "/", cookie=value).status == 403  # a cookie never lifts a ban
        assert site.ran == ["/"]
    finally:
        engine.close()


def no_open_redirect(build: Build) -> None:
    engine = make_engine()
    try:
        site = build(make_bouncer(engine))
        for target in ("//evil.example/x", "/\\evil.example", "https://evil.example/", "/ok\r\nSet-Cookie: x=1"):
            page = site.get(CAPTCHA, "/", cookie="").text  # a client without the pass cookie of the last round
            r = site.post(CAPTCHA, "/.cscapi/captcha", solved_form(page, return_to=target))
            assert r.status == 303 and r.headers["location"] == "/", target
    finally:
        engine.close()


def allowlist_and_exempt(build: Build) -> None:
    engine = engine_with_allowlist()
    try:
        site = build(make_bouncer(engine, exempt_paths=["/health"], exempt_ips=["203.0.113.0/24"]))
        assert site.get(ALLOWED_BANNED, "/").status == 200  # allowlisted: bypass despite the ban
        assert site.get(BANNED, "/").status == 403
        assert site.get(BANNED, "/health").status == 200
        assert site.get(BANNED, "/health/db").status == 200
        assert site.get(BANNED, "/healthz").status == 403
        assert site.get(BANNED, "/health/../admin").status == 403  # never exempt via a dot segment
        assert site.ran == ["/", "/health", "/health/db"]
    finally:
        engine.close()


def proxies_and_spoofing(build: Build) -> None:
    engine = make_engine()
    try:
        site = build(make_bouncer(engine, trusted_proxies=["10.0.0.0/8"]))
        assert site.get(PROXY, "/", headers={"x-forwarded-for": BANNED}).status == 403
        assert site.get(PROXY, "/", headers={"x-forwarded-for": f"{CLEAN_IP}, {BANNED}"}).status == 403
        assert site.get(PROXY, "/", headers={"x-forwarded-for": f"{BANNED}, 10.1.1.1"}).status == 403
        forwarded = build(make_bouncer(engine, trusted_proxies=["10.0.0.0/8"], forwarded_header="forwarded"))
        assert forwarded.get(PROXY, "/", headers={"forwarded": f'for="[{V6_BANNED}]:443"'}).status == 403
        assert site.get(PROXY, "/", headers={"x-forwarded-for": CLEAN_IP}).status == 200
        # Untrusted peers: their headers are ignored.
        assert site.get(CLEAN_IP, "/", headers={"x-forwarded-for": BANNED}).status == 200
        assert site.get(BANNED, "/", headers={"x-forwarded-for": CLEAN_IP, "x-real-ip": CLEAN_IP}).status == 403
        assert site.get(BANNED, "/", headers={"forwarded": f"for={CLEAN_IP}"}).status == 403
    finally:
        engine.close()


_SET_BY_PROXY = {
    "x-forwarded-for": f"{BANNED}",
    "forwarded": f'for="{BANNED}:4711";proto=https',
    "x-real-ip": BANNED,
}
_ADDED_BY_CLIENT = {
    "x-forwarded-for": CLEAN_IP,
    "forwarded": f"for={CLEAN_IP}",
    "x-real-ip": CLEAN_IP,
}


def one_forwarding_header(build: Build) -> None:
    """Only the configured header is read: a banned client behind the proxy cannot get through by adding another
    forwarding header (every pair), and an unreadable hop is never answered as the proxy's own (clean) address."""
    engine = make_engine()
    try:
        for configured, proxy_value in _SET_BY_PROXY.items():
            bouncer = make_bouncer(engine, trusted_proxies=["10.0.0.0/8"], forwarded_header=configured)
            site = build(bouncer)
            assert site.get(PROXY, "/", headers={configured: proxy_value}).status == 403, configured
            for added, client_value in _ADDED_BY_CLIENT.items():
                if added != configured:
                    spoof = {added: client_value, configured: proxy_value}
                    assert site.get(PROXY, "/", headers=spoof).status == 403, (configured, added)
            # The proxy's own requests (no header) are the proxy's.
            assert site.get(PROXY, "/").status == 200
            assert bouncer.counters.unresolved_client_ip == 0
        for bad in ("for=unknown", "for=_hidden", "proto=https", "for=garbage"):
            passing = make_bouncer(engine, trusted_proxies=["10.0.0.0/8"], forwarded_header="forwarded")
            assert build(passing).get(PROXY, "/", headers={"forwarded": bad}).status == 200, bad
            assert passing.counters.unresolved_client_ip == 1, bad  # counted (and warned), not a clean proxy IP
            closed = make_bouncer(engine, trusted_proxies=["10.0.0.0/8"], forwarded_header="forwarded", fail_open=False)
            assert build(closed).get(PROXY, "/", headers={"forwarded": bad}).status == 503, bad
        closed = make_bouncer(engine, trusted_proxies=["10.0.0.0/8"], fail_open=False)
        assert build(closed).get(PROXY, "/", headers={"x-forwarded-for": f"{BANNED}, junk"}).status == 503
    finally:
        engine.close()


def fail_open_and_closed(build: Build) -> None:
    engine = RemediationEngine(None, "redis://127.0.0.1:1/0", sync_interval_ms=0)
    try:
        assert engine.healthy is False
        assert build(make_bouncer(engine)).get(BANNED, "/").status == 200
        closed = build(make_bouncer(engine, fail_open=False)).get(BANNED, "/")
        assert closed.status == 503 and closed.headers["retry-after"] == "30"
    finally:
        engine.close()


class RaisingEngine(RemediationEngine):
    """An engine whose lookup raises (a bug, a failing live source): the contract under test is the bouncer's."""

    def get_ip_remediation(self, ip: str) -> Any:
        raise RuntimeError("the lookup failed")


def a_lookup_that_raises(build: Build) -> None:
    """Passed with ``fail_open`` (counted, and in the usage metrics as origin ``unavailable``), 503 without."""
    engine = RaisingEngine(None, sync_interval_ms=0)
    try:
        passing = make_bouncer(engine)
        site = build(passing)
        assert site.get(BANNED, "/x").status == 200
        assert site.get(CLEAN_IP, "/x").status == 200
        assert passing.counters.store_unavailable == 2
        assert site.ran == ["/x", "/x"]
        closed = make_bouncer(engine, fail_open=False)
        assert build(closed).get(BANNED, "/x").status == 503
        assert closed.counters.store_unavailable == 1
        assert engine.get_origins_count() == {"unavailable": {"bypass": 2}}  # a refused request is not a bypass
    finally:
        engine.close()


LOGIN_SCENARIO = "acme/login-bf"
DETECTOR_MACHINE = "d" * 48
ATTACKER = "203.0.113.66"


def detectors_across_workers(build: Build) -> None:
    """Failed logins reported in worker A through the framework's own helper (each test app's ``POST /login`` calls
    it) overflow a bucket in the shared SQLite store: worker B, a second engine on that store, remediates the IP after
    its sync, and one signal is queued in the SQL queue."""
    from cscapi.models import Machine
    from cscapi.sql_storage import SQLStorage
    from cscapi.web.detect import Detectors, failed_login

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/decisions.db"
        queue = SQLStorage(f"sqlite:///{tmp}/queue.db")
        queue.update_or_create_machine(Machine(machine_id=DETECTOR_MACHINE, password="p" * 32))
        a = RemediationEngine(None, uri, sync_interval_ms=0)
        b = RemediationEngine(None, uri, sync_interval_ms=0)
        detectors = Detectors(
            a,
            [failed_login(LOGIN_SCENARIO, capacity=3, leak_speed=3600, duration=3600)],
            signals=queue,
            allowed_scenarios=[LOGIN_SCENARIO],
            failed_login=LOGIN_SCENARIO,
            machine_id=DETECTOR_MACHINE,
        )
        try:
            assert detectors.buckets == "shared"
            worker_a = build(make_bouncer(a, detectors=detectors))
            for _ in range(4):  # capacity 3: the 4th failure overflows
                assert worker_a.post(ATTACKER, "/login", {"user": "admin", "password": "nope"}).status == 200
            assert detectors.flush()  # what the background thread does within flush_interval
            assert detectors.counters.overflows == 1
            worker_b = build(make_bouncer(b))
            b.sync()  # what its sync thread does within sync_interval_ms
            assert b.get_ip_remediation(ATTACKER).origin == "local"
            assert worker_b.get(ATTACKER, "/").status == 403
            assert worker_b.get(CLEAN_IP, "/").status == 200
            (signal,) = queue.get_signals(100)
            assert signal.scenario == LOGIN_SCENARIO and signal.source.value == ATTACKER
            assert signal.machine_id == DETECTOR_MACHINE
        finally:
            detectors.close()
            a.close()
            b.close()
            queue.close() if hasattr(queue, "close") else None


SCENARIOS: dict[str, Callable[[Build], None]] = {
    f.__name__: f
    for f in (
        clean_passes_and_walls_stop,
        json_clients_get_json,
        captcha_flow,
        bad_cookies_are_refused,
        no_open_redirect,
        allowlist_and_exempt,
        proxies_and_spoofing,
        one_forwarding_header,
        fail_open_and_closed,
        a_lookup_that_raises,
        detectors_across_workers,
    )
}


def header_map(items: Any) -> dict[str, str]:
    """Lower-case header names to values (the first of each)."""
    found: dict[str, str] = {}
    for name, value in items:
        found.setdefault(name.lower(), value)
    return found
