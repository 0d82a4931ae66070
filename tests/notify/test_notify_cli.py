"""`secrets-agent run` in a subprocess: what a notify command prints never enters a log line.

The command's output passes through to the agent's own stdout and stderr, as the program's own
lines, while the agent's log lines carry only the exit code, duration and attempt.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from notify_helpers import notify_target, wait_for, write_config

FAKE_VALUE_1 = "fake-db-password-1"
FAKE_VALUE_2 = "fake-db-password-2"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_failing_command_output_not_logged(vault, tmp_path: Path) -> None:
    vault.kv_put("secret", "app", {"password": FAKE_VALUE_1})
    password = tmp_path / "out" / "app" / "password"
    # As a tester wrote it: the command prints a secret value and fails.
    script = f"cat {password}; echo; exit 3"
    config = write_config(
        tmp_path,
        vault_url=vault.url,
        interval="1s",
        notify_targets=notify_target(
            "leaky",
            f"  command:\n    argv: {json.dumps(['sh', '-c', script])}\n    retries: 1\n",
        ),
    )
    (tmp_path / "out").mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_AGENT_")}
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            f"--config={config}",
            f"--output-dir={tmp_path / 'out'}",
            f"--refs-dir={tmp_path / 'refs'}",
            f"--listen=127.0.0.1:{free_port()}",
            "--notify-delay=0",
            "--log-level=debug",
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(agent.stderr), daemon=True)
    reader.start()
    try:
        assert wait_for(
            lambda: password.exists() and password.read_bytes() == FAKE_VALUE_1.encode()
        )
        vault.kv_put("secret", "app", {"password": FAKE_VALUE_2})
        # The first attempt, and its one retry 1-2 s later.
        assert wait_for(lambda: any("event=notify_failed" in line for line in stderr_lines))
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=15)
        reader.join(timeout=5)
        assert agent.stdout is not None
        stdout = agent.stdout.read()

    stderr = "".join(stderr_lines)
    log_lines = [line for line in stderr.splitlines() if " level=" in line and " event=" in line]
    assert any("event=notify_retrying" in line for line in log_lines), stderr
    failed = [line for line in log_lines if "event=notify_failed" in line]
    assert len(failed) == 1, stderr
    assert "exit_code=3" in failed[0]
    assert "attempt=2" in failed[0]
    assert "duration_ms=" in failed[0]
    for line in log_lines:
        assert FAKE_VALUE_1 not in line, "a log line of the agent holds a secret value"
        assert FAKE_VALUE_2 not in line, "a log line of the agent holds a secret value"
    # The command's own output reached the agent's stdout, outside any log line.
    assert stdout.splitlines().count(FAKE_VALUE_2) == 2
