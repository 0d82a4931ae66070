"""Settings from flags and SECRETS_AGENT_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import SettingsError
from agent.settings import DEFAULT_LISTEN, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch):
    import os

    for name in list(os.environ):
        if name.startswith("SECRETS_AGENT_"):
            monkeypatch.delenv(name)


def test_defaults():
    settings = load_settings()
    assert settings.file_mode == 0o400
    assert settings.file_uid is None
    assert settings.listen == DEFAULT_LISTEN
    assert not settings.listen.endswith((":8080", ":8000"))
    assert settings.timeout == 60
    assert settings.config == []


def test_environment_variables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SECRETS_AGENT_CONFIG", "/a.yaml, /b")
    monkeypatch.setenv("SECRETS_AGENT_FILE_MODE", "0440")
    monkeypatch.setenv("SECRETS_AGENT_FILE_GID", "1000")
    monkeypatch.setenv("SECRETS_AGENT_OUTPUT_DIR", "/tmp/out")
    monkeypatch.setenv("SECRETS_AGENT_LISTEN", "127.0.0.1:9999")
    settings = load_settings()
    assert settings.config == [Path("/a.yaml"), Path("/b")]
    assert settings.file_mode == 0o440
    assert settings.file_gid == 1000
    assert settings.output_dir == Path("/tmp/out")
    assert settings.listen_address == ("127.0.0.1", 9999)


def test_flag_wins_over_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SECRETS_AGENT_FILE_MODE", "0440")
    monkeypatch.setenv("SECRETS_AGENT_CONFIG", "/from-env.yaml")
    settings = load_settings(file_mode="0400", config=["/from-flag.yaml"])
    assert settings.file_mode == 0o400
    assert settings.config == [Path("/from-flag.yaml")]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"file_mode": "0999"}, "--file-mode (SECRETS_AGENT_FILE_MODE)"),
        ({"file_mode": "rw-r"}, "--file-mode (SECRETS_AGENT_FILE_MODE)"),
        ({"listen": "localhost"}, "--listen (SECRETS_AGENT_LISTEN)"),
        ({"listen": "0.0.0.0:99999"}, "--listen (SECRETS_AGENT_LISTEN)"),
        ({"timeout": 0}, "--timeout (SECRETS_AGENT_TIMEOUT)"),
        ({"file_uid": -1}, "--file-uid (SECRETS_AGENT_FILE_UID)"),
        ({"log_format": "xml"}, "--log-format (SECRETS_AGENT_LOG_FORMAT)"),
    ],
)
def test_invalid_setting_names_flag_and_variable(overrides, named):
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    assert named in str(caught.value)


def test_invalid_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SECRETS_AGENT_TIMEOUT", "soon")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "SECRETS_AGENT_TIMEOUT" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"file_gid": 99999999999}, "must be at most 4294967294"),
        ({"file_mode": "0000"}, "must let someone read"),
        ({"file_mode": "0200"}, "must let someone read"),
        ({"file_mode": "0777"}, "must not set execute bits"),
        ({"file_mode": "0646"}, "must not let the group or others write"),
        ({"timeout": float("inf")}, "finite"),
        ({"output_dir": ""}, "must not be empty"),
        ({"config": ["a.yaml,,b.yaml"]}, "empty path"),
        ({"nested_keys": "maybe"}, "must be true or false"),
    ],
)
def test_setting_rules_in_plain_words(overrides, expected):
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    assert expected in str(caught.value)
    assert "Input should" not in str(caught.value)


def test_config_flag_values_split_on_commas():
    settings = load_settings(config=["a.yaml,b.yaml", "c"])
    assert settings.config == [Path("a.yaml"), Path("b.yaml"), Path("c")]


def test_unknown_variables_listed(monkeypatch: pytest.MonkeyPatch):
    from agent.settings import unknown_variables

    monkeypatch.setenv("SECRETS_AGENT_CONFIGG", "x")
    assert unknown_variables() == ["SECRETS_AGENT_CONFIGG"]


FLOAT_SETTINGS = [
    name for name, field in Settings.model_fields.items() if field.annotation is float
]


def test_every_float_setting_listed():
    assert set(FLOAT_SETTINGS) == {
        "timeout",
        "lease_revoke_grace",
        "lease_renewal_threshold",
        "notify_delay",
        "exec_stop_timeout",
    }


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf"])
def test_float_settings_must_be_finite(monkeypatch: pytest.MonkeyPatch, name: str, text: str):
    variable = f"SECRETS_AGENT_{name.upper()}"
    monkeypatch.setenv(variable, text)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"({variable}): must be a finite number" in message
    assert "less than" not in message
    assert "at most" not in message


@pytest.mark.parametrize("text", ["DEBUG", "Debug", "debug"])
def test_log_level_any_case(monkeypatch: pytest.MonkeyPatch, text: str):
    monkeypatch.setenv("SECRETS_AGENT_LOG_LEVEL", text)
    monkeypatch.setenv("SECRETS_AGENT_LOG_FORMAT", "JSON")
    settings = load_settings()
    assert settings.log_level == "debug"
    assert settings.log_format == "json"


def test_log_level_flag_any_case():
    from agent.cli import build_parser

    arguments = build_parser().parse_args(["check", "--log-level", "WARNING"])
    assert arguments.log_level == "warning"
