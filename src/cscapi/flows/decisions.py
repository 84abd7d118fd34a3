"""Decisions: pull the decisions stream (parsed off the event loop in async, skipped items logged with a cap), the
blocklist/allowlist links (capped, plain http refused when CAPI is https), and report decisions deleted locally."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cscapi._text import plural
from cscapi.errors import UnsafeLinkError, ValidationError
from cscapi.flows._base import FlowBase
from cscapi.flows.auth import AuthFlows
from cscapi.iputil import is_loopback_host
from cscapi.models import LinkDownload
from cscapi.protocol import Endpoints, Request, error_for, parse_stream, safe_url
from cscapi.runtime import Compute, Flow
from cscapi.signals import validate_scenarios

if TYPE_CHECKING:
    from cscapi.models import DecisionStream

__all__ = ["DecisionFlows"]

_MAX_SKIP_WARNINGS = 20  # skipped stream items logged one by one per call; the rest in one summary line


class DecisionFlows(FlowBase):
    """``get_decisions``, ``download_link`` and ``delete_decisions``."""

    def __init__(self, auth: AuthFlows) -> None:
        super().__init__(auth.storage, auth.config, auth.endpoints, auth.retry)
        self.auth = auth

    def get_decisions(
        self,
        main_machine_id: str,
        scenarios: Sequence[str] | None = None,
        *,
        startup: bool = False,
        community_pull: bool = True,
        additional_pull: bool = True,
    ) -> Flow[DecisionStream]:
        """Pull ``GET /v3/decisions/stream`` as ``main_machine_id`` (logged in with ``scenarios`` if given)."""
        scen = validate_scenarios(scenarios) if scenarios is not None else None
        request = self.endpoints.decisions_stream(
            startup=startup, community_pull=community_pull, additional_pull=additional_pull
        ).with_limit(self.config.max_stream_bytes, "max_stream_bytes")
        response = yield from self.auth.authed(main_machine_id, request, scenarios=scen)
        if not response.ok:
            raise error_for(response, "decisions stream")

        logged = unlogged = 0  # a hostile stream of 100k bad items must not write 100k log lines

        def skipped(reason: str) -> None:
            nonlocal logged, unlogged
            if logged < _MAX_SKIP_WARNINGS:
                logged += 1
                self.log.warning("Skipped a decisions stream item: %s", reason)
            else:
                unlogged += 1

        stream: DecisionStream = yield Compute(parse_stream, (response,), {"startup": startup, "on_skip": skipped})
        if unlogged:
            self.log.warning(
                "Skipped %d more decisions stream items (only the first %d are logged one by one).",
                unlogged,
                _MAX_SKIP_WARNINGS,
            )
        self._cap_links(stream)
        self.log.info(
            "Decisions stream: %d new, %d deleted, %s, %s, %d skipped.",
            len(stream.new),
            len(stream.deleted),
            plural(len(stream.blocklists), "blocklist"),
            plural(len(stream.allowlists), "allowlist"),
            stream.skipped,
        )
        return stream

    def _cap_links(self, stream: DecisionStream) -> None:
        """Keep at most ``max_links`` links (blocklists first); the excess is logged and counted in ``stream.skipped``
        (a hostile stream could otherwise make one refresh send thousands of GETs)."""
        cap = self.config.max_links
        total = len(stream.blocklists) + len(stream.allowlists)
        if total <= cap:
            return
        stream.blocklists = stream.blocklists[:cap]
        stream.allowlists = stream.allowlists[: cap - len(stream.blocklists)]
        stream.skipped += total - cap
        self.log.warning(
            "The decisions stream offers %d lists; only the first %d are used (max_links), %d ignored.",
            total,
            cap,
            total - cap,
        )

    def _link_request(self, url: str, if_modified_since: datetime | str | None) -> Request:
        """The GET of a link, refused (``UnsafeLinkError``) when plain http is not allowed for it.

        Plain http is allowed when the API itself is plain http, for a loopback host, or with ``allow_http_links``.
        """
        request = Endpoints.link(url, if_modified_since)
        parts = urlsplit(url)
        if (
            parts.scheme == "http"
            and self.endpoints.base_url.startswith("https:")
            and not self.config.allow_http_links
            and not is_loopback_host(parts.hostname or "")
        ):
            raise UnsafeLinkError(
                f"The list link {safe_url(url)} is plain http while CAPI is https: not downloaded (its content "
                "could be changed on the way)."
            )
        return request.with_limit(self.config.max_link_bytes, "max_link_bytes")

    def download_link(self, url: str, if_modified_since: datetime | str | None = None) -> Flow[LinkDownload]:
        """GET a blocklist/allowlist link without Authorization; 304 means not modified, other non-2xx raise."""
        request = self._link_request(url, if_modified_since)
        response = yield from self._request(request)
        if response.status_code == 304:
            return LinkDownload(
                url=url, status_code=304, not_modified=True, last_modified=response.header("last-modified")
            )
        if not response.ok:
            raise error_for(response, "link download")
        return LinkDownload(
            url=url,
            status_code=response.status_code,
            text=response.text,
            last_modified=response.header("last-modified"),
        )

    def delete_decisions(self, machine_id: str, uuids: Sequence[str]) -> Flow[None]:
        """``POST /v3/decisions/delete`` with the UUIDs of decisions deleted locally."""
        if isinstance(uuids, str) or not all(isinstance(u, str) and u for u in uuids):
            raise ValidationError("uuids must be a list of decision UUID strings.", field="uuids")
        items = list(uuids)
        if not items:
            return
        response = yield from self.auth.authed(machine_id, self.endpoints.decisions_delete(items))
        if not response.ok:
            raise error_for(response, "decisions delete")
