"""Shared fixtures: moto's server and the Vault API emulator, each on a loopback port.

Both stand-ins are real HTTP servers; the agent reaches them through boto3 and hvac over a
socket, exactly as it reaches AWS and Vault in production.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.testing.jwt import fake_jwt  # noqa: F401 - re-exported for tests

FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing-fake-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-fake-secret-key",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
AWS_VARIABLES_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_ENDPOINT_URL_SSM",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port for the whole session; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A clean moto state and an environment that sends every AWS call to it.

    The environment holds only fake keys and the endpoint, never a real profile or metadata
    address: `AWS_EC2_METADATA_DISABLED` keeps boto3 from probing the instance metadata service.
    """
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST", data=b"")
    urllib.request.urlopen(request, timeout=10).close()
    for name in AWS_VARIABLES_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    empty_config = tmp_path / "aws-config-empty"
    empty_config.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty_config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty_config))
    yield moto_server


@pytest.fixture
def vault() -> Iterator[object]:
    """A fresh Vault API emulator on a free loopback port (KV v2 mounted at `secret`)."""
    from agent.testing.vault_emulator import VaultEmulator

    emulator = VaultEmulator(root_token="root-token-fake")
    emulator.start()
    yield emulator
    emulator.stop()
