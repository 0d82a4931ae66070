"""Helpers for the CLI tests: declarations against a Vault store, and the agent as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT_TOKEN = "root-token-fake"

STORE = """\
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
"""

EXTERNAL_SECRET = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {{name: {name}}}
spec:
  refreshInterval: 1h
  secretStoreRef: {{name: vault-kv}}
  dataFrom:
    - extract: {{key: {name}}}
"""


def write_declarations(tmp_path: Path, *, vault_url: str, targets: tuple[str, ...]) -> Path:
    """Write a declaration directory with one file per target, each reading the Vault secret
    named after it. Also write the refs directory with the emulator's token, and create an empty
    output directory. Return the declaration directory."""
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "token").write_text(ROOT_TOKEN)
    (tmp_path / "out").mkdir(exist_ok=True)
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    (config / "store.yaml").write_text(STORE.format(url=vault_url))
    for name in targets:
        add_target(config, name)
    return config


def add_target(config: Path, name: str) -> None:
    (config / f"{name}.yaml").write_text(EXTERNAL_SECRET.format(name=name))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Agent:
    """`python -m agent ARGS` in a subprocess, with its stderr collected line by line."""

    def __init__(self, tmp_path: Path, *arguments: str, env: dict[str, str] | None = None) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_AGENT_")}
        environment.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", *arguments],
            env=environment,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def logged(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def wait(self, timeout: float = 20) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def wait_for(condition: Callable[[], object], *, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never responds, like a store
    that hangs. `connections` counts the accepted ones."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._held.append(connection)

    def close(self) -> None:
        self._socket.close()
        for connection in self._held:
            connection.close()


SSM_STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {name: aws-ssm}
spec:
  provider:
    aws: {service: ParameterStore, region: us-east-1}
---
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {name: from-ssm}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: aws-ssm}
  data:
    - secretKey: password
      remoteRef: {key: /fake/db-password}
"""


def add_hanging_ssm_store(config: Path, *, url: str) -> dict[str, str]:
    """Declare an SSM store with one target, and return the environment that points the
    agent's AWS client at `url` (a local listener) with fake credentials."""
    (config / "ssm.yaml").write_text(SSM_STORE)
    return {
        "AWS_ENDPOINT_URL_SSM": url,
        "AWS_ACCESS_KEY_ID": "fake-access-key-id",
        "AWS_SECRET_ACCESS_KEY": "fake-secret-access-key",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "us-east-1",
    }
