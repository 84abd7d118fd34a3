"""Enrollment: attach machines to a CrowdSec console account, one outcome per machine (never an exception for one)."""

from __future__ import annotations

from collections.abc import Sequence

from cscapi.errors import CAPIError, StorageError, ValidationError
from cscapi.flows._base import FlowBase
from cscapi.flows.auth import AuthFlows
from cscapi.machines import validate_machine_id
from cscapi.models import EnrollOutcome, EnrollStatus
from cscapi.protocol import Request, error_for, parse_enroll, server_reason
from cscapi.runtime import Flow

__all__ = ["EnrollFlows"]


class EnrollFlows(FlowBase):
    """``enroll_machines``."""

    def __init__(self, auth: AuthFlows) -> None:
        super().__init__(auth.storage, auth.config, auth.endpoints, auth.retry)
        self.auth = auth

    def enroll_machines(
        self,
        machine_ids: Sequence[str],
        name: str | None,
        attachment_key: str,
        tags: Sequence[str] | None,
        overwrite: bool = False,
    ) -> Flow[list[EnrollOutcome]]:
        """Enroll each machine into the console; one outcome per machine, never an exception for one machine."""
        if isinstance(machine_ids, str):
            machine_ids = [machine_ids]
        if not isinstance(attachment_key, str) or not attachment_key.isascii() or not attachment_key.isalnum():
            raise ValidationError(
                "The attachment key must be the letters and digits shown in the CrowdSec console.",
                field="attachment_key",
            )
        if name is not None and not isinstance(name, str):
            raise ValidationError("name must be a string.", field="name")
        tag_list = list(tags or [])
        if not all(isinstance(t, str) for t in tag_list):
            raise ValidationError("tags must be a list of strings.", field="tags")
        request = self.endpoints.enroll(attachment_key, name, tag_list, bool(overwrite))
        outcomes: list[EnrollOutcome] = []
        for machine_id in machine_ids:
            outcome = yield from self._enroll_one(machine_id, request, bool(overwrite))
            outcomes.append(outcome)
        return outcomes

    def _enroll_one(self, machine_id: str, request: Request, overwrite: bool) -> Flow[EnrollOutcome]:
        try:
            validate_machine_id(machine_id)
            response = yield from self.auth.authed(machine_id, request)
        except StorageError:
            raise
        except CAPIError as exc:
            self.log.warning("Enrolling machine %s failed: %s", machine_id, exc.message)
            return EnrollOutcome(str(machine_id), EnrollStatus.FAILED, reason=exc.message)
        if response.ok:
            status, url, expire_at = parse_enroll(response, overwrite)
            self.log.info("Machine %s: %s.", machine_id, status.replace("_", " "))
            return EnrollOutcome(machine_id, status, url=url, expire_at=expire_at)
        message, _ = server_reason(response)
        if response.status_code == 403:
            reason = f"CAPI refused the attachment key (403: {message})"
        else:
            reason = error_for(response, "enroll").message
        self.log.warning("Enrolling machine %s failed: %s", machine_id, reason)
        return EnrollOutcome(machine_id, EnrollStatus.FAILED, reason=reason)
