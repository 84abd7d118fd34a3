"""Hide secrets in URLs before they reach a log line, an error message, a repr or ``config show``.

One implementation for every URL cscapi prints: storage and decision-store URIs, CAPI and proxy URLs, list links.
The password of ``user:password@`` and the values of query parameters that carry credentials are replaced by ``***``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["SECRET_QUERY_KEYS", "mask_url"]

MASK = "***"
# Query parameters that carry credentials in the URIs we accept (libpq, PyMySQL, redis-py, presigned links).
SECRET_QUERY_KEYS = re.compile(
    r"^(password|passwd|pwd|pass|secret|token|access_token|auth|key|api_key|apikey|sslpassword|"
    r"x-amz-signature|x-amz-security-token|signature|sig)$",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``; other parts unchanged.

    Never raises: text that is not a URL comes back with anything after ``:`` in a ``user:pw@`` part masked.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(//[^/:@]*:)[^@/]*@", rf"\1{MASK}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_QUERY_KEYS.match(k) for k, _ in pairs):
            query = urlencode([(k, MASK if SECRET_QUERY_KEYS.match(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    rebuilt = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if not netloc and url.startswith(f"{parts.scheme}://"):
        # urlunsplit drops an empty authority: keep sqlite:///path as written
        rebuilt = f"{parts.scheme}://{rebuilt[len(parts.scheme) + 1 :]}"
    return rebuilt
