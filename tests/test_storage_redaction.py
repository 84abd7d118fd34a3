"""A storage password never shows in errors or reprs, whether in the userinfo or in the query string."""

from __future__ import annotations

import pytest

from cscapi.errors import StorageError
from cscapi.sql_storage import SQLStorage


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://127.0.0.1:1/test?password=QuerySecret91",
        "postgresql+psycopg://user:UserinfoSecret92@127.0.0.1:1/test",
        "mysql+pymysql://root@127.0.0.1:1/test?password=QuerySecret93",
    ],
)
def test_unreachable_database_error_hides_the_password(url: str) -> None:
    secret = next(part for part in url.replace("@", "=").split("=") if "Secret" in part).split("@")[0]
    with pytest.raises(StorageError) as caught:
        SQLStorage(url)
    assert secret not in str(caught.value)
    assert secret not in repr(caught.value)
    assert "***" in str(caught.value)
