"""`secrets-agent run` in a subprocess applies an added declaration file, unless reload is off."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from test_reload import STORE, external_secret, read_file, wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def environment(aws, tmp_path: Path) -> dict[str, str]:
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    ssm.put_parameter(Name="/app/a/password", Value="fake-a-password-1", Type="SecureString")
    ssm.put_parameter(Name="/app/b/password", Value="fake-b-password-1", Type="SecureString")
    config = tmp_path / "config"
    config.mkdir()
    (tmp_path / "out").mkdir()
    (config / "stores.yaml").write_text(STORE)
    (config / "a.yaml").write_text(external_secret("a", {"password": "/app/a/password"}))
    variables = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_AGENT_")}
    variables.update(
        SECRETS_AGENT_CONFIG=str(config),
        SECRETS_AGENT_OUTPUT_DIR=str(tmp_path / "out"),
        SECRETS_AGENT_REFS_DIR=str(tmp_path / "refs"),
        SECRETS_AGENT_LISTEN=f"127.0.0.1:{free_port()}",
    )
    return variables


def start_agent(environment: dict[str, str], *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", *flags],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_agent(agent: subprocess.Popen[str]) -> str:
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=15)
    return stderr


def test_run_applies_added_file(environment: dict[str, str], tmp_path: Path) -> None:
    agent = start_agent(environment)
    try:
        assert wait_for(lambda: read_file(tmp_path / "out/a/password") == b"fake-a-password-1")
        config = tmp_path / "config"
        (config / "b.yaml").write_text(external_secret("b", {"password": "/app/b/password"}))

        assert wait_for(lambda: read_file(tmp_path / "out/b/password") == b"fake-b-password-1")
    finally:
        stderr = stop_agent(agent)
    assert agent.returncode == 0, stderr
    assert "event=config_watch_started" in stderr
    assert "event=declarations_reloaded" in stderr
    assert "fake-" not in stderr


def test_no_watch_config_keeps_declarations(environment: dict[str, str], tmp_path: Path) -> None:
    agent = start_agent(environment, "--no-watch-config")
    try:
        assert wait_for(lambda: read_file(tmp_path / "out/a/password") == b"fake-a-password-1")
        config = tmp_path / "config"
        (config / "b.yaml").write_text(external_secret("b", {"password": "/app/b/password"}))

        # A reload would take the 0.5 s debounce and one fetch, so 2 s is well over that.
        time.sleep(2.0)
        assert not (tmp_path / "out" / "b").exists()
    finally:
        stderr = stop_agent(agent)
    assert agent.returncode == 0, stderr
    assert "config_watch_started" not in stderr
