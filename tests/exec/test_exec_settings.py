"""Settings of notify targets and exec mode: defaults, environment variables and bad values."""

from __future__ import annotations

import os

import pytest

from agent.errors import SettingsError
from agent.settings import load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch):
    for name in list(os.environ):
        if name.startswith("SECRETS_AGENT_"):
            monkeypatch.delenv(name)


def test_defaults():
    settings = load_settings()
    assert settings.notify_delay == 2.0
    assert settings.notify_signal is None
    assert settings.exec_on_change == "restart"
    assert settings.exec_signal == "SIGHUP"
    assert settings.exec_stop_timeout == 10.0


def test_environment_variables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SECRETS_AGENT_NOTIFY_DELAY", "0.5")
    monkeypatch.setenv("SECRETS_AGENT_NOTIFY_SIGNAL", "nginx:HUP")
    monkeypatch.setenv("SECRETS_AGENT_EXEC_ON_CHANGE", "signal")
    monkeypatch.setenv("SECRETS_AGENT_EXEC_SIGNAL", "usr1")
    monkeypatch.setenv("SECRETS_AGENT_EXEC_STOP_TIMEOUT", "25")
    settings = load_settings()
    assert settings.notify_delay == 0.5
    assert settings.notify_signal == "nginx:HUP"
    assert settings.exec_on_change == "signal"
    assert settings.exec_signal == "SIGUSR1", "signal names are normalized"
    assert settings.exec_stop_timeout == 25


BAD = [
    ("notify_delay", -1, "--notify-delay (SECRETS_AGENT_NOTIFY_DELAY)", "at least 0"),
    ("notify_signal", "/usr/sbin/nginx", "--notify-signal", "PROCESS_NAME or PROCESS_NAME:SIGNAL"),
    ("notify_signal", ":SIGHUP", "--notify-signal", "PROCESS_NAME or PROCESS_NAME:SIGNAL"),
    ("notify_signal", "nginx:RELOAD", "--notify-signal", "unknown signal name"),
    ("exec_on_change", "bounce", "--exec-on-change", "'restart', 'signal' or 'none'"),
    (
        "exec_signal",
        "KILL",
        "--exec-signal (SECRETS_AGENT_EXEC_SIGNAL)",
        "SIGKILL cannot be caught",
    ),
    ("exec_signal", "SIGSTOP", "--exec-signal", "SIGSTOP cannot be caught"),
    ("exec_stop_timeout", 0, "--exec-stop-timeout", "greater than 0"),
]


@pytest.mark.parametrize(
    ("name", "value", "flag", "problem"), BAD, ids=[f"{b[0]}={b[1]}" for b in BAD]
)
def test_bad_value_names_flag(name: str, value: object, flag: str, problem: str):
    with pytest.raises(SettingsError) as raised:
        load_settings(**{name: value})
    message = str(raised.value)
    assert flag in message
    assert problem in message
