"""Helpers for the exec mode tests: declarations against the Vault API emulator, a program that
records what happens to it, and the agent started as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT_TOKEN = "root-token-fake"
FAKE_VALUES = ("fake-db-password-1", "fake-db-password-2", "fake-db-password-3")

DECLARATIONS = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {{name: vault-kv}}
spec:
  provider:
    vault:
      server: {url}
      path: secret
      auth:
        tokenSecretRef: {{name: vault-token, key: token}}
---
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {{name: app}}
spec:
  refreshInterval: {interval}
  secretStoreRef: {{name: vault-kv}}
  dataFrom:
    - extract: {{key: app}}
"""

# The program under supervision. It appends `<pid> <event>` lines to the log named by argv[1]:
# `started` (with `complete` when the secret file existed at start), and each signal it gets.
# SIGTERM makes it exit with status argv[2]. argv[3] selects a behaviour: `run` (wait for
# signals), `exit:N` (exit at once with status N), `kill` (die from SIGKILL at once), or
# `ignore-term` (record SIGTERM but keep running).
PROGRAM = """\
import os, signal, sys, time
log, term_status, mode, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def write(event):
    with open(log, "a") as stream:
        stream.write(f"{os.getpid()} {event}\\n")

def record(number, frame):
    write(signal.Signals(number).name)
    if number == signal.SIGTERM and mode != "ignore-term":
        sys.exit(term_status)

write("started complete" if os.path.exists(secret) else "started incomplete")
for number in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):
    signal.signal(number, record)
if mode.startswith("exit:"):
    sys.exit(int(mode[5:]))
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
while True:
    time.sleep(0.05)
"""


def write_config(tmp_path: Path, *, vault_url: str, interval: str = "1s") -> Path:
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "token").write_text(ROOT_TOKEN)
    config = tmp_path / "declarations.yaml"
    config.write_text(DECLARATIONS.format(url=vault_url, interval=interval))
    return config


def program_argv(
    tmp_path: Path, *, term_status: int = 7, mode: str = "run"
) -> tuple[list[str], Path]:
    """Return the program's argv and the log it writes."""
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    log = tmp_path / "program.log"
    secret = tmp_path / "out" / "app" / "password"
    return [sys.executable, str(script), str(log), str(term_status), mode, str(secret)], log


def events(log: Path) -> list[tuple[int, str]]:
    """Return the program log as (pid, event) pairs."""
    if not log.exists():
        return []
    pairs = []
    for line in log.read_text().splitlines():
        pid, _, event = line.partition(" ")
        pairs.append((int(pid), event))
    return pairs


def agent_environment(tmp_path: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_AGENT_")}
    (tmp_path / "out").mkdir(exist_ok=True)
    environment.update(
        SECRETS_AGENT_REFS_DIR=str(tmp_path / "refs"),
        SECRETS_AGENT_OUTPUT_DIR=str(tmp_path / "out"),
        SECRETS_AGENT_LISTEN="127.0.0.1:0",
    )
    return environment


def start_agent(tmp_path: Path, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *arguments],
        env=agent_environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_agent(tmp_path: Path, *arguments: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", *arguments],
        env=agent_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(condition: Callable[[], Any], *, seconds: float = 15.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(step)
    return condition()


def assert_no_values(text: str) -> None:
    for value in FAKE_VALUES:
        assert value not in text, "a secret value appeared in the agent's output"
