"""docs/lapi.md runs as written, against the real CrowdSec engine of tests/lapi_support.py: the stream, live and TLS
snippets, the config file, the CLI lines and the watcher registration."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

import test_cli_support as support
from test_cli_support import CliEnv

cli_env = support.cli_env
DOC = Path(__file__).resolve().parent.parent / "docs" / "lapi.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def python_block(marker: str) -> str:
    return next(b for b in blocks("python") if marker in b)


@pytest.fixture
def lapi_vars(lapi: Any, lapi_bouncer_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CSCAPI_LAPI_URL", lapi.base_url)
    monkeypatch.setenv("CSCAPI_LAPI_API_KEY", lapi_bouncer_key)
    monkeypatch.chdir(tmp_path)  # the snippets' sqlite:///decisions.db lands here
    lapi.add_decision(ip="192.0.2.10", duration="1h")
    return lapi


def test_the_stream_mode_snippet(lapi_vars: Any, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(python_block('store="sqlite:///decisions.db") as engine:\n        report'), str(DOC), "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["1 decisions", "ban cscli"]


def test_the_live_mode_snippet(lapi_vars: Any, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(python_block('mode="live"'), str(DOC), "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["ban", "ban"]


def test_the_tls_snippet(crowdsec_lapi_tls: Any, capsys: pytest.CaptureFixture[str]) -> None:
    lapi, certs = crowdsec_lapi_tls, crowdsec_lapi_tls.certs
    lapi.delete_decisions(everything=True)
    lapi.add_decision(ip="192.0.2.10", duration="1h")
    code = python_block("cert=")
    for old, new in (
        ("https://crowdsec.internal:8080/", lapi.base_url),
        ("/etc/myapp/bouncer.pem", str(certs.bouncer)),
        ("/etc/myapp/bouncer-key.pem", str(certs.bouncer_key)),
        ("/etc/myapp/ca.pem", str(certs.ca)),
    ):
        assert old in code
        code = code.replace(old, new)
    exec(compile(code, str(DOC), "exec"), {})
    assert capsys.readouterr().out.strip() == "['ban']"


def test_the_config_file_and_the_cli_lines(cli_env: CliEnv, lapi_vars: Any) -> None:
    toml = next(b for b in blocks("toml") if "[source]" in b)
    cli_env.config_path.parent.mkdir(parents=True)
    cli_env.config_path.write_text(toml.replace("http://127.0.0.1:8080/", lapi_vars.base_url))
    shown = json.loads(cli_env.invoke(["config", "show", "--json"]).stdout)["settings"]
    assert shown["source"]["value"] == "lapi" and shown["lapi_refresh_interval"]["value"] == 10
    bash = next(b for b in blocks("bash") if "lapi status" in b)
    lines = [line.split("#", 1)[0].strip() for line in bash.splitlines()]
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("cscapi ")]
    assert len(commands) == 5
    for args in commands:
        if args[-1] == "run":
            args = [*args, "--once"]  # the service runs forever; once is the same jobs
        result = cli_env.invoke(args)
        assert result.exit_code == 0, (args, result.output)
    check = json.loads(cli_env.invoke(["--source", "lapi", "decisions", "check", "192.0.2.10", "--json"]).stdout)
    assert (check[0]["remediation"], check[0]["origin"]) == ("ban", "cscli")


def test_the_watcher_registration(lapi: Any, tmp_path: Path) -> None:
    bash = next(b for b in blocks("bash") if "cscli machines add" in b)
    line = next(x for x in bash.splitlines() if "cscli machines add" in x).split("#", 1)[0]
    args = shlex.split(line)[2:]  # after `sudo cscli`
    target = tmp_path / "lapi-credentials.yaml"
    args = [str(target) if a == "/etc/myapp/lapi-credentials.yaml" else a for a in args]
    args[args.index("my-python-app")] = "docs-watcher"
    lapi.cscli(*args)
    text = target.read_text()
    assert "login: docs-watcher" in text and "password:" in text and "url:" in text
