"""`cscapi emulator`: a real server process that a `cscapi` client can use, stopped cleanly by SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import test_cli_support as support
from test_cli_support import CliEnv

cli_env = support.cli_env
CSCAPI = str(Path(sys.executable).with_name("cscapi"))


def test_bad_emulator_option_is_a_usage_error(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["emulator", "--port", "not-a-port"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_emulator_serves_the_cli_and_stops_on_sigterm(cli_env: CliEnv, free_tcp_port: int) -> None:
    proc = subprocess.Popen(
        [
            CSCAPI,
            "emulator",
            "--port",
            str(free_tcp_port),
            "--seed",
            "3",
            "--community-size",
            "25",
            "--community-scenario",  # the list is tailored to the scenarios the client declares: generate it so
            "crowdsecurity/ssh-bf",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{free_tcp_port}/"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "v3/decisions/stream", timeout=1)
            except urllib.error.HTTPError:
                break  # it answers (401 without a token): it is up
            except OSError:
                time.sleep(0.1)
        env = {"CSCAPI_TARGET": "emulator", "CSCAPI_EMULATOR_URL": url, "CSCAPI_SCENARIOS": "crowdsecurity/ssh-bf"}
        assert cli_env.invoke(["machines", "register"], env=env).exit_code == 0
        refreshed = cli_env.invoke(["decisions", "refresh", "--json"], env=env)
        assert refreshed.exit_code == 0, refreshed.output
        assert json.loads(refreshed.stdout)["new"] == 25
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"listening on {url}" in out


def test_emulator_help_has_the_cli_style_and_an_example(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["emulator", "--help"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("Usage: cscapi emulator [OPTIONS]\n")
    example = out.split("Example:", 1)[1].split("Options:", 1)[0]
    assert "cscapi emulator --port" in example
    assert "\nOptions:\n" in out and "-h, --help" in out and "Show this message and exit." in out
    options = re.findall(r"^  (-[^ ].*?)  +(\S.*)$", out.split("Options:", 1)[1], flags=re.M)
    assert len(options) > 15 and all(h[0].isupper() for _, h in options), options  # capitalised, like click
    # same style from `python -m cscapi.emulator`, and it stays instant: nothing heavier than argparse is imported
    code = (
        "import sys, cscapi.emulator.server as s; text = s.build_parser().format_help(); "
        "print(text.splitlines()[0]); print(sorted(m for m in ('starlette', 'uvicorn', 'jsonschema', 'httpx', "
        "'cscapi.emulator.state', 'cscapi.emulator.config') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["Usage: python -m cscapi.emulator [OPTIONS]", "[]"], proc.stderr
