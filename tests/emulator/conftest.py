"""Fixtures for the Vault API emulator's conformance tests.

Tests talk to the emulator over a loopback socket, through hvac or through `http.client` where
hvac hides the wire (exact status, headers, raw bodies). The environment is cleared of VAULT_*
variables and HOME points at an empty directory, so hvac never picks up a developer's token.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hvac
import pytest

from agent.testing.jwt import fake_jwt
from agent.testing.vault_emulator import VaultEmulator

ROOT_TOKEN = "root-token-fake"


@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """Plain HTTP requests to the emulator, for checks hvac would hide."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw_body: bytes | None = None,
    ) -> RawResponse:
        sent_headers = dict(headers or {})
        if token is not None:
            sent_headers["X-Vault-Token"] = token
        payload = raw_body
        if body is not None:
            payload = json.dumps(body).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request(method, path, body=payload, headers=sent_headers)
            response = connection.getresponse()
            return RawResponse(response.status, response.headers, response.read())
        finally:
            connection.close()


@pytest.fixture(autouse=True)
def isolated_vault_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("VAULT_TOKEN", "VAULT_ADDR", "VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_CAPATH"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture
def emulator() -> Iterator[VaultEmulator]:
    with VaultEmulator(root_token=ROOT_TOKEN) as started:
        yield started


@pytest.fixture
def root_client(emulator: VaultEmulator) -> hvac.Client:
    return hvac.Client(url=emulator.url, token=ROOT_TOKEN)


@pytest.fixture
def raw(emulator: VaultEmulator) -> RawClient:
    return RawClient(emulator.url)


def client_for(emulator: VaultEmulator, token: str | None, **kwargs: Any) -> hvac.Client:
    """An hvac client for `token`; an empty string means no token at all."""
    client = hvac.Client(url=emulator.url, token=token, **kwargs)
    if not token:
        client.token = None
    return client


def service_account_jwt(namespace: str, name: str, **claims: Any) -> str:
    """A Kubernetes service account JWT (unsigned; the emulator checks claims only)."""
    return fake_jwt(f"system:serviceaccount:{namespace}:{name}", **claims)
