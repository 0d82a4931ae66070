"""A hostile template fails alone: other targets sync, `once` exits and `run` stays responsive.

The agent runs as a real process against moto's SSM. Before the sandbox's bounds, a big-int
power held the GIL for hours, so `once --timeout` never returned and `run` stopped responding to
/livez and SIGTERM. Nothing here measures time; the subprocess timeouts only keep a broken agent
from hanging the suite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from templates_helpers import SSM_STORE, external_secret, write_declarations

# A power whose result would have about 3 * 10**9 decimal digits.
BIG_INT_TEMPLATE = "{{ ((10**1000)**1000)**1000 }}"
# About 10**10 loop steps, far past the 2 second deadline.
SLOW_TEMPLATE = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ password }}"
)
FAKE_PASSWORD = "fake-db-password-1"


@pytest.fixture
def ssm(aws: str) -> None:
    client = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    client.put_parameter(Name="/app/password", Value=FAKE_PASSWORD, Type="SecureString")


def declarations(tmp_path: Path, templates: dict[str, str], *, interval: str = "1h") -> Path:
    (tmp_path / "out").mkdir(exist_ok=True)
    documents = [SSM_STORE]
    for name, template in templates.items():
        documents.append(external_secret({"app.conf": template}, name=name, interval=interval))
    return write_declarations(tmp_path / "declarations.yaml", documents)


def agent_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_AGENT_")}


def test_once_exits_despite_hostile_templates(ssm, tmp_path: Path) -> None:
    config = declarations(
        tmp_path, {"bigint": BIG_INT_TEMPLATE, "slow": SLOW_TEMPLATE, "good": "{{ password }}"}
    )

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "once",
            "--timeout",
            "5",
            f"--config={config}",
            f"--output-dir={tmp_path / 'out'}",
            f"--refs-dir={tmp_path / 'refs'}",
        ],
        env=agent_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert (tmp_path / "out" / "good" / "app.conf").read_text() == FAKE_PASSWORD
    assert not (tmp_path / "out" / "bigint" / "..data").exists()
    assert not (tmp_path / "out" / "slow" / "..data").exists()
    assert "an integer would have more than 8192 bits" in result.stderr
    assert "rendering took longer than 2 seconds" in result.stderr
    assert FAKE_PASSWORD not in result.stdout + result.stderr


def test_once_timeout_names_a_slow_build(ssm, tmp_path: Path) -> None:
    config = declarations(tmp_path, {"slow": SLOW_TEMPLATE})

    # The store responds well within 1.5 s, and the template runs until its 2 s deadline.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "once",
            "--timeout",
            "1.5",
            f"--config={config}",
            f"--output-dir={tmp_path / 'out'}",
            f"--refs-dir={tmp_path / 'refs'}",
        ],
        env=agent_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert "building the target (templates and files) did not finish" in result.stderr
    assert "had responded" in result.stderr
    assert "check that the store is reachable" not in result.stderr
    assert FAKE_PASSWORD not in result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def livez(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=10) as response:
        return response.status


def test_run_answers_and_stops_during_slow_render(ssm, tmp_path: Path) -> None:
    # The slow target fails at every refresh, so a render is running most of the time.
    config = declarations(
        tmp_path, {"slow": SLOW_TEMPLATE, "good": "{{ password }}"}, interval="1s"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            f"--config={config}",
            f"--output-dir={tmp_path / 'out'}",
            f"--refs-dir={tmp_path / 'refs'}",
            f"--listen=127.0.0.1:{port}",
        ],
        env=agent_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
    reader.start()
    try:
        good = tmp_path / "out" / "good" / "app.conf"
        assert wait_for(good.exists), "".join(lines)
        assert wait_for(lambda: "rendering took longer" in "".join(lines)), "".join(lines)

        statuses = [livez(port) for _ in range(5)]

        assert statuses == [200] * 5
        assert good.read_text() == FAKE_PASSWORD
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        reader.join(timeout=5)
    assert code == 0, "".join(lines)
    assert FAKE_PASSWORD not in "".join(lines)
