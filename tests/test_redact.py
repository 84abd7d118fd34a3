"""Secrets in URLs are masked wherever cscapi prints a URL."""

from __future__ import annotations

import pytest

from cscapi.redact import mask_url


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql+psycopg://user:S3cretPW@db.example:5432/cscapi", "S3cretPW"),
        ("mysql+pymysql://root@127.0.0.1/test?password=QPASS42", "QPASS42"),
        ("redis://:PWSECRET55@127.0.0.1:6379/0", "PWSECRET55"),
        ("redis://127.0.0.1:6379/0?password=PWSECRET55&db=1", "PWSECRET55"),
        ("https://lists.example/b.txt?X-Amz-Signature=abcdef0123&X-Amz-Expires=300", "abcdef0123"),
        ("http://proxyuser:proxypw@127.0.0.1:3128", "proxypw"),
    ],
)
def test_secret_is_masked(url: str, secret: str) -> None:
    masked = mask_url(url)
    assert secret not in masked
    assert "***" in masked


def test_everything_else_is_kept() -> None:
    assert mask_url("sqlite:///var/lib/cscapi/cscapi.db") == "sqlite:///var/lib/cscapi/cscapi.db"
    assert mask_url("postgresql://u:p@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert mask_url("redis://127.0.0.1:6379/0?password=x&db=1") == "redis://127.0.0.1:6379/0?password=***&db=1"
    assert mask_url("memory://") == "memory://"


def test_not_a_url_never_raises() -> None:
    assert mask_url("http://[::1") is not None
    assert "pw" not in mask_url("http://[::1:u:pw@x")


def test_empty_authority_is_kept_when_masking_the_query() -> None:
    assert mask_url("sqlite:///x.db?password=abc") == "sqlite:///x.db?password=***"
