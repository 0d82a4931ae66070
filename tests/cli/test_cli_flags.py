"""The flags of `check`, `once` and `run`: whole names only, help text, and which command has which.

The help of each setting flag must name the `SECRETS_AGENT_*` variable that `agent.settings`
reads for the same setting, and a command lists only the flags it uses.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from cli_helpers import Agent

from agent.cli import SETTING_FLAGS, build_parser
from agent.settings import Settings

# Flags only `run` uses: the HTTP endpoints, config reloading, notify targets and exec mode.
RUN_ONLY = (
    "--listen",
    "--watch-config",
    "--notify-delay",
    "--notify-signal",
    "--exec-on-change",
    "--exec-signal",
    "--exec-stop-timeout",
)
# Flags of commands that write files, which `check` does not.
WRITING = (
    "--output-dir",
    "--refs-dir",
    "--file-mode",
    "--file-uid",
    "--file-gid",
    "--lease-revoke-grace",
    "--lease-renewal-threshold",
    "--revoke-on-exit",
)
# Flags that choose how a command works instead of setting a setting, so they have no variable.
MODE_FLAGS = ("--controller",)


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    return subparsers.choices[name]


def flags_of(name: str) -> dict[str, argparse.Action]:
    """Map each long flag of a command to its action."""
    return {
        option: action
        for action in command_parser(name)._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help",)
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--conf", "declarations.yaml"],
        ["once", "--nested"],
        ["once", "--output", "/tmp/out"],
        ["run", "--list", "127.0.0.1:0"],
        ["run", "--exec-sig", "SIGHUP"],
    ],
)
def test_abbreviated_flag_rejected(argv: list[str]) -> None:
    _arguments, unknown = build_parser().parse_known_args(argv)

    assert argv[1] in unknown


def test_abbreviated_flag_exits_two(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "check", "--conf", "declarations.yaml")

    assert agent.wait() == 2
    assert "unrecognized arguments: --conf" in agent.stderr


def test_controller_abbreviation_rejected() -> None:
    _arguments, unknown = build_parser().parse_known_args(["controller", "--stand"])

    assert unknown == ["--stand"]


@pytest.mark.parametrize("command", ["check", "once", "run"])
def test_every_flag_has_help(command: str) -> None:
    for option, action in flags_of(command).items():
        assert action.help, f"{command} {option} has no help text"


@pytest.mark.parametrize("command", ["check", "once", "run"])
def test_help_names_setting_variable(command: str) -> None:
    for option, action in flags_of(command).items():
        if option.startswith("--no-") or option in MODE_FLAGS:
            continue
        setting = action.dest
        assert setting in Settings.model_fields, f"{option} sets no setting"
        assert setting in SETTING_FLAGS, f"{option} is not passed to load_settings"
        variable = "SECRETS_AGENT_" + setting.upper()
        assert f"({variable}" in action.help, f"{command} {option} does not name {variable}"


def test_log_flags_describe_choices() -> None:
    flags = flags_of("once")

    assert "default info" in flags["--log-level"].help
    assert "JSON" in flags["--log-format"].help
    assert "default text" in flags["--log-format"].help


def test_check_has_only_declaration_flags() -> None:
    assert set(flags_of("check")) == {
        "--config",
        "--nested-keys",
        "--log-level",
        "--log-format",
        "--controller",
    }


def test_once_lacks_run_flags() -> None:
    flags = flags_of("once")

    for option in RUN_ONLY:
        assert option not in flags, f"once lists {option}"
    for option in (*WRITING, "--timeout"):
        assert option in flags, f"once lacks {option}"


def test_run_lacks_timeout() -> None:
    flags = flags_of("run")

    assert "--timeout" not in flags
    for option in (*WRITING, *RUN_ONLY):
        assert option in flags, f"run lacks {option}"


def test_once_help_text_lists_no_run_flag(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "once", "--help")

    assert agent.wait() == 0
    help_text = agent.process.stdout.read() if agent.process.stdout else ""
    for option in RUN_ONLY:
        assert not re.search(rf"{option}\b", help_text), f"once --help lists {option}"
    assert "--timeout" in help_text


def test_every_setting_flag_reaches_a_command() -> None:
    parsed = set()
    for command in ("check", "once", "run"):
        parsed |= {
            action.dest for option, action in flags_of(command).items() if option not in MODE_FLAGS
        }

    assert parsed == set(SETTING_FLAGS)


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--config", "DIR"],
        ["check", "--config", "DIR", "--nested-keys"],
        ["once", "--log-format", "text"],
        ["once", "--timeout", "5", "--output-dir", "/out", "--refs-dir", "/refs"],
        ["once", "--lease-revoke-grace", "30", "--no-revoke-on-exit"],
        ["run", "--listen", "127.0.0.1:0", "--no-watch-config", "--log-level", "debug"],
        ["run", "--notify-delay", "1", "--notify-signal", "nginx:SIGHUP"],
        ["run", "--exec-on-change", "signal", "--exec-signal", "SIGUSR1"],
        ["run", "--exec-stop-timeout", "5", "--revoke-on-exit", "--file-mode", "0440"],
    ],
)
def test_documented_invocations_parse(argv: list[str]) -> None:
    _arguments, unknown = build_parser().parse_known_args(argv)

    assert unknown == []
