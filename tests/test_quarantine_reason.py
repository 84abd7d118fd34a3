"""A quarantined signal's reason says the server's words once: the emulator answers 400 with ``message`` "invalid
signal: X" and ``errors`` "X"; the stored reason (and the error of any refused request) must not repeat X."""

from __future__ import annotations

from pathlib import Path

from cscapi.client import CAPIClient, CAPIClientConfig
from cscapi.emulator import EmbeddedEmulator, EmulatorConfig, LoginRateLimit
from cscapi.protocol.http import Response
from cscapi.protocol.responses import error_for
from cscapi.sql_storage import SQLStorage
from test_storage_support import make_signals


def test_the_reason_of_a_refused_signal_is_said_once(tmp_path: Path) -> None:
    config = EmulatorConfig(seed=2, community_size=10, login_rate_limit=LoginRateLimit(enabled=False))
    storage = SQLStorage(f"sqlite:///{tmp_path / 'q.db'}")
    with EmbeddedEmulator(config) as emu:
        options = CAPIClientConfig(scenarios=["crowdsecurity/ssh-bf"], base_url=emu.base_url, max_retries=0)
        with CAPIClient(storage, options) as client:
            machine_id = client.register_machine().machine_id
            (bad,) = make_signals(1, machine_id)
            bad.start_at = None  # what a 0.7.0 caller could queue unvalidated; the emulator refuses it
            storage.update_or_create_signal(bad)
            report = client.send_signals()
    (_, reason), *rest = storage.list_quarantined()
    storage.close()
    assert report.quarantined == 1 and not rest
    assert reason.startswith("400 invalid signal") and "start_at" in reason
    assert reason.count("'start_at' is a required property") == 1, reason


def test_an_error_message_says_the_server_reason_once() -> None:
    body = b'{"message": "invalid signal: body[0]: bad", "errors": "body[0]: bad"}'
    error = error_for(Response(400, {"content-type": "application/json"}, body), "signals")
    assert error.message == "CAPI answered 400 to the signals request: invalid signal: body[0]: bad"
    both = b'{"message": "invalid body", "errors": "body[0]: bad"}'
    error = error_for(Response(400, {}, both), "signals")
    assert error.message.endswith("invalid body: body[0]: bad")  # different words: both kept
    many = b'{"message": "invalid signal: body[0]: bad", "errors": "body[0]: bad; body[1]: worse"}'
    error = error_for(Response(400, {}, many), "signals")
    assert error.message.endswith("request: invalid signal: body[0]: bad; body[1]: worse")
