"""`cscapi init` and `cscapi config show`: the config file, precedence (flags > env > file > defaults), masking."""

from __future__ import annotations

import json
import stat

import pytest
import tomllib

import test_cli_support as support
from cscapi.settings import MIN_REFRESH_INTERVAL, load_settings, render_config_file
from test_cli_support import CliEnv, assert_user_error

cli_env = support.cli_env


def show(env: CliEnv, *args: str, extra_env: dict[str, str] | None = None) -> dict:
    result = env.invoke([*args, "config", "show", "--json"], env=extra_env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_init_writes_a_commented_0600_file_that_parses(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["init", "--target", "dev", "-s", "acme/login-bf", "--user-agent-prefix", "acme"])
    assert result.exit_code == 0, result.output
    path = cli_env.config_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.count("\n# ") > 10  # every setting has its help
    data = tomllib.loads(text)
    assert data["capi"]["target"] == "dev"
    assert data["capi"]["scenarios"] == ["acme/login-bf"]
    assert data["capi"]["user_agent_prefix"] == "acme"
    shown = show(cli_env)
    assert shown["settings"]["target"] == {"value": "dev", "source": f"file {path}"}
    assert shown["capi_url"] == "https://api.dev.crowdsec.net/"


def test_init_refuses_to_overwrite_without_force(cli_env: CliEnv) -> None:
    assert cli_env.invoke(["init"]).exit_code == 0
    before = cli_env.config_path.read_text()
    result = cli_env.invoke(["init", "--target", "prod"])
    assert_user_error(result, 2, "already exists", "--force")
    assert cli_env.config_path.read_text() == before
    result = cli_env.invoke(["init", "--target", "prod", "--force"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(cli_env.config_path.read_text())["capi"]["target"] == "prod"


def test_init_json_and_custom_path(cli_env: CliEnv) -> None:
    path = cli_env.home / "elsewhere" / "c.toml"
    result = cli_env.invoke(["--config", str(path), "init", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["path"] == str(path)
    assert report["values"]["scenarios"] == ["crowdsecurity/ssh-bf", "crowdsecurity/http-probing"]
    assert path.exists() and not cli_env.config_path.exists()


def test_init_stdout_writes_nothing(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["init", "--stdout", "--target", "http://127.0.0.1:9999/"])
    assert result.exit_code == 0
    assert tomllib.loads(result.stdout)["capi"]["target"] == "http://127.0.0.1:9999/"
    assert not cli_env.config_path.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["init", "-s", "not a scenario"], "invalid scenario name"),
        (["init", "--target", "ftp://x"], "invalid target"),
        (["init", "--user-agent-prefix", "has space"], "user_agent_prefix"),
        (["init", "--user-agent-prefix", "my+app"], "user_agent_prefix"),  # the rule CAPIClientConfig applies
        (["init", "--user-agent-prefix", "caf\u00e9"], "user_agent_prefix"),
        (["init", "--machine-id-prefix", "UPPER"], "prefix"),
    ],
)
def test_init_rejects_bad_values(cli_env: CliEnv, args: list[str], fragment: str) -> None:
    assert_user_error(cli_env.invoke(args), 2, fragment)
    assert not cli_env.config_path.exists()


def test_precedence_flag_over_env_over_file_over_default(cli_env: CliEnv) -> None:
    cli_env.config_path.parent.mkdir(parents=True)
    cli_env.config_path.write_text(
        '[capi]\ntarget = "dev"\ntimeout = 5\n[agent]\npush_interval = 20\nbatch_size = 100\n'
    )
    env = {"CSCAPI_TARGET": "prod", "CSCAPI_PUSH_INTERVAL": "30"}
    shown = show(cli_env, "--target", "http://127.0.0.1:8999", extra_env=env)["settings"]
    assert shown["target"] == {"value": "http://127.0.0.1:8999", "source": "flag --target"}
    assert shown["push_interval"] == {"value": 30.0, "source": "env CSCAPI_PUSH_INTERVAL"}
    assert shown["batch_size"]["value"] == 100 and shown["batch_size"]["source"].startswith("file ")
    assert shown["timeout"]["value"] == 5.0
    assert shown["refresh_interval"] == {"value": 7200.0, "source": "default"}
    # without the flag, env wins over the file
    assert show(cli_env, extra_env=env)["settings"]["target"]["value"] == "prod"
    # without env either, the file wins over the default
    assert show(cli_env)["settings"]["target"]["value"] == "dev"


def test_secrets_are_masked_everywhere(cli_env: CliEnv) -> None:
    env = {
        "CSCAPI_STORAGE": "postgresql+psycopg://alice:hunter2secret@db.internal/cscapi",
        "CSCAPI_DECISION_STORE": "redis://:redispassword9@127.0.0.1:6379/0",
        "CSCAPI_ENROLL_KEY": "attachmentkey-0123456789",
        "CSCAPI_PROXY": "http://bob:proxypass77@proxy:3128",
    }
    result = cli_env.invoke(["config", "show"], env=env)
    assert result.exit_code == 0, result.output
    result_json = cli_env.invoke(["config", "show", "--json"], env=env)
    for output in (result.output, result_json.output):
        for secret in ("hunter2secret", "redispassword9", "attachmentkey-0123456789", "proxypass77"):
            assert secret not in output
    settings = json.loads(result_json.stdout)["settings"]
    assert settings["storage"]["value"] == "postgresql+psycopg://alice:***@db.internal/cscapi"
    assert settings["enroll_key"]["value"] == "****89"
    assert "alice" in result.output  # the user name stays, only the password goes


def test_show_without_file_uses_defaults_and_says_so(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["config", "show"])
    assert result.exit_code == 0
    assert "not found" in result.stdout and "cscapi init" in result.stdout
    data = show(cli_env)
    assert data["config_file_found"] is False
    assert data["settings"]["storage"]["value"] == f"sqlite:///{cli_env.data_dir / 'cscapi.db'}"
    assert data["capi_url"] == "http://127.0.0.1:8081/"


def test_missing_explicit_config_is_a_usage_error(cli_env: CliEnv) -> None:
    missing = cli_env.home / "nope.toml"
    assert_user_error(cli_env.invoke(["--config", str(missing), "config", "show"]), 2, "does not exist", "cscapi init")
    assert_user_error(cli_env.invoke(["config", "show"], env={"CSCAPI_CONFIG": str(missing)}), 2, "does not exist")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[capi\ntarget=", "not valid TOML"),
        ('[capi]\ntargte = "dev"\n', "Did you mean 'target'"),
        ("[nope]\nx = 1\n", "unknown section [nope]"),
        ("[agent]\npush_interval = 5\n", "push_interval must be between 10 and 600"),
        ("[agent]\nrefresh_interval = 3600\n", "refresh_interval must be"),
        ("[agent]\nrefresh_interval = 6000\nrefresh_jitter = 1000\n", "under CAPI's minimum"),
        ('[agent]\nbatch_size = "many"\n', "batch_size must be an integer"),
        ('[storage]\ndecision_store = "mongodb://x"\n', "invalid decision store URI"),
        ('[capi]\nscenarios = ["bad name"]\n', "invalid scenario name"),
    ],
)
def test_bad_config_file_is_one_line(cli_env: CliEnv, content: str, fragment: str) -> None:
    path = cli_env.home / "bad.toml"
    path.write_text(content)
    assert_user_error(cli_env.invoke(["--config", str(path), "config", "show"]), 2, fragment)


def test_bad_env_value_names_the_variable(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["config", "show"], env={"CSCAPI_VERIFY_TLS": "maybe"})
    assert_user_error(result, 2, "verify_tls", "CSCAPI_VERIFY_TLS")


def test_unknown_env_variable_is_a_warning_not_an_error(cli_env: CliEnv) -> None:
    result = cli_env.invoke(["config", "show", "--json"], env={"CSCAPI_TARGTE": "dev"})
    assert result.exit_code == 0
    assert "CSCAPI_TARGET" in result.stderr
    assert json.loads(result.stdout)["warnings"]


def test_config_path_follows_flag_and_env(cli_env: CliEnv) -> None:
    assert cli_env.invoke(["config", "path"]).stdout.strip() == str(cli_env.config_path)
    assert cli_env.invoke(["config", "path"], env={"CSCAPI_CONFIG": "/x/y.toml"}).stdout.strip() == "/x/y.toml"
    assert cli_env.invoke(["-c", "/a.toml", "config", "path"]).stdout.strip() == "/a.toml"


def test_load_settings_library_api(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(render_config_file({"target": "prod", "scenarios": ["a/b"]}))
    settings = load_settings({"push_interval": "60"}, config_path=path, env={"HOME": str(tmp_path)})
    assert settings.target == "prod" and settings.scenarios == ["a/b"] and settings.push_interval == 60.0
    assert settings.is_real_capi
    assert settings.source("push_interval") == "flag --push-interval"
    assert settings.refresh_interval - settings.refresh_jitter >= MIN_REFRESH_INTERVAL


def test_uris_keep_everything_but_the_password(cli_env: CliEnv) -> None:
    env = {"CSCAPI_STORAGE": "mysql+pymysql://root:pw@127.0.0.1:3306/db?charset=utf8"}
    settings = show(cli_env, extra_env=env)["settings"]
    assert settings["storage"]["value"] == "mysql+pymysql://root:***@127.0.0.1:3306/db?charset=utf8"
    settings = show(cli_env, extra_env={"CSCAPI_STORAGE": "sqlite:////var/lib/x.db"})["settings"]
    assert settings["storage"]["value"] == "sqlite:////var/lib/x.db"


def test_env_aliases_of_other_components(cli_env: CliEnv) -> None:
    env = {"CSCAPI_BASE_URL": "http://127.0.0.1:9911/", "CSCAPI_STORAGE_URL": "sqlite:////tmp/x.db"}
    settings = show(cli_env, extra_env=env)["settings"]
    assert settings["target"] == {"value": "http://127.0.0.1:9911/", "source": "env CSCAPI_BASE_URL"}
    assert settings["storage"]["source"] == "env CSCAPI_STORAGE_URL"
    # the setting's own variable wins over the alias
    env["CSCAPI_TARGET"] = "dev"
    assert show(cli_env, extra_env=env)["settings"]["target"]["value"] == "dev"


def test_show_says_whether_storage_secrets_are_encrypted(cli_env: CliEnv) -> None:
    assert show(cli_env)["storage_encryption"] == "off"
    shown = show(cli_env, extra_env={"CSCAPI_STORAGE_KEY": "k" * 44})
    assert shown["storage_encryption"].startswith("on") and "k" * 44 not in json.dumps(shown)
