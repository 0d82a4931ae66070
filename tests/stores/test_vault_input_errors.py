"""Vault store errors caused by the user's input: credential files, auth fields, KV version.

Each error must name what the user wrote (or did not write) and the fix, be permanent when
retrying cannot help, and be raised before any request that would fail for the same reason.
The store talks to the Vault API emulator over HTTP.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vault_helpers import (
    TOKEN_SECRET,
    VAULT_VARIABLES,
    StoreFactory,
    vault_declaration,
    write_ref,
)

from agent.errors import RemoteKeyNotFoundError, StoreError
from agent.metrics import Metrics
from agent.refs import InvalidReferenceError, MissingReferenceError
from agent.stores import RemoteKey

ROOT_TOKEN = "root-token-fake"
SECRET = {"password": "fake-db-password-1"}
TWO_LINE_TOKEN = "fake-tok-line1\nfake-tok-line2"


@pytest.fixture(autouse=True)
def _clean_vault_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VAULT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def factory(tmp_path: Path) -> StoreFactory:
    return StoreFactory(refs_dir=tmp_path / "refs", metrics=Metrics())


def token_store(vault, factory: StoreFactory, **fields: object):
    declaration = vault_declaration(
        server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}, **fields
    )
    return factory(declaration)


# -- credential files that hold more than one line --------------------------------------------


def test_token_file_two_lines_rejected(vault, factory: StoreFactory) -> None:
    path = write_ref(factory.refs_dir, "vault-token", "token", TWO_LINE_TOKEN)
    store = token_store(vault, factory)

    with pytest.raises(InvalidReferenceError) as caught:
        store.fetch([RemoteKey("secret/app")])

    message = str(caught.value)
    assert "store vault-kv" in message
    assert "spec.provider.vault.auth.tokenSecretRef" in message
    assert str(path) in message
    assert "more than one line" in message
    assert "must hold the credential on one line" in message
    assert "fake-tok" not in message
    assert not caught.value.transient
    assert vault.count() == 0


def test_token_file_trailing_newline_accepted(vault, factory: StoreFactory) -> None:
    vault.kv_put("secret", "app", SECRET)
    write_ref(factory.refs_dir, "vault-token", "token", ROOT_TOKEN + "\n")
    store = token_store(vault, factory)

    assert store.fetch([RemoteKey("secret/app")])[RemoteKey("secret/app")] == SECRET


def test_token_file_tab_rejected(vault, factory: StoreFactory) -> None:
    write_ref(factory.refs_dir, "vault-token", "token", "fake-tok\tpart")
    store = token_store(vault, factory)

    with pytest.raises(InvalidReferenceError) as caught:
        store.fetch([RemoteKey("secret/app")])

    assert "control character" in str(caught.value)
    assert "fake-tok" not in str(caught.value)
    assert vault.count() == 0


def test_approle_secret_id_two_lines_rejected(vault, factory: StoreFactory) -> None:
    write_ref(factory.refs_dir, "approle", "secret-id", "fake-secret-id\nfake-more")
    auth = {
        "appRole": {"roleId": "fake-role-id", "secretRef": {"name": "approle", "key": "secret-id"}}
    }
    store = factory(vault_declaration(server=vault.url, auth=auth))

    with pytest.raises(InvalidReferenceError) as caught:
        store.fetch([RemoteKey("secret/app")])

    assert "spec.provider.vault.auth.appRole.secretRef" in str(caught.value)
    assert "fake-secret-id" not in str(caught.value)
    assert vault.count() == 0


def test_kubernetes_jwt_two_lines_rejected(vault, factory: StoreFactory) -> None:
    path = factory.refs_dir / "serviceaccount" / "payment" / "token"
    path.parent.mkdir(parents=True)
    path.write_text("fake.jwt.part1\nfake.jwt.part2\n")
    auth = {"kubernetes": {"role": "payment", "serviceAccountRef": {"name": "payment"}}}
    store = factory(vault_declaration(server=vault.url, auth=auth))

    with pytest.raises(InvalidReferenceError) as caught:
        store.fetch([RemoteKey("secret/app")])

    assert "spec.provider.vault.auth.kubernetes.serviceAccountRef" in str(caught.value)
    assert str(path) in str(caught.value)
    assert vault.count() == 0


# -- Kubernetes auth without serviceAccountRef ------------------------------------------------


def test_kubernetes_pod_token_missing_message(vault, factory: StoreFactory) -> None:
    auth = {"kubernetes": {"role": "payment"}}
    store = factory(vault_declaration(server=vault.url, auth=auth))

    with pytest.raises(MissingReferenceError) as caught:
        store.fetch([RemoteKey("secret/app")])

    message = str(caught.value)
    assert "spec.provider.vault.auth.kubernetes:" in message
    assert "serviceAccountRef:" not in message
    assert "neither serviceAccountRef nor secretRef is set" in message
    assert "pod's own service account token" in message
    assert str(factory.refs_dir / "pod-token") in message
    assert "automountServiceAccountToken" in message
    assert "add serviceAccountRef" in message
    assert vault.count() == 0


# -- KV version mismatch ---------------------------------------------------------------------


def test_v1_store_on_v2_mount_named(vault, factory: StoreFactory) -> None:
    vault.kv_put("secret", "app", SECRET)
    write_ref(factory.refs_dir, "vault-token", "token", ROOT_TOKEN)
    store = token_store(vault, factory, path="secret", version="v1")
    key = RemoteKey("app")

    error = store.fetch([key])[key]

    assert isinstance(error, StoreError)
    assert not isinstance(error, RemoteKeyNotFoundError)
    message = str(error)
    assert "mount secret is KV v2" in message
    assert "the store has version: v1" in message
    assert "set spec.provider.vault.version to v2" in message
    assert not error.transient


def test_v1_store_missing_key_still_not_found(vault, factory: StoreFactory) -> None:
    vault.enable_kv("kv1", version=1)
    write_ref(factory.refs_dir, "vault-token", "token", ROOT_TOKEN)
    store = token_store(vault, factory, path="kv1", version="v1")
    key = RemoteKey("missing")

    error = store.fetch([key])[key]

    assert isinstance(error, RemoteKeyNotFoundError)
    assert "not found on mount kv1 (KV v1)" in str(error)


def test_v1_store_prefix_on_v2_mount_named(vault, factory: StoreFactory) -> None:
    vault.kv_put("secret", "app/db", SECRET)
    write_ref(factory.refs_dir, "vault-token", "token", ROOT_TOKEN)
    store = token_store(vault, factory, path="secret", version="v1")

    with pytest.raises(StoreError) as caught:
        store.fetch_prefix("app")

    assert "mount secret is KV v2" in str(caught.value)
    assert "set spec.provider.vault.version to v2" in str(caught.value)
