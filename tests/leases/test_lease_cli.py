"""Dynamic secrets through the command line: init container, sidecar, SIGTERM with and without
`--revoke-on-exit`, in real processes against the Vault emulator (real time, no acceleration)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lease_helpers import CREDS_PATH, GENERATOR, GENERATOR_ONLY, setup_vault, write_declarations

from agent.lease_state import STATE_FILE_NAME, read_state


@pytest.fixture
def environment(vault, tmp_path: Path) -> dict[str, str]:
    setup_vault(vault, ttl=600, max_ttl=36000)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SECRETS_AGENT_", "VAULT_"))
    }
    (tmp_path / "out").mkdir(exist_ok=True)
    environment.update(
        SECRETS_AGENT_CONFIG=str(config),
        SECRETS_AGENT_OUTPUT_DIR=str(tmp_path / "out"),
        SECRETS_AGENT_REFS_DIR=str(tmp_path / "refs"),
        SECRETS_AGENT_POD_TOKEN=str(tmp_path / "no-pod-token"),
    )
    return environment


def once(environment: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "once", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def run_until_ready(environment: dict[str, str], *arguments: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--listen", f"127.0.0.1:{port}", *arguments],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not ready(port):
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)
    assert ready(port), "the sidecar never became ready"
    return process, port


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    return stderr


def read_files(directory: Path) -> dict[str, str]:
    return {
        entry.name: entry.read_text()
        for entry in directory.iterdir()
        if not entry.name.startswith("..")
    }


def test_init_then_sidecar_reads_once(vault, environment, tmp_path: Path) -> None:
    result = once(environment)
    assert result.returncode == 0, result.stderr
    written = read_files(tmp_path / "out" / "orders-db")
    assert (tmp_path / "out" / STATE_FILE_NAME).exists()

    process, _ = run_until_ready(environment)
    try:
        time.sleep(0.5)  # the first round and tick have run
        assert read_files(tmp_path / "out" / "orders-db") == written
        assert vault.count(path_prefix=CREDS_PATH) == 1
    finally:
        stderr = stop(process)

    assert "event=lease_adopted" in stderr
    assert written["password"] not in result.stderr + stderr
    assert vault.database_credentials_valid(written["username"], written["password"])
    assert len(vault.live_leases()) == 1


def test_sigterm_keeps_leases_by_default(vault, environment, tmp_path: Path) -> None:
    process, _ = run_until_ready(environment)
    stop(process)

    written = read_files(tmp_path / "out" / "orders-db")
    assert vault.database_credentials_valid(written["username"], written["password"])
    assert len(vault.live_leases()) == 1
    assert vault.live_tokens() == 1
    assert len(read_state(tmp_path / "out")) == 1


def test_sigterm_revokes_with_flag(vault, environment, tmp_path: Path) -> None:
    process, _ = run_until_ready(environment, "--revoke-on-exit")
    stderr = stop(process)

    written = read_files(tmp_path / "out" / "orders-db")
    assert not vault.database_credentials_valid(written["username"], written["password"])
    assert vault.live_leases() == []
    assert vault.live_tokens() == 0
    assert read_state(tmp_path / "out") == []
    assert "event=lease_revoked" in stderr


def test_revoke_setting_from_environment(vault, environment, tmp_path: Path) -> None:
    environment["SECRETS_AGENT_REVOKE_ON_EXIT"] = "true"
    process, _ = run_until_ready(environment)
    stop(process)

    assert vault.live_leases() == []
