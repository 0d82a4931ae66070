"""`make demo`: the agent end to end on loopback stand-ins, with fake values and no cloud account.

Starts moto's server (SSM and STS) and the Vault API emulator on free loopback ports, seeds fake
example values, runs `secrets-agent once` into a temporary directory as an init container would,
then `secrets-agent run` as a sidecar through one changed value, prints the resulting tree with
values masked, and stops everything it started.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DECLARATIONS = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata:
  name: aws-ssm
spec:
  provider:
    aws:
      service: ParameterStore
      region: us-east-1
---
apiVersion: external-secrets.io/v1beta1
kind: SecretStore
metadata:
  name: vault-kv
spec:
  provider:
    vault:
      server: {vault_url}
      path: secret
      version: v2
      auth:
        kubernetes:
          mountPath: kubernetes
          role: order-service
---
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata:
  name: payment-secrets
spec:
  refreshInterval: 2s
  secretStoreRef:
    name: aws-ssm
  data:
    - secretKey: db-password
      remoteRef:
        key: /demo/payment/db-password
  dataFrom:
    - extract:
        key: /demo/payment/settings
---
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata:
  name: order-service
spec:
  refreshInterval: 1h
  secretStoreRef:
    name: vault-kv
  data:
    - secretKey: username
      remoteRef:
        key: order-service
        property: username
    - secretKey: password
      remoteRef:
        key: order-service
        property: password
"""


def main() -> int:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log

    from agent.testing.vault_emulator import VaultEmulator

    workdir = Path(tempfile.mkdtemp(prefix="secrets-agent-demo-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    vault = VaultEmulator(root_token="demo-root-token")
    vault.start()
    try:
        moto_url = "http://{}:{}".format(*moto.get_host_and_port())
        _say(f"moto's server (SSM, STS) on {moto_url}; Vault API emulator on {vault.url}")
        environment = _environment(moto_url, workdir)
        _seed_aws(environment)
        _seed_vault(vault)
        config = _write_inputs(workdir, vault.url)
        return _run_agent(workdir, config, environment)
    finally:
        vault.stop()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        _say("stopped moto's server and the Vault emulator; removed " + str(workdir))


def _environment(moto_url: str, workdir: Path) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "VAULT_", "SECRETS_AGENT_"))
    }
    environment.update(
        AWS_ENDPOINT_URL=moto_url,
        AWS_ACCESS_KEY_ID="demo-fake-key-id",
        AWS_SECRET_ACCESS_KEY="demo-fake-secret-key",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        SECRETS_AGENT_POD_TOKEN=str(workdir / "pod-token"),
        SECRETS_AGENT_REFS_DIR=str(workdir / "refs"),
        SECRETS_AGENT_OUTPUT_DIR=str(workdir / "secrets"),
        SECRETS_AGENT_FILE_MODE="0440",
        SECRETS_AGENT_FILE_GID=str(os.getgid()),
    )
    return environment


def _ssm_client(environment: dict[str, str]):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "ssm",
        region_name="us-east-1",
        endpoint_url=environment["AWS_ENDPOINT_URL"],
        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
    )


def _seed_aws(environment: dict[str, str]) -> None:
    ssm = _ssm_client(environment)
    ssm.put_parameter(
        Name="/demo/payment/db-password", Value="fake-db-password-v1", Type="SecureString"
    )
    ssm.put_parameter(
        Name="/demo/payment/settings",
        Type="String",
        Value=json.dumps({"api-key": "fake-api-key", "merchant-id": "fake-42"}),
    )
    _say("seeded SSM: /demo/payment/db-password (SecureString), /demo/payment/settings (JSON)")


def _seed_vault(vault) -> None:  # type: ignore[no-untyped-def]
    vault.kv_put(
        "secret",
        "order-service",
        {"username": "fake-order-user", "password": "fake-order-password"},
    )
    vault.set_policy("order-service", {"secret/data/order-service": ["read"]})
    vault.add_kubernetes_role(
        "order-service",
        bound_service_account_names=["order-service"],
        bound_service_account_namespaces=["demo"],
        policies=["order-service"],
        ttl=600,
    )
    _say("seeded Vault: secret/order-service (KV v2), Kubernetes auth role order-service")


def _write_inputs(workdir: Path, vault_url: str) -> Path:
    from agent.testing.jwt import fake_service_account_token

    (workdir / "refs").mkdir()
    (workdir / "secrets").mkdir()
    token = fake_service_account_token(namespace="demo", service_account="order-service")
    (workdir / "pod-token").write_text(token)
    config = workdir / "declarations.yaml"
    config.write_text(DECLARATIONS.format(vault_url=vault_url))
    _say(f"declarations: {config}")
    return config


def _run_agent(workdir: Path, config: Path, environment: dict[str, str]) -> int:
    agent = [sys.executable, "-m", "agent"]

    _say("secrets-agent once (init container)")
    once = subprocess.run([*agent, "once", "--config", str(config)], env=environment, timeout=120)
    _say(f"once exited with {once.returncode}")
    if once.returncode != 0:
        return once.returncode
    _print_tree(workdir / "secrets")

    port = _free_port()
    _say(f"secrets-agent run (sidecar) on 127.0.0.1:{port}")
    sidecar = subprocess.Popen(
        [*agent, "run", "--config", str(config), "--listen", f"127.0.0.1:{port}"], env=environment
    )
    try:
        status, body = _wait_ready(port)
        _say(f"/readyz answered {status}: {body}")
        before = _generation(workdir / "secrets" / "payment-secrets")
        _ssm_client(environment).put_parameter(
            Name="/demo/payment/db-password",
            Value="fake-db-password-v2",
            Type="SecureString",
            Overwrite=True,
        )
        _say("changed /demo/payment/db-password in SSM; waiting for the next refresh")
        changed = _wait_for_new_generation(workdir / "secrets" / "payment-secrets", before)
        _say(
            "the sidecar switched payment-secrets to a new generation"
            if changed
            else "no new generation within 15 s"
        )
        _print_metrics(port)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        code = sidecar.wait(timeout=10)
        _say(f"run stopped on SIGTERM with exit code {code}")
    _print_tree(workdir / "secrets")
    return 0 if changed else 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(port: int) -> tuple[int, str]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                return answer.status, answer.read().decode().strip()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _generation(target_dir: Path) -> str:
    return os.readlink(target_dir / "..data")


def _wait_for_new_generation(target_dir: Path, before: str) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _generation(target_dir) != before:
            return True
        time.sleep(0.2)
    return False


def _print_metrics(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        lines = answer.read().decode().splitlines()
    wanted = ("secrets_agent_sync_total", "secrets_agent_backend_requests_total")
    _say("/metrics (excerpt):")
    for line in lines:
        if line.startswith(wanted):
            print("    " + line)


def _print_tree(root: Path) -> None:
    """Print names, link targets and modes; values are masked, only their length shows."""
    _say(f"tree of {root} (values masked):")
    for target in sorted(root.iterdir()):
        print(f"    {target.name}/")
        for entry in sorted(target.iterdir()):
            info = entry.lstat()
            if stat.S_ISLNK(info.st_mode):
                print(f"      {entry.name} -> {os.readlink(entry)}")
                continue
            print(f"      {entry.name}/ (generation, mode {stat.S_IMODE(info.st_mode):04o})")
            for item in sorted(entry.iterdir()):
                item_info = item.lstat()
                print(
                    f"        {item.name}  mode {stat.S_IMODE(item_info.st_mode):04o}  "
                    f"value ****** ({item_info.st_size} bytes)"
                )


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
