"""Read signals from a JSON-lines or CSV file: every line validated on its own, rejects reported with line numbers.

A line is either a full signal object (with a ``source``) or the flat form::

    {"ip": "203.0.113.7", "scenario": "crowdsecurity/ssh-bf", "decision": "ban", "duration": "4h",
     "created_at": "2026-11-21T22:01:03Z", "message": "...", "context": {"user": "root"}}

CSV files have a header row with the same flat names; ``context.KEY`` columns become context items.

A line without a ``uuid`` gets one derived from its content (and the machine): adding the same file twice queues
its signals once, the second time they are counted as already queued.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cscapi.errors import CAPIError, ConfigurationError

FLAT_FIELDS = (
    "ip",
    "value",
    "range",
    "scenario",
    "created_at",
    "start_at",
    "stop_at",
    "message",
    "decision",
    "duration",
    "scope",
    "machine_id",
    "uuid",
    "scenario_version",
    "scenario_hash",
    "scenario_trust",
    "kind",
    "context",
    "as_number",
    "as_name",
    "cn",
)
#: Namespace of the uuids derived from a line's content (uuid5), so that re-adding a file is idempotent.
LINE_UUID_NAMESPACE = uuid.UUID("5f0c1d2e-6a3b-5c4d-8e9f-0a1b2c3d4e5f")


def line_uuid(item: Mapping[str, Any], machine_id: str | None) -> str:
    """A stable uuid for an input line that has none: the same content for the same machine gives the same uuid."""
    content = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return str(uuid.uuid5(LINE_UUID_NAMESPACE, f"{machine_id or ''}\n{content}"))


@dataclass
class Rejected:
    """One input line that could not become a signal."""

    line: int
    reason: str


@dataclass
class ParseResult:
    """The valid signals, the rejected lines, and how many lines were read (blank lines and comments skipped)."""

    signals: list[Any] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    lines: int = 0


def detect_format(path: str, explicit: str | None) -> str:
    """``jsonl`` or ``csv``, from ``--format`` or the file extension; a ``ConfigurationError`` otherwise."""
    if explicit:
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ConfigurationError(
        f"cannot tell the format of {path!r} from its extension",
        hint="Use a .jsonl or .csv file, or pass --format jsonl|csv.",
    )


def build_signal(item: Mapping[str, Any], default_machine_id: str | None) -> Any:
    """A validated signal from one flat or full item (raises ``ValidationError`` naming the bad field)."""
    from cscapi.errors import ValidationError
    from cscapi.signals import create_signal, validate_signal

    if "source" in item:
        data = dict(item)
        data.setdefault("machine_id", default_machine_id)
        if not data.get("uuid"):
            data["uuid"] = line_uuid(item, data["machine_id"])
        return validate_signal(data)
    unknown = sorted(set(item) - set(FLAT_FIELDS))
    if unknown:
        raise ValidationError(f"unknown field(s) {', '.join(unknown)}", field=unknown[0])
    ip = item.get("ip") or item.get("value") or item.get("range")
    if not ip:
        raise ValidationError("missing ip (or value/range)", field="ip")
    scenario = item.get("scenario")
    if not scenario:
        raise ValidationError("missing scenario", field="scenario")
    kwargs: dict[str, Any] = {
        k: item[k]
        for k in (
            "message",
            "start_at",
            "stop_at",
            "uuid",
            "scenario_version",
            "scenario_hash",
            "scenario_trust",
            "kind",
            "as_number",
            "as_name",
            "cn",
        )
        if item.get(k) not in (None, "")
    }
    scope = item.get("scope") or ("range" if item.get("range") or "/" in str(ip) else None)
    if scope:
        kwargs["scope"] = scope
    decision = item.get("decision") or None
    duration = item.get("duration") or None
    if duration and not decision:
        raise ValidationError(
            "duration without decision (a signal without a decision is a whisper, which has no duration)",
            field="duration",
        )
    machine_id = item.get("machine_id") or default_machine_id
    if "uuid" not in kwargs:
        kwargs["uuid"] = line_uuid(item, machine_id)
    return create_signal(
        str(ip),
        str(scenario),
        item.get("created_at") or None,
        machine_id,
        context=item.get("context") or None,
        decision_type=decision,
        duration=duration,
        **kwargs,
    )


def _jsonl_items(stream: IO[str]) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(stream, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _csv_items(stream: IO[str]) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(stream)
    header = reader.fieldnames or []
    unknown = [h for h in header if h not in FLAT_FIELDS and not h.startswith("context.")]
    if not header:
        raise ConfigurationError(
            "the CSV file has no header row", hint="The first row names the columns: ip,scenario,..."
        )
    if unknown:
        raise ConfigurationError(
            f"unknown CSV column(s): {', '.join(unknown)}",
            hint=f"Known columns: {', '.join(FLAT_FIELDS)}, and context.KEY.",
        )
    for row in reader:
        if None in row:
            extra = len(row[None])
            yield reader.line_num, ValueError(f"{extra} more {'value' if extra == 1 else 'values'} than header columns")
            continue
        item: dict[str, Any] = {}
        context: dict[str, str] = {}
        for key, value in row.items():
            if value in (None, ""):
                continue
            if key.startswith("context."):
                context[key[len("context.") :]] = value
            else:
                item[key] = value
        if not item and not context:
            continue
        if context:
            item["context"] = context
        yield reader.line_num, item


def parse_stream(
    stream: IO[str],
    fmt: str,
    default_machine_id: str | None,
    on_line: Callable[[], None] | None = None,
) -> ParseResult:
    """Validate every line; never stops at the first bad one."""
    result = ParseResult()
    try:
        _parse_into(result, stream, fmt, default_machine_id, on_line)
    except UnicodeDecodeError:
        if not result.lines:
            raise ConfigurationError(
                "the input is not a text file (its first line is not UTF-8)",
                hint="Give a JSON-lines or CSV file in UTF-8 (convert it first if it is text in another encoding).",
            ) from None
        lines = f"{result.lines} readable {'line' if result.lines == 1 else 'lines'}"
        raise ConfigurationError(
            f"the input is not UTF-8 text: a byte after its first {lines} is not UTF-8",
            hint="Convert it to UTF-8 first.",
        ) from None
    except csv.Error as exc:
        raise ConfigurationError(f"the CSV input is malformed after line {result.lines}: {exc}") from None
    return result


def _parse_into(
    result: ParseResult,
    stream: IO[str],
    fmt: str,
    default_machine_id: str | None,
    on_line: Callable[[], None] | None,
) -> None:
    items = _jsonl_items(stream) if fmt == "jsonl" else _csv_items(stream)
    for number, item in items:
        result.lines += 1
        if on_line is not None:
            on_line()
        if isinstance(item, ValueError):
            result.rejected.append(Rejected(number, str(item)))
            continue
        if not isinstance(item, Mapping):
            result.rejected.append(Rejected(number, f"expected a JSON object, got {type(item).__name__}"))
            continue
        try:
            result.signals.append(build_signal(item, default_machine_id))
        except CAPIError as exc:
            result.rejected.append(Rejected(number, exc.message.rstrip(".")))
        except (TypeError, ValueError) as exc:
            result.rejected.append(Rejected(number, str(exc)))


def open_input(path: str) -> IO[str]:
    """The file (``-`` is stdin), as text; a ``ConfigurationError`` if it cannot be read."""
    import sys

    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig") if hasattr(sys.stdin, "buffer") else sys.stdin
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}", hint="Check the path.") from None


def check_text_file(path: str) -> None:
    """A ``ConfigurationError`` for a file that is plainly not text (a NUL byte in its first 8 KiB); stdin is
    checked as it is read."""
    if path == "-":
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192)
    except OSError:
        return  # open_input says why it cannot be read
    if b"\x00" in head:
        raise ConfigurationError(
            f"{path} is not a text file (it contains NUL bytes)",
            hint="Give a JSON-lines (.jsonl) or CSV (.csv) file in UTF-8.",
        )


def count_lines(path: str) -> int | None:
    """The number of lines of a regular file (for the progress bar), None for stdin."""
    if path == "-":
        return None
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return None
