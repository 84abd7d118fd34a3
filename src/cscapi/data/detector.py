"""A small log detector, in the spirit of fail2ban: N failures from one IP within a window make a detection.

It knows two patterns, enough for the demo and the examples: sshd authentication failures (``crowdsecurity/ssh-bf``)
and HTTP probing, i.e. many distinct paths answered 403/404 (``crowdsecurity/http-probing``). Real products bring their
own detection; what matters to cscapi is the :class:`Detection` it hands over, turned into a signal by ``to_signal``.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

__all__ = ["Detection", "LogDetector", "detect"]

SSH_SCENARIO = "crowdsecurity/ssh-bf"
HTTP_SCENARIO = "crowdsecurity/http-probing"

_SYSLOG = re.compile(
    r"^(?P<month>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<time>\d{2}:\d{2}:\d{2}) \S+ sshd\[\d+\]: (?P<msg>.*)$"
)
_SSH_FAILURES = (
    re.compile(
        r"^Failed (?:password|publickey|none|keyboard-interactive/pam) for (?:invalid user )?\S+ from (?P<ip>\S+)"
    ),
    re.compile(r"authentication failure;.* rhost=(?P<ip>[0-9A-Fa-f:.]+)"),
)
_ACCESS = re.compile(
    r'^(?P<ip>[0-9A-Fa-f:.]+) \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) '
)
_MONTHS = {
    m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}


@dataclass(frozen=True)
class Detection:
    """One IP that crossed a scenario's threshold: how many events, when, and one log line as evidence."""

    ip: str
    scenario: str
    events: int
    first_seen: datetime
    last_seen: datetime
    evidence: str = field(repr=False)

    @property
    def message(self) -> str:
        """The signal message, worded as CrowdSec's engine words it."""
        return (
            f"Ip {self.ip} performed '{self.scenario}' ({self.events} events over "
            f"{(self.last_seen - self.first_seen).total_seconds():g}s) at {self.last_seen.isoformat()}"
        )

    def shifted(self, delta: timedelta) -> Detection:
        """The same detection moved in time (the demo replays old logs as if they happened just now)."""
        return replace(self, first_seen=self.first_seen + delta, last_seen=self.last_seen + delta)


class LogDetector:
    """Feed it lines; ask it for detections. Counts lines read, recognised, and skipped."""

    def __init__(
        self,
        *,
        ssh_threshold: int = 5,
        http_threshold: int = 8,
        window_seconds: float = 600,
        year: int | None = None,
    ) -> None:
        self.ssh_threshold = ssh_threshold
        self.http_threshold = http_threshold
        self.window = timedelta(seconds=window_seconds)
        self.year = year
        self.lines = 0
        self.recognised = 0
        self._events: dict[tuple[str, str], list[tuple[datetime, str, str]]] = defaultdict(list)

    def _syslog_time(self, month: str, day: str, clock: str) -> datetime:
        now = datetime.now(timezone.utc)
        year = self.year or now.year
        hour, minute, second = (int(x) for x in clock.split(":"))
        moment = datetime(year, _MONTHS[month], int(day), hour, minute, second, tzinfo=timezone.utc)
        if self.year is None and moment > now + timedelta(days=1):  # syslog has no year: December logs read in January
            moment = moment.replace(year=year - 1)
        return moment

    def feed(self, line: str) -> bool:
        """Read one line; True when it was an attack event (a failure or a probe)."""
        self.lines += 1
        line = line.rstrip("\n")
        match = _SYSLOG.match(line)
        if match:
            for pattern in _SSH_FAILURES:
                event = pattern.search(match["msg"])
                if event:
                    return self._add(
                        event["ip"],
                        SSH_SCENARIO,
                        self._syslog_time(match["month"], match["day"], match["time"]),
                        "",
                        line,
                    )
            return False
        match = _ACCESS.match(line)
        if match and match["status"] in ("403", "404"):
            try:
                when = datetime.strptime(match["ts"], "%d/%b/%Y:%H:%M:%S %z").astimezone(timezone.utc)
            except ValueError:
                return False
            return self._add(match["ip"], HTTP_SCENARIO, when, match["path"], line)
        return False

    def _add(self, ip: str, scenario: str, when: datetime, key: str, line: str) -> bool:
        try:
            canonical = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return False
        if isinstance(canonical, ipaddress.IPv6Address) and canonical.ipv4_mapped is not None:
            canonical = canonical.ipv4_mapped
        self._events[(str(canonical), scenario)].append((when, key, line))
        self.recognised += 1
        return True

    def detections(self) -> list[Detection]:
        """Every (IP, scenario) whose events within one window reach the scenario's threshold, oldest first.

        For HTTP probing the count is of *distinct* paths, as CrowdSec's http-probing scenario counts them.
        """
        found: list[Detection] = []
        for (ip, scenario), events in self._events.items():
            events.sort(key=lambda e: e[0])
            threshold = self.ssh_threshold if scenario == SSH_SCENARIO else self.http_threshold
            start = 0
            best: tuple[int, int, int] | None = None
            for end in range(len(events)):
                while events[end][0] - events[start][0] > self.window:
                    start += 1
                window = events[start : end + 1]
                count = len({e[1] for e in window}) if scenario == HTTP_SCENARIO else len(window)
                if count >= threshold and (best is None or count > best[0]):
                    best = (count, start, end)
            if best is not None:
                count, first, last = best
                found.append(
                    Detection(ip, scenario, count, events[first][0], events[last][0], evidence=events[last][2])
                )
        found.sort(key=lambda d: (d.first_seen, d.ip))
        return found


def detect(
    lines: Iterable[str],
    *,
    rebase_to: datetime | None = None,
    ssh_threshold: int = 5,
    http_threshold: int = 8,
) -> list[Detection]:
    """Run a :class:`LogDetector` over ``lines``; with ``rebase_to``, move detections so the latest ends then."""
    detector = LogDetector(ssh_threshold=ssh_threshold, http_threshold=http_threshold)
    for line in lines:
        detector.feed(line)
    found = detector.detections()
    if rebase_to is not None and found:
        delta = rebase_to - max(d.last_seen for d in found)
        found = [d.shifted(delta) for d in found]
    return found
