"""Hide secrets in URLs before they reach a log line, an error message, a repr or ``config show``.

One implementation for every URL cscapi prints: storage and decision-store URIs, CAPI and proxy URLs, list links.
The password of ``user:password@`` and the values of query parameters that carry credentials are replaced by ``***``.

The password is found the way the libraries that read these URLs find it, and whatever *any* of them would take as
the password is masked (the union): SQLAlchemy's ``make_url`` (the password runs from the first ``:`` to the first
``@``, so it may hold an unencoded ``/``, ``?`` or ``#``) and ``urllib.parse.urlsplit`` (redis-py, httpx: the
authority ends at the first ``/``, ``?`` or ``#``, the password runs from its first ``:`` to its last ``@``). A
query parameter's value runs to the next ``&`` (SQLAlchemy reads a ``#`` as part of the query). The text is
spliced, never re-encoded, so the rest of the URL reads exactly as written.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

__all__ = ["SECRET_QUERY_KEYS", "mask_url", "mask_userinfo", "scrub", "url_secrets"]

MASK = "***"
# Query parameters that carry credentials in the URIs we accept (libpq, PyMySQL, redis-py, presigned links).
SECRET_QUERY_KEYS = re.compile(
    r"^(password|passwd|pwd|pass|secret|token|access_token|auth|key|api_key|apikey|sslpassword|"
    r"x-amz-signature|x-amz-security-token|signature|sig)$",
    re.IGNORECASE,
)
# SQLAlchemy's URL pattern: ``name://`` then ``username`` ([^:/]*), ``:password`` ([^@]*) and ``@``.
_SA_USERINFO = re.compile(r"[^:/]*:([^@]*)@", re.DOTALL)
_AUTHORITY_END = re.compile(r"[/?#]")


def _password_span(url: str) -> tuple[int, int, int] | None:
    """``(start, end, authority_start)`` of the userinfo password as any of the parsers reads it, or None."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    base = scheme_end + 3
    rest = url[base:]
    starts: list[int] = []
    ends: list[int] = []
    match = _SA_USERINFO.match(rest)
    if match is not None:
        starts.append(match.start(1))
        ends.append(match.end(1))
    end_match = _AUTHORITY_END.search(rest)
    netloc = rest[: end_match.start()] if end_match else rest
    at = netloc.rfind("@")
    if at >= 0:
        colon = netloc.find(":", 0, at)
        if colon >= 0:
            starts.append(colon + 1)
            ends.append(at)
    if not starts:
        return None
    return base + min(starts), base + max(ends), base


def _mask_query(query: str) -> str:
    """``query`` (``a=1&password=x``) with the values of secret keys replaced, other pairs kept byte for byte."""
    pairs = query.split("&")
    changed = False
    for i, pair in enumerate(pairs):
        key, eq, value = pair.partition("=")
        if eq and value and SECRET_QUERY_KEYS.match(unquote_plus(key)):
            pairs[i] = f"{key}={MASK}"
            changed = True
    return "&".join(pairs) if changed else query


def mask_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``; other parts unchanged.

    Never raises: any text comes back with what a URL parser would read as a password masked.
    """
    if not isinstance(url, str):
        url = str(url)
    span = _password_span(url)
    if span is not None:
        start, end, _base = span
        url = f"{url[:start]}{MASK}{url[end:]}"
        authority_start = start + len(MASK)
    else:
        scheme_end = url.find("://")
        authority_start = scheme_end + 3 if scheme_end >= 0 else 0
    question = url.find("?", authority_start)
    if question < 0:
        return url
    return url[: question + 1] + _mask_query(url[question + 1 :])


def mask_userinfo(url: str) -> str:
    """:func:`mask_url`, with the whole user info (the user name too) shown as ``***@``: for URLs whose user name is
    itself a credential (a proxy, a CAPI URL in a request log). Never raises."""
    masked = mask_url(url)
    scheme_end = masked.find("://")
    if scheme_end < 0:
        return masked
    start = scheme_end + 3
    end_match = _AUTHORITY_END.search(masked, start)
    end = end_match.start() if end_match else len(masked)
    at = masked.rfind("@", start, end)
    if at < 0:
        return masked
    return f"{masked[:start]}{MASK}{masked[at:]}"


def url_secrets(url: str) -> list[str]:
    """The secret texts of ``url`` (password, secret query values), raw and percent-decoded, longest first.

    For scrubbing a message a library built from the URL (it may quote a piece of the password, e.g. as a port).
    """
    found: set[str] = set()
    span = _password_span(url)
    if span is not None:
        found.add(url[span[0] : span[1]])
    question = url.find("?", span[1] if span else 0)
    if question >= 0:
        for pair in url[question + 1 :].split("&"):
            key, eq, value = pair.partition("=")
            if eq and value and SECRET_QUERY_KEYS.match(unquote_plus(key)):
                found.add(value)
    for secret in list(found):
        found.add(unquote(secret))
        # a parser that stops at a delimiter quotes the pieces (urlsplit reads 'pa' of 'pa/ss' as a port)
        found.update(piece for piece in re.split(r"[/?#@:\[\]]", secret) if piece)
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (e.g. a library's error about ``url``) with every secret of ``url`` in it replaced by ``***``.

    Pieces of 3 characters or more are replaced wherever they appear, shorter ones where quoted (``'pa'``).
    """
    for secret in url_secrets(url):
        if len(secret) >= 3:
            text = text.replace(secret, MASK)
        else:
            for quote in ("'", '"'):
                text = text.replace(f"{quote}{secret}{quote}", f"{quote}{MASK}{quote}")
    return text
