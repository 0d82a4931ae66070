"""`secrets-agent run -- COMMAND` in a subprocess, with a real program under supervision."""

from __future__ import annotations

import ast
import signal
import sys
import time
from pathlib import Path

import pytest
from exec_helpers import (
    assert_no_values,
    events,
    program_argv,
    run_agent,
    start_agent,
    wait_for,
    write_config,
)


@pytest.fixture
def config(vault, tmp_path: Path) -> Path:
    vault.kv_put("secret", "app", {"password": "fake-db-password-1"})
    return write_config(tmp_path, vault_url=vault.url)


def stop(agent, signum: int = signal.SIGTERM) -> tuple[str, str]:
    if agent.poll() is None:
        agent.send_signal(signum)
    stdout, stderr = agent.communicate(timeout=20)
    return stdout, stderr


def test_signal_once_per_change(vault, config: Path, tmp_path: Path):
    argv, log = program_argv(tmp_path, term_status=7)
    agent = start_agent(
        tmp_path,
        "run",
        "--config",
        str(config),
        "--exec-on-change",
        "signal",
        "--notify-delay",
        "0.5",
        "--",
        *argv,
    )
    password = tmp_path / "out" / "app" / "password"
    try:
        assert wait_for(lambda: events(log)), "the program did not start"
        [(pid, started)] = events(log)
        assert started == "started complete", "the program started before the first write"
        time.sleep(2.3)  # two refreshes (every 1 s) that find the same value
        assert events(log) == [(pid, "started complete")], "an unchanged refresh was signalled"

        vault.kv_put("secret", "app", {"password": "fake-db-password-2"})
        assert wait_for(lambda: password.read_bytes() == b"fake-db-password-2")
        assert wait_for(lambda: len(events(log)) == 2), "no signal after the change"
        time.sleep(1.5)  # another refresh and window: a second signal would have come by now
        assert events(log) == [(pid, "started complete"), (pid, "SIGHUP")]
    finally:
        stdout, stderr = stop(agent)

    assert agent.returncode == 7, stderr
    assert events(log)[-1] == (pid, "SIGTERM")
    assert "event=exec_signalled" in stderr
    assert_no_values(stdout + stderr)


def test_restart_on_change(vault, config: Path, tmp_path: Path):
    argv, log = program_argv(tmp_path, term_status=7)
    agent = start_agent(
        tmp_path, "run", "--config", str(config), "--notify-delay", "0.2", "--", *argv
    )
    try:
        assert wait_for(lambda: events(log)), "the program did not start"
        [(first_pid, _)] = events(log)
        vault.kv_put("secret", "app", {"password": "fake-db-password-2"})
        restarted = wait_for(lambda: len(events(log)) == 3)
        assert restarted, f"no restart: {events(log)}"
    finally:
        stdout, stderr = stop(agent)

    first, second = events(log)[:2], events(log)[2:3]
    assert first == [(first_pid, "started complete"), (first_pid, "SIGTERM")]
    [(second_pid, second_event)] = second
    assert second_pid != first_pid
    assert second_event == "started complete"
    assert events(log)[-1] == (second_pid, "SIGTERM")
    assert agent.returncode == 7
    assert "event=exec_restarting" in stderr
    assert_no_values(stdout + stderr)


def test_program_waits_for_first_complete_write(vault, tmp_path: Path):
    config = write_config(tmp_path, vault_url=vault.url)  # the secret `app` does not exist yet
    argv, log = program_argv(tmp_path)
    agent = start_agent(tmp_path, "run", "--config", str(config), "--", *argv)
    try:
        time.sleep(1.0)
        assert events(log) == [], "the program started before every target was written"
        vault.kv_put("secret", "app", {"password": "fake-db-password-1"})
        assert wait_for(lambda: events(log))
        [(_, started)] = events(log)
        assert started == "started complete"
    finally:
        stdout, stderr = stop(agent)
    assert agent.returncode == 7
    assert_no_values(stdout + stderr)


def test_exit_status_propagates(config: Path, tmp_path: Path):
    argv, log = program_argv(tmp_path, mode="exit:5")
    result = run_agent(tmp_path, "run", "--config", str(config), "--", *argv)
    assert result.returncode == 5, result.stderr
    assert "event=exec_exited" in result.stderr
    assert "exit_code=5" in result.stderr
    assert "event=agent_stopped" in result.stderr


def test_death_by_signal_is_128_plus_n(config: Path, tmp_path: Path):
    argv, log = program_argv(tmp_path, mode="kill")
    result = run_agent(tmp_path, "run", "--config", str(config), "--", *argv)
    assert result.returncode == 128 + signal.SIGKILL, result.stderr


def test_sigterm_reaches_program(config: Path, tmp_path: Path):
    argv, log = program_argv(tmp_path, term_status=42)
    agent = start_agent(tmp_path, "run", "--config", str(config), "--", *argv)
    try:
        assert wait_for(lambda: events(log))
        agent.send_signal(signal.SIGHUP)
        assert wait_for(lambda: len(events(log)) == 2), "SIGHUP was not passed on"
        assert agent.poll() is None, "SIGHUP must not stop the agent"
    finally:
        stdout, stderr = stop(agent, signal.SIGTERM)
    pid = events(log)[0][0]
    assert events(log)[1:] == [(pid, "SIGHUP"), (pid, "SIGTERM")]
    assert agent.returncode == 42
    assert "event=exec_signal_forwarded" in stderr


def test_stop_timeout_kills_program(config: Path, tmp_path: Path):
    argv, log = program_argv(tmp_path, mode="ignore-term")
    agent = start_agent(
        tmp_path, "run", "--config", str(config), "--exec-stop-timeout", "0.5", "--", *argv
    )
    assert wait_for(lambda: events(log))
    stdout, stderr = stop(agent, signal.SIGTERM)
    assert agent.returncode == 128 + signal.SIGKILL
    assert "event=exec_stop_forced" in stderr


def test_shell_command_after_double_dash(config: Path, tmp_path: Path):
    result = run_agent(tmp_path, "run", "--config", str(config), "--", "sh", "-c", "echo hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"


def test_flags_after_double_dash_reach_program(config: Path, tmp_path: Path):
    show = "import sys; print(sys.argv[1:])"
    result = run_agent(
        tmp_path,
        "run",
        "--config",
        str(config),
        "--",
        sys.executable,
        "-c",
        show,
        "--config",
        "other.yaml",
        "--",
        "--log-level",
        "nonsense",
    )
    assert result.returncode == 0, result.stderr
    arguments = ast.literal_eval(result.stdout.strip())
    assert arguments == ["--config", "other.yaml", "--", "--log-level", "nonsense"]


def test_program_not_found_exits_127(config: Path, tmp_path: Path):
    result = run_agent(tmp_path, "run", "--config", str(config), "--", "/nonexistent/app")
    assert result.returncode == 127
    assert "event=exec_start_failed" in result.stderr


@pytest.mark.parametrize("subcommand", ["once", "check"])
def test_command_rejected_outside_run(config: Path, tmp_path: Path, subcommand: str):
    result = run_agent(tmp_path, subcommand, "--config", str(config), "--", "sh", "-c", "true")
    assert result.returncode == 2
    assert f"{subcommand} does not start a program" in result.stderr
    assert "secrets-agent run ... -- COMMAND" in result.stderr


def test_nothing_after_double_dash(config: Path, tmp_path: Path):
    result = run_agent(tmp_path, "run", "--config", str(config), "--")
    assert result.returncode == 2
    assert "nothing follows --" in result.stderr


def test_run_help_shows_exec_mode(tmp_path: Path):
    result = run_agent(tmp_path, "run", "--help")
    assert result.returncode == 0
    assert "[-- COMMAND [ARG ...]]" in result.stdout
    assert "--exec-on-change" in result.stdout
    assert "--notify-delay" in result.stdout
