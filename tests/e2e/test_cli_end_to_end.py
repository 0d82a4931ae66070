"""The command line in a subprocess against moto's server and the Vault API emulator.

Covers the init-container path (`once`), the sidecar path (`run`) through a changed value, the
health endpoints, exit codes, and that no fake value ever reaches the agent's output.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from agent.testing.jwt import fake_service_account_token

FAKE_VALUES = (
    "fake-db-password-v1",
    "fake-db-password-v2",
    "fake-api-key-1",
    "fake-order-user",
    "fake-order-password",
)

STORES = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {{name: aws-ssm}}
spec:
  provider:
    aws: {{service: ParameterStore, region: us-east-1}}
---
apiVersion: external-secrets.io/v1beta1
kind: SecretStore
metadata: {{name: vault-kv}}
spec:
  provider:
    vault:
      server: {vault_url}
      path: secret
      version: v2
      auth:
        kubernetes: {{role: order-service}}
"""

PAYMENT = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {{name: payment-secrets}}
spec:
  refreshInterval: {interval}
  secretStoreRef: {{name: aws-ssm}}
  data:
    - secretKey: db-password
      remoteRef: {{key: /e2e/payment/db-password}}
    - secretKey: api-key
      remoteRef: {{key: /e2e/payment/api-key}}
"""

ORDER = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {name: order-service}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: vault-kv}
  dataFrom:
    - extract: {key: order-service}
"""


@pytest.fixture
def stand_ins(aws, vault, tmp_path: Path):
    """Seeded moto and Vault, a declarations directory and the agent's environment."""
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    ssm.put_parameter(
        Name="/e2e/payment/db-password", Value="fake-db-password-v1", Type="SecureString"
    )
    ssm.put_parameter(Name="/e2e/payment/api-key", Value="fake-api-key-1", Type="String")
    vault.kv_put(
        "secret",
        "order-service",
        {"username": "fake-order-user", "password": "fake-order-password"},
    )
    vault.set_policy("order-service", {"secret/data/order-service": ["read"]})
    vault.add_kubernetes_role(
        "order-service",
        bound_service_account_names=["order-service"],
        bound_service_account_namespaces=["shop"],
        policies=["order-service"],
        ttl=600,
    )

    token = tmp_path / "pod-token"
    token.write_text(fake_service_account_token(namespace="shop", service_account="order-service"))
    config = tmp_path / "config"
    config.mkdir()
    (config / "stores.yaml").write_text(STORES.format(vault_url=vault.url))
    (config / "payment.yaml").write_text(PAYMENT.format(interval="1s"))
    (config / "order.yaml").write_text(ORDER)
    output = tmp_path / "secrets"
    output.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_AGENT_")}
    environment.update(
        SECRETS_AGENT_POD_TOKEN=str(token),
        SECRETS_AGENT_REFS_DIR=str(tmp_path / "refs"),
        SECRETS_AGENT_OUTPUT_DIR=str(output),
        SECRETS_AGENT_CONFIG=str(config),
    )
    return {"ssm": ssm, "vault": vault, "config": config, "output": output, "env": environment}


def agent(*arguments: str, env: dict[str, str], timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "agent", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_no_values(text: str) -> None:
    for value in FAKE_VALUES:
        assert value not in text, "a secret value appeared in the agent's output"


def read_target(output: Path, target: str) -> dict[str, bytes]:
    directory = output / target
    return {
        entry.name: entry.read_bytes()
        for entry in directory.iterdir()
        if not entry.name.startswith("..")
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(condition, *, seconds: float, step: float = 0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(step)
    return condition()


def test_check_valid_and_invalid(stand_ins, tmp_path: Path):
    valid = agent("check", env=stand_ins["env"])
    assert valid.returncode == 0, valid.stderr
    assert "2 store(s), 2 ExternalSecret(s)" in valid.stdout

    broken = tmp_path / "broken.yaml"
    broken.write_text(PAYMENT.format(interval="soon"))
    invalid = agent("check", "--config", str(broken), env=stand_ins["env"])
    assert invalid.returncode == 2
    assert "spec.refreshInterval" in invalid.stderr
    assert "Traceback" not in invalid.stderr


def test_once_writes_every_target(stand_ins):
    result = agent("once", env=stand_ins["env"])
    assert result.returncode == 0, result.stderr
    assert_no_values(result.stdout + result.stderr)

    output = stand_ins["output"]
    assert read_target(output, "payment-secrets") == {
        "db-password": b"fake-db-password-v1",
        "api-key": b"fake-api-key-1",
    }
    assert read_target(output, "order-service") == {
        "username": b"fake-order-user",
        "password": b"fake-order-password",
    }
    real_file = (output / "payment-secrets" / "db-password").resolve()
    assert stat.S_IMODE(real_file.stat().st_mode) == 0o400
    assert "event=once_done" in result.stderr


def test_once_missing_key_exits_one_and_names_it(stand_ins):
    stand_ins["ssm"].delete_parameter(Name="/e2e/payment/api-key")
    result = agent("once", env=stand_ins["env"])
    assert result.returncode == 1
    assert "/e2e/payment/api-key" in result.stderr
    assert "aws-ssm" in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_values(result.stdout + result.stderr)
    # No partial target: payment-secrets has no generation, order-service was written.
    assert not (stand_ins["output"] / "payment-secrets" / "..data").exists()
    assert (stand_ins["output"] / "order-service" / "..data").exists()


def test_once_gives_up_on_unreachable_store_at_timeout(stand_ins, tmp_path: Path):
    port = free_port()  # nothing listens here
    config = tmp_path / "unreachable"
    config.mkdir()
    (config / "stores.yaml").write_text(STORES.format(vault_url=f"http://127.0.0.1:{port}"))
    (config / "order.yaml").write_text(ORDER)
    started = time.monotonic()
    result = agent("once", "--config", str(config), "--timeout", "3", env=stand_ins["env"])
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "vault-kv" in result.stderr
    assert "event=sync_failed" in result.stderr
    assert result.stderr.count("event=sync_failed") >= 2, "transient errors must be retried"
    assert elapsed < 30


def test_run_adopts_refreshes_and_stops(stand_ins):
    once = agent("once", env=stand_ins["env"])
    assert once.returncode == 0, once.stderr
    target = stand_ins["output"] / "payment-secrets"
    first_generation = os.readlink(target / "..data")

    port = free_port()
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--listen", f"127.0.0.1:{port}"],
        env=stand_ins["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = wait_for(lambda: _ready(port), seconds=20)
        assert ready, "the sidecar never became ready"
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200
        assert json.loads(body)["targets"]["payment-secrets"]["status"] in ("ok", "pending")

        # The first refresh finds the same values: no new generation.
        time.sleep(1.5)
        assert os.readlink(target / "..data") == first_generation

        stand_ins["ssm"].put_parameter(
            Name="/e2e/payment/db-password",
            Value="fake-db-password-v2",
            Type="SecureString",
            Overwrite=True,
        )
        changed = wait_for(
            lambda: (target / "db-password").read_bytes() == b"fake-db-password-v2", seconds=5
        )
        assert changed, "the changed value did not reach the file within the interval"
        assert (target / "api-key").read_bytes() == b"fake-api-key-1"
        old_removed = wait_for(lambda: len(_generations(target)) == 1, seconds=5)
        assert old_removed, "the superseded generation must leave the volume after its grace"

        status, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'secrets_agent_sync_total{result="success",target="payment-secrets"}' in metrics
        assert "secrets_agent_last_success_timestamp_seconds" in metrics
        assert 'secrets_agent_backend_requests_total{operation="GetParameters"' in metrics
        assert "secrets_agent_backend_request_duration_seconds_bucket" in metrics
        assert_no_values(metrics)
        assert http_get(f"http://127.0.0.1:{port}/livez")[0] == 200
    finally:
        stopped_at = time.monotonic()
        sidecar.send_signal(signal.SIGTERM)
        stdout, stderr = sidecar.communicate(timeout=10)
    assert time.monotonic() - stopped_at < 2.0
    assert sidecar.returncode == 0
    assert "event=agent_stopped" in stderr
    assert_no_values(stdout + stderr)


def test_run_keeps_last_good_files_while_store_fails(stand_ins):
    once = agent("once", env=stand_ins["env"])
    assert once.returncode == 0, once.stderr
    target = stand_ins["output"] / "order-service"
    before = read_target(stand_ins["output"], "order-service")

    vault = stand_ins["vault"]
    (stand_ins["config"] / "order.yaml").write_text(ORDER.replace("1h", "1s"))
    vault.seal()
    port = free_port()
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--listen", f"127.0.0.1:{port}"],
        env=stand_ins["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: _ready(port), seconds=20)
        stale = wait_for(lambda: _target_status(port, "order-service") == "stale", seconds=10)
        assert stale, "a failing store must show as stale in /readyz"
        assert read_target(stand_ins["output"], "order-service") == before
        assert (target / "..data").exists()
    finally:
        vault.unseal()
        sidecar.send_signal(signal.SIGTERM)
        stdout, stderr = sidecar.communicate(timeout=10)
    assert "event=sync_failed" in stderr
    assert_no_values(stdout + stderr)


def _generations(target: Path) -> list[str]:
    return [
        entry.name
        for entry in target.iterdir()
        if entry.name.startswith("..") and entry.name[2:3].isdigit()
    ]


def _ready(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    except OSError:
        return False


def _target_status(port: int, target: str) -> str:
    _, body = http_get(f"http://127.0.0.1:{port}/readyz")
    return json.loads(body)["targets"][target]["status"]


def test_debug_logs_carry_no_values(stand_ins):
    for log_format in ("text", "json"):
        result = agent(
            "once", "--log-level", "debug", "--log-format", log_format, env=stand_ins["env"]
        )
        assert result.returncode == 0, result.stderr
        assert "event" in result.stderr
        assert_no_values(result.stdout + result.stderr)


def test_empty_declarations_refused(stand_ins, tmp_path: Path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n# nothing declared yet\n")
    result = agent("once", "--config", str(empty), env=stand_ins["env"])
    assert result.returncode == 2
    assert "no ExternalSecret is declared" in result.stderr


def test_missing_output_dir_refused(stand_ins, tmp_path: Path):
    result = agent("once", "--output-dir", str(tmp_path / "typo" / "secrets"), env=stand_ins["env"])
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not (tmp_path / "typo").exists()


def test_json_format_reports_failures_as_json(stand_ins):
    stand_ins["ssm"].delete_parameter(Name="/e2e/payment/api-key")
    result = agent("once", "--log-format", "json", env=stand_ins["env"])
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    failed = [e for e in events if e["event"] == "target_not_written"]
    assert len(failed) == 1
    assert "/e2e/payment/api-key" in failed[0]["error"]
