"""The one error hierarchy of cscapi: every failure a user can catch is a :class:`CAPIError`.

Each error says what failed (``message``) and what to do about it (``hint``). Secrets never appear in either:
build messages from machine ids, paths and status codes, never from passwords, tokens or request bodies.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

__all__ = [
    "AlreadyRunningError",
    "AuthenticationError",
    "CAPIError",
    "ConfigurationError",
    "DeadlineExceededError",
    "DecisionStoreError",
    "EnrollmentError",
    "InvalidArgumentError",
    "InvalidIPError",
    "LoginBannedError",
    "MachineCoolingDownError",
    "NotFoundError",
    "RateLimitedError",
    "RefreshInProgressError",
    "RefreshTooSoonError",
    "RequestRejectedError",
    "ResponseTooLargeError",
    "ServerError",
    "StorageError",
    "TLSVerificationError",
    "TransportError",
    "UnsafeLinkError",
    "ValidationError",
]


class CAPIError(Exception):
    """Base of every error cscapi raises on purpose.

    ``message`` says what failed, ``hint`` what to do next; ``status_code`` is the HTTP status when a server answered.
    """

    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None, status_code: int | None = None) -> None:
        self.message = message
        self.hint = self.default_hint if hint is None else hint
        self.status_code = status_code
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip() if self.hint else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle every subclass alike, keyword-only arguments or not: rebuilt from its attributes, not its
        ``__init__`` (an error crossing a process pool or a multiprocessing queue comes back whole)."""
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[CAPIError], args: tuple[Any, ...], state: dict[str, Any]) -> CAPIError:
    """The unpickled error: ``cls`` made without calling its ``__init__``, then given back its attributes."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigurationError(CAPIError, ValueError):
    """A setting is missing or invalid (config file, URI, option value)."""

    default_hint = "Fix the setting named above; `cscapi config show` prints the effective configuration."


class ValidationError(CAPIError, ValueError):
    """Input refused before anything was stored or sent: a signal, an IP, a scenario name, a machine id."""

    default_hint = "Correct the value named above and try again; nothing was stored or sent."

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        hint: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.field = field
        super().__init__(message, hint=hint, status_code=status_code)


class InvalidIPError(ValidationError):
    """An IP address or range that cannot be parsed."""

    default_hint = "Pass an IPv4 or IPv6 address such as 203.0.113.7 or 2001:db8::1."


class InvalidArgumentError(ValidationError, TypeError):
    """An argument of the wrong kind (``add_signals(None)``): a ``ValidationError`` that is also a ``TypeError``."""

    default_hint = "Pass the kind of value the message names; nothing was stored or sent."


class StorageError(CAPIError):
    """The signal storage (SQL database) failed or holds something it cannot read."""

    default_hint = "Check that the database is reachable and that the connection string is right."


class DecisionStoreError(StorageError):
    """The decision store (memory, SQLite, Redis) failed; the previous decisions stay in force."""

    default_hint = "Check that the decision store is reachable; the previous decisions are still enforced."


class TransportError(CAPIError):
    """The network failed: connection refused or reset, DNS, TLS, or a timeout, after every retry."""

    default_hint = "Check the CAPI URL and the network; cscapi retried with backoff and gave up."


class DeadlineExceededError(TransportError):
    """No complete answer within the request's total ``deadline`` (a server dripping bytes), after every retry."""

    default_hint = (
        "The server answered too slowly; cscapi retried with backoff and gave up. Raise CAPIClientConfig.deadline "
        "if your link is that slow."
    )


class TLSVerificationError(TransportError):
    """The server's TLS certificate could not be verified. Not retried: the next try would fail the same way."""

    default_hint = (
        "Check the CAPI URL; for a private CA pass its bundle path as verify= (CLI: ca_bundle). Never turn "
        "verification off in production."
    )


class ResponseTooLargeError(TransportError):
    """An answer exceeded a size limit once decompressed (a gzip bomb, a runaway list). Not retried; nothing was
    applied. ``limit`` names the ``CAPIClientConfig`` field, ``max_bytes`` its value."""

    def __init__(self, message: str, *, limit: str, max_bytes: int, hint: str | None = None) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        if hint is None:
            hint = f"If the answer is legitimate, raise CAPIClientConfig.{limit} (now {max_bytes} bytes)."
        super().__init__(message, hint=hint)


class UnsafeLinkError(TransportError):
    """A blocklist/allowlist link refused before or while downloading it: plain http from an https CAPI, a redirect
    to plain http, or too many redirects. Not retried."""

    default_hint = (
        "The list was not downloaded and its previous content stays in force. For a plain-http list server you "
        "trust, set CAPIClientConfig.allow_http_links=True."
    )


class ServerError(CAPIError):
    """CAPI answered 5xx after every retry."""

    default_hint = "CAPI is failing; nothing was lost, try again later."


class RateLimitedError(CAPIError):
    """CAPI answered 429 after every retry; ``retry_after`` is the server's hint in seconds, if it gave one."""

    default_hint = "Slow down: send less often or in larger batches; nothing was lost."

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        hint: str | None = None,
        status_code: int | None = 429,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, hint=hint, status_code=status_code)


class RequestRejectedError(CAPIError):
    """CAPI refused a request as malformed (400, 422): the body was wrong and retrying it will not help.

    ``server_message`` and ``server_errors`` carry the server's ``ErrorResponse`` fields.
    """

    default_hint = "The request was refused as invalid; see the server's reason above."

    def __init__(
        self,
        message: str,
        *,
        server_message: str | None = None,
        server_errors: str | None = None,
        hint: str | None = None,
        status_code: int | None = 400,
    ) -> None:
        self.server_message = server_message
        self.server_errors = server_errors
        super().__init__(message, hint=hint, status_code=status_code)


class NotFoundError(CAPIError):
    """CAPI answered 404 for something that should exist (a machine for password reset, an endpoint)."""

    default_hint = "Check the CAPI URL (it must point at the API root) and the machine id."


class AuthenticationError(CAPIError):
    """CAPI refused the credentials (wrong password, unknown machine, or a token refused after a fresh login)."""

    default_hint = "Check the machine's credentials; a machine id and password pair must never change once registered."


class LoginBannedError(AuthenticationError):
    """CAPI banned logins for this machine (403 on login: too many logins). No login is tried until ``until``."""

    def __init__(self, message: str, *, until: datetime, hint: str | None = None) -> None:
        if until.tzinfo is None:
            until = until.replace(tzinfo=timezone.utc)
        self.until = until
        if hint is None:
            hint = (
                f"No login will be attempted before {until.strftime('%Y-%m-%d %H:%M:%S UTC')}; "
                "queued signals are kept. Avoid restart loops and sharing credentials between hosts."
            )
        super().__init__(message, hint=hint, status_code=403)


class MachineCoolingDownError(CAPIError):
    """A machine's queued signals were not tried: it waits out the cool-down of an earlier failure until ``until``.

    ``reason`` is the earlier failure, as stored on the machine. Nothing was lost: the signals stay queued.
    """

    def __init__(self, message: str, *, until: datetime, reason: str, hint: str | None = None) -> None:
        if until.tzinfo is None:
            until = until.replace(tzinfo=timezone.utc)
        self.until = until
        self.reason = reason
        if hint is None:
            hint = (
                f"Its signals stay queued and are retried after {until.strftime('%Y-%m-%d %H:%M:%S UTC')}; "
                "`cscapi machines status` shows why it failed."
            )
        super().__init__(message, hint=hint)


class EnrollmentError(CAPIError):
    """Enrollment into the CrowdSec console was refused (an unknown or expired attachment key)."""

    default_hint = "Check the attachment key shown in the CrowdSec console (Security Engines > Enroll)."


class RefreshTooSoonError(CAPIError):
    """A decisions refresh was asked for sooner than CAPI's documented minimum interval.

    ``next_allowed_at`` says when a pull is allowed again; pass ``force=True`` to pull anyway.
    """

    def __init__(self, message: str, *, next_allowed_at: datetime, hint: str | None = None) -> None:
        self.next_allowed_at = next_allowed_at
        if hint is None:
            hint = (
                f"The next pull is allowed at {next_allowed_at.strftime('%Y-%m-%d %H:%M:%S UTC')}; "
                "pass force=True to pull anyway (CAPI may rate-limit you)."
            )
        super().__init__(message, hint=hint)


class AlreadyRunningError(CAPIError):
    """Another agent (``cscapi run``) already holds the single-instance lock for this signal storage."""

    default_hint = "Stop the other agent first, or point this one at another storage; only one may run per storage."


class RefreshInProgressError(CAPIError):
    """Another worker holds the decision store's refresh lock: only one pulls at a time, the others keep serving."""

    default_hint = "Nothing to do: the other worker's refresh reaches this one within a second."
