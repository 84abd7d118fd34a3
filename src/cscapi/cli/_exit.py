"""Exit codes of the ``cscapi`` command, and the mapping from cscapi errors to them (documented in docs/cli.md)."""

from __future__ import annotations

from cscapi import errors

OK = 0
FAILURE = 1
USAGE = 2
UNREACHABLE = 3
LOGIN_BANNED = 4
AUTHENTICATION = 5
STORAGE = 6
ALREADY_RUNNING = 7
TRY_LATER = 8
INTERRUPTED = 130

#: Checked in order: the first class the error is an instance of gives the code.
_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.ConfigurationError, USAGE),
    (errors.ValidationError, USAGE),
    (errors.TransportError, UNREACHABLE),
    (errors.ServerError, UNREACHABLE),
    (errors.LoginBannedError, LOGIN_BANNED),
    (errors.AuthenticationError, AUTHENTICATION),
    (errors.StorageError, STORAGE),
    (errors.AlreadyRunningError, ALREADY_RUNNING),
    (errors.RateLimitedError, TRY_LATER),
    (errors.RefreshTooSoonError, TRY_LATER),
    (errors.RefreshInProgressError, TRY_LATER),
)

#: One line per code, for docs and ``--help``.
MEANINGS: dict[int, str] = {
    OK: "success",
    FAILURE: "the command ran and failed (a request refused by CAPI, some signals not sent, an unexpected error)",
    USAGE: "bad usage or configuration: unknown option, invalid value, invalid IP, missing or invalid config",
    UNREACHABLE: "CAPI unreachable or failing (network error, timeout, 5xx after retries); nothing was lost",
    LOGIN_BANNED: "CAPI banned logins for this machine (403, about one hour); wait, do not retry in a loop",
    AUTHENTICATION: "CAPI refused the machine's credentials",
    STORAGE: "the signal storage or the decision store failed (database unreachable or unreadable)",
    ALREADY_RUNNING: "another `cscapi run` already holds the lock for this storage",
    TRY_LATER: "rate-limited by CAPI, or a decisions refresh asked for too soon or already running elsewhere",
    INTERRUPTED: "interrupted (Ctrl-C)",
}


#: Short labels for ``cscapi --help``.
LABELS: dict[int, str] = {
    OK: "ok",
    FAILURE: "failure",
    USAGE: "usage or config error",
    UNREACHABLE: "CAPI unreachable",
    LOGIN_BANNED: "login banned",
    AUTHENTICATION: "credentials refused",
    STORAGE: "storage error",
    ALREADY_RUNNING: "agent already running",
    TRY_LATER: "try later",
    INTERRUPTED: "interrupted",
}


def code_for(exc: BaseException) -> int:
    """The exit code for an error raised by cscapi (1 for anything without a specific code)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return FAILURE
