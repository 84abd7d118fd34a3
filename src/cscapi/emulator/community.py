"""The community blocklist's initial content: generated reproducibly from a seed, or loaded from a file.

Generated values come from ranges reserved for documentation and benchmarking (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24, 198.18.0.0/15, then 240.0.0.0/4; 2001:db8::/32 for IPv6), so a demo never bans a real host.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cscapi.emulator.jsonlimits import loads_limited
from cscapi.errors import ConfigurationError
from cscapi.timeutil import parse_go_duration

__all__ = [
    "ALL_SCENARIOS",
    "DEFAULT_SCENARIO",
    "SCENARIOS",
    "SeedDecision",
    "generate_community",
    "load_community_file",
    "normalise_value",
]

#: Realistic hub scenarios with rough weights (SSH brute force dominates the real community blocklist).
SCENARIOS: tuple[tuple[str, int], ...] = (
    ("crowdsecurity/ssh-bf", 30),
    ("crowdsecurity/ssh-slow-bf", 8),
    ("crowdsecurity/http-probing", 12),
    ("crowdsecurity/http-crawl-non_statics", 6),
    ("crowdsecurity/http-bad-user-agent", 6),
    ("crowdsecurity/http-path-traversal-probing", 4),
    ("crowdsecurity/http-sensitive-files", 5),
    ("crowdsecurity/http-admin-interface-probing", 4),
    ("crowdsecurity/http-backdoors-attempts", 3),
    ("crowdsecurity/http-wordpress_wpconfig", 2),
    ("crowdsecurity/http-cve-2021-41773", 2),
    ("crowdsecurity/apache_log4j2_cve-2021-44228", 2),
    ("crowdsecurity/postfix-spam", 3),
    ("crowdsecurity/smb-bf", 2),
    ("crowdsecurity/mssql-bf", 2),
    ("crowdsecurity/telnet-bf", 3),
    ("crowdsecurity/iptables-scan-multi_ports", 6),
)

#: The scenario of a decision loaded or added without one.
DEFAULT_SCENARIO = "crowdsecurity/community-blocklist"
#: Every scenario a generated list or a scenario-less decision carries: a login declaring these gets the whole
#: community list although it is tailored to the login's scenarios (tests and demos).
ALL_SCENARIOS: tuple[str, ...] = (*(name for name, _ in SCENARIOS), DEFAULT_SCENARIO)

_DURATIONS_H = (24, 48, 72, 96, 168)
_V4_POOLS = (
    ipaddress.IPv4Network("192.0.2.0/24"),
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("203.0.113.0/24"),
    ipaddress.IPv4Network("198.18.0.0/15"),
)
_V4_OVERFLOW = ipaddress.IPv4Network("240.0.0.0/4")
_V6_DOC = int(ipaddress.IPv6Address("2001:db8::"))


@dataclass(frozen=True)
class SeedDecision:
    """One initial community decision: ``remaining`` seconds of life left at start."""

    value: str
    scope: str
    scenario: str
    remaining: float
    uuid: str


def normalise_value(value: str, scope: str | None = None) -> tuple[str, str]:
    """Canonical ``(value, scope)`` for an IP or CIDR (``scope`` guessed when ``None``); ``ValueError`` if unreadable.

    Scopes other than ``ip``/``range`` (``country``, ``as``...) are kept as given, value untouched.
    """
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise ValueError("empty value")
    if scope is not None and not isinstance(scope, str):
        raise ValueError(f"scope must be a string, got {type(scope).__name__}")
    lowered = (scope or "").strip().lower()
    if lowered and lowered not in {"ip", "range"}:
        return text, lowered
    if "/" in text:
        net = ipaddress.ip_network(text, strict=False)
        if lowered == "ip" and net.num_addresses != 1:
            raise ValueError(f"{text!r} is a range, not an ip")
        if net.num_addresses == 1 and lowered != "range":
            return str(net.network_address), "ip"
        return str(net), "range"
    addr = ipaddress.ip_address(text)
    if lowered == "range":
        return str(ipaddress.ip_network(addr)), "range"
    return str(addr), "ip"


_SCENARIO_NAMES = [n for n, _ in SCENARIOS]
_SCENARIO_CUM = list(itertools.accumulate(w for _, w in SCENARIOS))


def _v4(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def _uuid4(rng: random.Random) -> str:
    bits = (rng.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def generate_community(size: int, seed: int, scenarios: Sequence[str] | None = None) -> list[SeedDecision]:
    """``size`` decisions, the same for the same seed: ~80 % IPv4, 8 % IPv6 addresses, 7 % IPv4 and 5 % IPv6 ranges.

    Scenarios are drawn from the realistic weighted set, or only from ``scenarios`` when given (same values and
    durations for the same seed either way).
    """
    names, cumulative = _SCENARIO_NAMES, _SCENARIO_CUM
    if scenarios:
        weights = dict(SCENARIOS)
        names = list(dict.fromkeys(scenarios))
        cumulative = list(itertools.accumulate(weights.get(n, 5) for n in names))
    rng = random.Random(seed)
    n_v6 = size * 8 // 100
    n_r4 = size * 7 // 100
    n_r6 = size * 5 // 100
    n_v4 = size - n_v6 - n_r4 - n_r6
    values: list[tuple[str, str]] = []

    pool_sizes = [p.num_addresses for p in _V4_POOLS]
    pool_total = sum(pool_sizes)
    picks = rng.sample(range(pool_total), min(n_v4, pool_total))
    starts = [int(p.network_address) for p in _V4_POOLS]
    for index in picks:
        for start, count in zip(starts, pool_sizes):
            if index < count:
                values.append((_v4(start + index), "ip"))
                break
            index -= count
    seen: set[int] = set()
    base = int(_V4_OVERFLOW.network_address)
    while len(values) < n_v4:
        offset = rng.randrange(1 << 27)  # lower half of 240.0.0.0/4; ranges use the upper half
        if offset not in seen:
            seen.add(offset)
            values.append((_v4(base + offset), "ip"))
    seen_v6: set[int] = set()
    while len(values) < n_v4 + n_v6:
        low = rng.getrandbits(96)
        if low not in seen_v6:
            seen_v6.add(low)
            values.append((str(ipaddress.IPv6Address(_V6_DOC + low)), "ip"))
    seen_r4: set[int] = set()
    while len(values) < n_v4 + n_v6 + n_r4:
        block = rng.randrange(1 << 19)
        if block not in seen_r4:
            seen_r4.add(block)
            prefix = rng.choice((24, 24, 24, 26, 28))
            net = ipaddress.IPv4Network((base + (1 << 27) + (block << 8), prefix), strict=False)
            values.append((str(net), "range"))
    seen_r6: set[int] = set()
    while len(values) < size:
        block = rng.getrandbits(16)
        if block not in seen_r6:
            seen_r6.add(block)
            prefix = rng.choice((48, 56, 64))
            net6 = ipaddress.IPv6Network((_V6_DOC + (block << 80) + (rng.getrandbits(16) << 64), prefix), strict=False)
            values.append((str(net6), "range"))
    out: list[SeedDecision] = []
    total_weight = cumulative[-1]
    durations = [h * 3600 for h in _DURATIONS_H]
    rand = rng.random
    for value, scope in values:
        total = durations[int(rand() * len(durations))]
        remaining = float(int(total * (0.05 + 0.95 * rand())))
        scenario = names[min(bisect.bisect_right(cumulative, rand() * total_weight), len(names) - 1)]
        out.append(SeedDecision(value, scope, scenario, remaining, _uuid4(rng)))
    return out


def _entry(value: Any, scope: Any, scenario: Any, duration: Any, where: str, rng: random.Random) -> SeedDecision:
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}: 'value' must be a string")
    try:
        canonical, scope_name = normalise_value(value, scope if isinstance(scope, str) else None)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {value!r} is not an IP address or range ({exc})") from None
    if scenario is None:
        scenario = DEFAULT_SCENARIO
    if not isinstance(scenario, str) or not scenario:
        raise ConfigurationError(f"{where}: 'scenario' must be a non-empty string")
    try:
        remaining = parse_go_duration(duration) if isinstance(duration, str) else float(duration or 86400)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{where}: duration {duration!r} is not a Go duration such as 24h") from None
    if remaining <= 0:
        raise ConfigurationError(f"{where}: duration must be positive")
    return SeedDecision(canonical, scope_name, scenario, remaining, _uuid4(rng))


def load_community_file(path: str | Path, seed: int = 0) -> list[SeedDecision]:
    """Read a community list file; ``ConfigurationError`` names the first bad line or item.

    Text: one decision per line, ``VALUE [SCENARIO [DURATION]]``, blank lines and ``#`` comments ignored.
    JSON: a list of ``{"value", "scope"?, "scenario"?, "duration"?}`` or a decisions-stream answer (``{"new": [...]}``).
    """
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeError) as exc:
        raise ConfigurationError(f"cannot read community file {p}: {exc}") from None
    rng = random.Random(seed)
    out: list[SeedDecision] = []
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = loads_limited(text)
        except ValueError as exc:
            raise ConfigurationError(f"{p} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            groups = data.get("new") or []
            if not isinstance(groups, list):
                raise ConfigurationError(f"{p}: 'new' must be a list")
            for gi, group in enumerate(groups):
                if not isinstance(group, dict) or not isinstance(group.get("decisions"), list):
                    raise ConfigurationError(f"{p}: new[{gi}] must have a 'decisions' list")
                for di, item in enumerate(group["decisions"]):
                    if not isinstance(item, dict):
                        raise ConfigurationError(f"{p}: new[{gi}].decisions[{di}] must be an object")
                    where = f"{p}: new[{gi}].decisions[{di}]"
                    out.append(
                        _entry(
                            item.get("value"),
                            group.get("scope"),
                            group.get("scenario"),
                            item.get("duration"),
                            where,
                            rng,
                        )
                    )
        elif isinstance(data, list):
            for i, item in enumerate(data):
                if isinstance(item, str):
                    out.append(_entry(item, None, None, None, f"{p}: [{i}]", rng))
                elif isinstance(item, dict):
                    out.append(
                        _entry(
                            item.get("value"),
                            item.get("scope"),
                            item.get("scenario"),
                            item.get("duration"),
                            f"{p}: [{i}]",
                            rng,
                        )
                    )
                else:
                    raise ConfigurationError(f"{p}: [{i}] must be a string or an object")
        else:
            raise ConfigurationError(f"{p}: JSON must be a list or a decisions-stream object")
        return out
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) > 3:
            raise ConfigurationError(f"{p}:{lineno}: expected 'VALUE [SCENARIO [DURATION]]', got {line!r}")
        value = parts[0]
        scenario = parts[1] if len(parts) > 1 else None
        duration = parts[2] if len(parts) > 2 else None
        out.append(_entry(value, None, scenario, duration, f"{p}:{lineno}", rng))
    return out
