"""Secrets at rest: machines' passwords and tokens encrypted with a Fernet key or a passphrase; wrong keys refused."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from conftest import require_module
from cscapi import secrets
from cscapi.errors import ConfigurationError, StorageError
from cscapi.models import Machine
from cscapi.sql_storage import SQLStorage
from test_storage_support import MACHINE_A

require_module("cryptography")

PASSWORD = "pw-9f8e7d6c5b4a"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.payload.signature"


def raw_secrets(url: str) -> tuple[Any, Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT password, token FROM machines WHERE machine_id = :m"), {"m": MACHINE_A}
            ).one()
            return row[0], row[1]
    finally:
        engine.dispose()


def store_machine(storage: SQLStorage) -> None:
    storage.update_or_create_machine(Machine(machine_id=MACHINE_A, password=PASSWORD, token=TOKEN, registered=True))


def test_generate_key_is_a_fernet_key() -> None:
    from cryptography.fernet import Fernet

    key = secrets.generate_key()
    assert isinstance(key, str) and len(key) == 44
    assert key != secrets.generate_key()
    Fernet(key.encode())  # accepted as is


@pytest.mark.parametrize("key", [secrets.generate_key(), "correct horse battery staple"])
def test_round_trip_with_a_key_or_a_passphrase(database_url: str, key: str) -> None:
    with SQLStorage(database_url, encryption_key=key) as storage:
        assert storage.encrypted
        store_machine(storage)
        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None and (machine.password, machine.token) == (PASSWORD, TOKEN)
        assert key not in repr(storage) and PASSWORD not in repr(machine) and TOKEN not in repr(machine)
    password, token = raw_secrets(database_url)
    assert password.startswith("enc:v1:") and PASSWORD not in password
    assert token.startswith("enc:v1:") and TOKEN not in token
    with SQLStorage(database_url, encryption_key=key) as storage:  # a new process with the same key reads them
        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None and machine.token == TOKEN


def test_wrong_key_is_refused_at_open(database_url: str) -> None:
    with SQLStorage(database_url, encryption_key="the right passphrase") as storage:
        store_machine(storage)
    with pytest.raises(StorageError) as info:
        SQLStorage(database_url, encryption_key="a wrong passphrase")
    message = str(info.value)
    assert "cannot decrypt" in message.lower() and "wrong CSCAPI_STORAGE_KEY?" in message
    assert "the right passphrase" not in message and "a wrong passphrase" not in message


def test_encrypted_values_without_a_key_raise_instead_of_returning_ciphertext(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(secrets.KEY_ENV_VAR, raising=False)
    with SQLStorage(sqlite_url, encryption_key=secrets.generate_key()) as storage:
        store_machine(storage)
        storage.add_signals([])
    with SQLStorage(sqlite_url) as storage:
        assert storage.count_signals().queued == 0  # the queue itself needs no key
        with pytest.raises(StorageError) as info:
            storage.get_machine_by_id(MACHINE_A)
        assert "encrypted" in str(info.value) and secrets.KEY_ENV_VAR in str(info.value)


def test_key_from_the_environment(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.generate_key()
    monkeypatch.setenv(secrets.KEY_ENV_VAR, key)
    with SQLStorage(sqlite_url) as storage:
        assert storage.encrypted
        store_machine(storage)
    assert raw_secrets(sqlite_url)[0].startswith("enc:v1:")
    monkeypatch.setenv(secrets.KEY_ENV_VAR, secrets.generate_key())
    with pytest.raises(StorageError, match="wrong CSCAPI_STORAGE_KEY"):
        SQLStorage(sqlite_url)


def test_plain_secrets_stay_readable_and_are_encrypted_on_next_write(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(secrets.KEY_ENV_VAR, raising=False)
    with SQLStorage(sqlite_url) as storage:
        assert not storage.encrypted
        store_machine(storage)
    assert raw_secrets(sqlite_url) == (PASSWORD, TOKEN)  # without a key: plain, as documented
    key = secrets.generate_key()
    with SQLStorage(sqlite_url, encryption_key=key) as storage:
        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None and machine.password == PASSWORD
        storage.update_or_create_machine(machine)
    password, token = raw_secrets(sqlite_url)
    assert password.startswith("enc:v1:") and token.startswith("enc:v1:")


def test_passphrase_salt_is_per_database() -> None:
    a = secrets.SecretBox("same passphrase", secrets.new_salt())
    b = secrets.SecretBox("same passphrase", secrets.new_salt())
    sealed = a.encrypt("x")
    assert a.decrypt(sealed) == "x"
    with pytest.raises(StorageError):
        b.decrypt(sealed)
    assert "same passphrase" not in repr(a)


def test_empty_key_and_missing_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError):
        secrets.SecretBox("", b"salt")
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    with pytest.raises(ConfigurationError, match=r"cscapi\[crypto\]"):
        secrets.generate_key()
    with pytest.raises(ConfigurationError, match=r"cscapi\[crypto\]"):
        SQLStorage("sqlite://", encryption_key="anything")


def test_rotate_the_key_then_turn_encryption_off(database_url: str) -> None:
    old_key, new_key = secrets.generate_key(), "a brand new passphrase"
    with SQLStorage(database_url, encryption_key=old_key) as storage:
        store_machine(storage)
        assert storage.rotate_encryption_key(new_key) == 1
        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None and (machine.password, machine.token) == (PASSWORD, TOKEN)
    with pytest.raises(StorageError, match="wrong CSCAPI_STORAGE_KEY"):
        SQLStorage(database_url, encryption_key=old_key)
    with SQLStorage(database_url, encryption_key=new_key) as storage:
        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None and machine.token == TOKEN
        assert storage.rotate_encryption_key(None) == 1
        assert not storage.encrypted
    assert raw_secrets(database_url) == (PASSWORD, TOKEN)
    with SQLStorage(database_url) as storage:  # no key needed any more
        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None and machine.password == PASSWORD


def test_rotation_with_a_bad_new_key_changes_nothing(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(secrets.KEY_ENV_VAR, raising=False)
    key = secrets.generate_key()
    with SQLStorage(sqlite_url, encryption_key=key) as storage:
        store_machine(storage)
        before = raw_secrets(sqlite_url)
        monkeypatch.setattr(secrets.SecretBox, "encrypt", lambda self, value: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            storage.rotate_encryption_key("another key")
        monkeypatch.undo()
        assert raw_secrets(sqlite_url) == before
        machine = storage.get_machine_by_id(MACHINE_A)
        assert machine is not None and machine.password == PASSWORD
    with SQLStorage(sqlite_url, encryption_key=key) as storage:  # the old key still opens it
        assert storage.get_machine_by_id(MACHINE_A) is not None
