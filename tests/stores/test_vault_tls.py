"""The Vault store over HTTPS: which CAs it trusts, and how a verification failure reads.

The emulator serves a self-signed certificate made with `cryptography`. The store must trust it
through `caBundle` (base64 or PEM), `caProvider` or `VAULT_CACERT`, and without it must fail
with a TLSVerificationError that is not transient: retrying with the same trust cannot help.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from vault_helpers import (
    TOKEN_SECRET,
    VAULT_VARIABLES,
    Certificate,
    StoreFactory,
    request_count,
    self_signed_certificate,
    vault_declaration,
    write_ref,
)

from agent.errors import StoreError
from agent.metrics import Metrics
from agent.stores import RemoteKey
from agent.stores.vault_client import TLSVerificationError
from agent.testing.vault_emulator import VaultEmulator, write_test_certificates

ORDER_SERVICE = {"username": "orders", "password": "fake-db-password-1"}
KEY = RemoteKey("secret/order-service")


@pytest.fixture(autouse=True)
def _clean_vault_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VAULT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # requests would otherwise take an extra CA bundle from the environment.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    return self_signed_certificate(tmp_path / "tls")


@pytest.fixture
def https_vault(certificate: Certificate) -> Iterator[VaultEmulator]:
    emulator = VaultEmulator(root_token="root-token-fake")
    emulator.start(certfile=str(certificate.certfile), keyfile=str(certificate.keyfile))
    emulator.kv_put("secret", "order-service", ORDER_SERVICE)
    yield emulator
    emulator.stop()


@pytest.fixture
def factory(tmp_path: Path, https_vault: VaultEmulator) -> StoreFactory:
    refs_dir = tmp_path / "refs"
    write_ref(refs_dir, "vault-token", "token", https_vault.create_token(policies=["root"]))
    return StoreFactory(refs_dir=refs_dir, metrics=Metrics())


def https_declaration(vault: VaultEmulator, **fields: object):
    assert vault.url.startswith("https://")
    return vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}, **fields)


def test_ca_bundle_base64(https_vault, factory, certificate: Certificate) -> None:
    bundle = base64.b64encode(certificate.pem).decode()
    store = factory(https_declaration(https_vault, caBundle=bundle))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    store.close()


def test_ca_bundle_pem_text(https_vault, factory, certificate: Certificate) -> None:
    store = factory(https_declaration(https_vault, caBundle=certificate.pem.decode()))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    store.close()


@pytest.mark.parametrize("kind", ["Secret", "ConfigMap"])
def test_ca_provider(https_vault, factory, certificate: Certificate, kind: str) -> None:
    write_ref(factory.refs_dir, "vault-ca", "ca.crt", certificate.pem)
    ca_provider = {"type": kind, "name": "vault-ca", "key": "ca.crt"}
    store = factory(https_declaration(https_vault, caProvider=ca_provider))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    store.close()


def test_vault_cacert_variable(
    https_vault, factory, certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_CACERT", str(certificate.certfile))
    store = factory(https_declaration(https_vault))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    store.close()


def test_vault_cacert_with_signing_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_test_certificates(tmp_path / "chain")
    with VaultEmulator() as emulator:
        emulator.stop()
        emulator.start(certfile=files.cert_file, keyfile=files.key_file)
        emulator.kv_put("secret", "order-service", ORDER_SERVICE)
        refs_dir = tmp_path / "refs"
        write_ref(refs_dir, "vault-token", "token", emulator.create_token(policies=["root"]))
        monkeypatch.setenv("VAULT_CACERT", files.ca_file)
        store = StoreFactory(refs_dir=refs_dir, metrics=Metrics())(https_declaration(emulator))

        assert store.fetch([KEY])[KEY] == ORDER_SERVICE
        store.close()


def test_store_bundle_wins_over_variable(
    https_vault, factory, certificate: Certificate, tmp_path: Path, monkeypatch
) -> None:
    other = self_signed_certificate(tmp_path / "other", common_name="other.test")
    monkeypatch.setenv("VAULT_CACERT", str(other.certfile))
    store = factory(https_declaration(https_vault, caBundle=certificate.pem.decode()))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    store.close()


def test_untrusted_certificate_fails_clearly(https_vault, factory) -> None:
    store = factory(https_declaration(https_vault))

    with pytest.raises(TLSVerificationError) as caught:
        store.fetch([KEY])

    error = caught.value
    message = str(error)
    assert not error.transient
    assert error.__cause__ is None
    assert f"TLS verification of {https_vault.url} failed" in message
    assert "certificate verify failed" in message
    assert "while trusting the system CAs" in message
    assert "set caBundle or caProvider" in message
    assert "Traceback" not in message
    assert https_vault.count() == 0
    assert request_count(factory.metrics, store="vault-kv", operation="lookup_self") == 1


def test_wrong_ca_bundle_fails(https_vault, factory, tmp_path: Path) -> None:
    other = self_signed_certificate(tmp_path / "other", common_name="other.test")
    store = factory(https_declaration(https_vault, caBundle=other.pem.decode()))

    with pytest.raises(TLSVerificationError) as caught:
        store.fetch([KEY])

    assert "while trusting caBundle" in str(caught.value)
    store.close()


def test_ca_bundle_file_private_and_removed(https_vault, factory, certificate) -> None:
    store = factory(https_declaration(https_vault, caBundle=certificate.pem.decode()))
    store.fetch([KEY])
    trust = store.connection._trust
    assert trust is not None and trust.temporary_file is not None
    path = trust.temporary_file

    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    assert path.read_bytes().strip() == certificate.pem.strip()
    store.close()
    assert not path.exists()


def test_ca_bundle_without_certificate(https_vault) -> None:
    # Rejected when the declaration loads, before any connection.
    with pytest.raises(ValidationError) as caught:
        https_declaration(https_vault, caBundle="not a certificate")

    assert "caBundle" in str(caught.value)
    assert "contains no PEM certificate" in str(caught.value)


def test_vault_cacert_missing_file(https_vault, factory, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VAULT_CACERT", str(tmp_path / "missing.pem"))
    store = factory(https_declaration(https_vault))

    with pytest.raises(StoreError) as caught:
        store.fetch([KEY])

    assert "VAULT_CACERT names" in str(caught.value)
    assert "which is not a file" in str(caught.value)
