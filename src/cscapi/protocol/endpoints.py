"""CAPI's endpoints: base URLs, paths, and the requests a client sends (bodies encoded, gzip over the threshold).

The only module that knows CAPI paths and request field names.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cscapi.errors import ConfigurationError
from cscapi.limits import DEV_URL, PROD_URL
from cscapi.protocol.http import DEFAULT_GZIP_THRESHOLD, Request, encode_json_body
from cscapi.timeutil import format_http_date, format_rfc3339

__all__ = ["DEV_URL", "PROD_URL", "Endpoints", "metrics_payload", "normalise_base_url"]


def normalise_base_url(url: str, api_version: str = "v3") -> str:
    """The CAPI root ending with ``/``: accepts ``http://host:port``, ``.../`` or a URL ending with ``/v3``."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("base_url must be a non-empty URL such as http://127.0.0.1:8081/.")
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"base_url {text!r} is not an http(s) URL.", hint="Use the CAPI root, e.g. http://127.0.0.1:8081/."
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(f"base_url {text!r} must not carry a query or a fragment.")
    path = parts.path.rstrip("/")
    if path.endswith("/" + api_version):
        path = path[: -len(api_version) - 1]
    return f"{parts.scheme}://{parts.netloc}{path}/"


def metrics_payload(name: str, version: str, last_push: datetime | None, last_update: datetime) -> dict[str, Any]:
    """A ``MetricsRequest`` describing this SDK as one machine (what the official soft-agent SDKs send)."""
    machine = {"name": name, "version": version, "last_update": format_rfc3339(last_update)}
    if last_push is not None:
        machine["last_push"] = format_rfc3339(last_push)
    return {"bouncers": [], "machines": [machine]}


class Endpoints:
    """Builds every CAPI request against one base URL and API version (``v3``)."""

    def __init__(
        self,
        base_url: str,
        api_version: str = "v3",
        gzip_threshold: int = DEFAULT_GZIP_THRESHOLD,
    ) -> None:
        self.base_url = normalise_base_url(base_url, api_version)
        self.api_version = api_version
        self.gzip_threshold = gzip_threshold
        self._prefix = f"{self.base_url}{api_version}/"

    def url(self, path: str) -> str:
        """The absolute URL of an API path such as ``watchers/login``."""
        return self._prefix + path.lstrip("/")

    def _post(self, path: str, operation: str, payload: Any, *, authenticated: bool) -> Request:
        content, headers = encode_json_body(payload, self.gzip_threshold)
        return Request(
            method="POST",
            url=self.url(path),
            operation=operation,
            headers=headers,
            content=content,
            authenticated=authenticated,
        )

    # ---- machines --------------------------------------------------------------------------------------

    def register(self, machine_id: str, password: str) -> Request:
        """``POST /v3/watchers``: create the machine with its password (no token)."""
        return self._post("watchers", "register", {"machine_id": machine_id, "password": password}, authenticated=False)

    def login(self, machine_id: str, password: str, scenarios: Sequence[str]) -> Request:
        """``POST /v3/watchers/login`` with the installed scenarios (CAPI tailors the blocklist to them)."""
        body = {"machine_id": machine_id, "password": password, "scenarios": list(scenarios)}
        return self._post("watchers/login", "login", body, authenticated=False)

    def enroll(self, attachment_key: str, name: str | None, tags: Sequence[str], overwrite: bool) -> Request:
        """``POST /v3/watchers/enroll``; ``overwrite`` and empty ``name``/``tags`` left out, as the Go client does."""
        body: dict[str, Any] = {"attachment_key": attachment_key}
        if name:
            body["name"] = name
        if tags:
            body["tags"] = list(tags)
        if overwrite:
            body["overwrite"] = True
        return self._post("watchers/enroll", "enroll", body, authenticated=True)

    def reset_password(self, machine_id: str, password: str) -> Request:
        """``POST /v3/watchers/reset``."""
        body = {"machine_id": machine_id, "password": password}
        return self._post("watchers/reset", "reset password", body, authenticated=False)

    # ---- signals, decisions, metrics -----------------------------------------------------------------

    def signals(self, items: list[dict[str, Any]]) -> Request:
        """``POST /v3/signals`` with an ``AddSignalsRequest`` array (see ``cscapi.protocol.wire``)."""
        return self._post("signals", "signals", items, authenticated=True)

    def decisions_stream(
        self, *, startup: bool = False, community_pull: bool = True, additional_pull: bool = True
    ) -> Request:
        """``GET /v3/decisions/stream``: ``startup=true`` only when asked, pull flags only when disabled."""
        params: dict[str, str] = {}
        if startup:
            params["startup"] = "true"
        if not community_pull:
            params["community_pull"] = "false"
        if not additional_pull:
            params["additional_pull"] = "false"
        return Request(
            method="GET",
            url=self.url("decisions/stream"),
            operation="decisions stream",
            headers={"Accept": "application/json"},
            params=params,
            authenticated=True,
        )

    def decisions_delete(self, uuids: Sequence[str]) -> Request:
        """``POST /v3/decisions/delete`` with the UUIDs of decisions deleted locally."""
        return self._post("decisions/delete", "decisions delete", list(uuids), authenticated=True)

    def metrics(self, payload: dict[str, Any]) -> Request:
        """``POST /v3/metrics`` with a ``MetricsRequest``."""
        return self._post("metrics", "metrics", payload, authenticated=True)

    def usage_metrics(self, payload: dict[str, Any]) -> Request:
        """``POST /v3/usage-metrics`` with an ``AllMetrics`` object (the LAPI swagger's model)."""
        return self._post("usage-metrics", "usage metrics", payload, authenticated=True)

    @staticmethod
    def link(url: str, if_modified_since: datetime | str | None = None) -> Request:
        """``GET`` of a blocklist/allowlist link: never authenticated (the URLs are signed), conditional when asked."""
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"Cannot download {str(url)[:200]!r}: not an http(s) URL.")
        headers: dict[str, str] = {}
        if if_modified_since is not None:
            headers["If-Modified-Since"] = (
                if_modified_since if isinstance(if_modified_since, str) else format_http_date(if_modified_since)
            )
        return Request(
            method="GET",
            url=url,
            operation="link download",
            headers=headers,
            authenticated=False,
            follow_redirects=True,
        )
