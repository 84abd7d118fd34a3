"""Secrets in URLs are masked wherever cscapi prints a URL."""

from __future__ import annotations

import logging
import re
import string
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from cscapi.redact import mask_url, scrub


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


# ---- the password as SQLAlchemy, urllib / redis-py and httpx read it (issue 9, item 5) ---------------------------

SA_SCHEMES = ["postgresql", "postgresql+psycopg", "mysql+pymysql", "mariadb", "sqlite"]
OTHER_SCHEMES = ["redis", "rediss", "http", "https"]
_names = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8)
_hosts = st.from_regex(r"[a-z][a-z0-9]{0,6}(\.[a-z]{2,4})?", fullmatch=True)
_passwords = st.text(
    alphabet=st.one_of(
        st.sampled_from(string.printable),
        st.sampled_from("/?#@:%[]&="),
        st.characters(codec="utf-8"),  # any character but the surrogates
    ),
    min_size=1,
    max_size=24,
)
_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _occurrences(text: str, part: str) -> int:
    return len(re.findall(f"(?={re.escape(part)})", text))


def _parser_passwords(url: str, scheme: str) -> list[str]:
    """What each library that reads such a URL takes as its password (raw text, as in the URL where it can)."""
    found: list[str] = []
    try:
        split = urlsplit(url).password  # redis-py, httpx (raw: they unquote it afterwards)
    except ValueError:
        split = None
    if split:
        found.append(split)
    if scheme in SA_SCHEMES:
        try:
            sa = make_url(url).password  # unquoted by SQLAlchemy
        except Exception:
            sa = None
        if isinstance(sa, str) and sa:
            found.append(sa)
    return found


def _meaningful(secret: str, url: str) -> bool:
    """A leak is only detectable when the secret is long enough, holds no '*' (the mask) and is in the URL once."""
    return len(secret) >= 4 and "*" not in secret and _occurrences(url, secret) == 1


@_FUZZ
@given(
    scheme=st.sampled_from(SA_SCHEMES + OTHER_SCHEMES),
    user=_names,
    password=_passwords,
    host=_hosts,
    port=st.integers(1, 65535),
    db=_names,
)
def test_property_whatever_a_parser_takes_as_the_password_is_masked(
    scheme: str, user: str, password: str, host: str, port: int, db: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}:{port}/{db}"
    masked = mask_url(url)
    # The rest stays readable: scheme and user before the mask, host, port and database after it, untouched.
    assert masked.startswith(f"{scheme}://{user}:***")
    assert masked.endswith(f"@{host}:{port}/{db}")
    for secret in _parser_passwords(url, scheme):
        if _meaningful(secret, url):
            assert secret not in masked, (url, secret, masked)
    if _meaningful(password, url):
        assert password not in masked
    # When a parser reads the URL as written (password, host and port as generated), the result is exact.
    try:
        parts = urlsplit(url)
        split_ok = parts.password == password and parts.hostname == host and parts.port == port
    except ValueError:
        split_ok = False
    if split_ok:
        assert masked == f"{scheme}://{user}:***@{host}:{port}/{db}"


@_FUZZ
@given(scheme=st.sampled_from(SA_SCHEMES + OTHER_SCHEMES), user=_names, password=_passwords, host=_hosts, db=_names)
def test_property_a_percent_encoded_password_is_masked_and_the_url_kept_exactly(
    scheme: str, user: str, password: str, host: str, db: str
) -> None:
    encoded = quote(password, safe="")
    url = f"{scheme}://{user}:{encoded}@{host}:5432/{db}"
    if scheme in SA_SCHEMES:
        assert make_url(url).password == password  # the URL is well-formed: SQLAlchemy reads the password back
    masked = mask_url(url)
    assert masked == f"{scheme}://{user}:***@{host}:5432/{db}"
    for secret in (encoded, password):
        if _meaningful(secret, url):
            assert secret not in masked


@_FUZZ
@given(scheme=st.sampled_from(SA_SCHEMES + OTHER_SCHEMES), password=_passwords, host=_hosts, db=_names)
def test_property_a_password_in_the_query_string_is_masked(scheme: str, password: str, host: str, db: str) -> None:
    encoded = quote(password, safe="")
    url = f"{scheme}://{host}:6379/{db}?sslmode=require&password={encoded}&db=1"
    if scheme in SA_SCHEMES:
        assert make_url(url).query["password"] == password
    assert mask_url(url) == f"{scheme}://{host}:6379/{db}?sslmode=require&password=***&db=1"


@_FUZZ
@given(st.text(max_size=80))
def test_property_any_text_is_returned_never_raises(text: str) -> None:
    assert isinstance(mask_url(text), str)
    assert isinstance(scrub(text, text), str)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pa/ss@h:5432/db", "postgresql://u:***@h:5432/db"),  # SQLAlchemy reads 'pa/ss'
        ("redis://u:pa?ss@h:6379/0", "redis://u:***@h:6379/0"),
        ("mysql+pymysql://u:pa#ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("http://u:p/w?x#y@proxy:3128", "http://u:***@proxy:3128"),
        ("redis://:a@b@h:6379/0", "redis://:***@h:6379/0"),  # urlsplit reads 'a@b' (the last '@')
        ("postgresql://u@h/db?password=ab#cd&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("https://l.example/b.txt?a=1&Signature=zz%2Fzz&b=2", "https://l.example/b.txt?a=1&Signature=***&b=2"),
    ],
)
def test_unencoded_delimiters_in_a_password(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_redis_bad_uri_error_shows_no_piece_of_the_password() -> None:
    from cscapi.errors import ConfigurationError
    from cscapi.remediation.stores.redis import RedisStore

    with pytest.raises(ConfigurationError) as caught:
        RedisStore("redis://user:pass/Word9?x@127.0.0.1:6379/0")  # redis-py reads 'pass' as the port
    text = str(caught.value) + repr(caught.value)
    assert "pass" not in text and "Word9" not in text
    assert "redis://user:***@127.0.0.1:6379/0" in text


def test_reprs_mask_a_proxy_password_with_a_slash() -> None:
    from cscapi.client import CAPIClientConfig
    from cscapi.protocol.http import Request
    from cscapi.transport import TransportSettings

    proxy = "http://bob:Prox/yPW?66@proxy.internal:3128"
    settings_repr = repr(TransportSettings(user_agent="ua", proxy=proxy))
    config_repr = repr(CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], proxy=proxy))
    request_repr = repr(Request("GET", "http://bob:Capi/PW77@127.0.0.1:9/v3/x", operation="x"))
    for text in (settings_repr, config_repr):
        assert "Prox" not in text and "yPW" not in text, text
        assert "proxy.internal:3128" in text
    assert "Capi" not in request_repr and "PW77" not in request_repr and "127.0.0.1:9/v3/x" in request_repr


def test_config_show_masks_a_password_with_a_slash_question_mark_or_hash(tmp_path: Path) -> None:
    from cscapi.cli import cli

    env = {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "CSCAPI_STORAGE": "postgresql+psycopg://u:Sto/rePW1@127.0.0.1:1/test",
        "CSCAPI_DECISION_STORE": "redis://:Red?isPW2@127.0.0.1:1/0",
        "CSCAPI_PROXY": "http://bob:Pro#xyPW3@proxy.internal:3128",
    }
    for args in (["config", "show"], ["--json", "config", "show"]):
        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        for piece in ("Sto", "rePW1", "Red", "isPW2", "Pro#", "xyPW3"):
            assert piece not in result.output, (piece, result.output)
        assert "127.0.0.1:1/test" in result.output and "proxy.internal:3128" in result.output


def test_sqlalchemy_debug_logging_shows_no_token_of_an_unencrypted_storage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cscapi.models import Machine
    from cscapi.sql_storage import SQLStorage

    monkeypatch.delenv("CSCAPI_STORAGE_KEY", raising=False)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    storage = SQLStorage(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        assert not storage.encrypted
        machine_id = "a" * 48
        storage.update_or_create_machine(Machine(machine_id=machine_id, password="PlainPW4242", token="TokenT0k3n99"))
        loaded = storage.get_machine_by_id(machine_id)
        assert loaded is not None and loaded.token == "TokenT0k3n99"  # stored in clear: only the logs must hide it
    finally:
        storage.close()
    engine_records = [r for r in caplog.records if r.name.startswith("sqlalchemy.engine")]
    assert any("SELECT" in r.getMessage() for r in engine_records)  # statements still log at INFO
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "PlainPW4242" not in text and "TokenT0k3n99" not in text
    # Only our engines are quieted: the logging configuration and another engine's row logging are unchanged.
    assert logging.getLogger("sqlalchemy.engine").getEffectiveLevel() == logging.DEBUG
    caplog.clear()
    other = sa.create_engine("sqlite://")
    with other.connect() as conn:
        conn.execute(sa.text("SELECT 'OtherRow31'")).all()
    other.dispose()
    assert any("OtherRow31" in r.getMessage() and r.getMessage().startswith("Row") for r in caplog.records)
