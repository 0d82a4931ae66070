"""The Vault store's auth methods against the Vault API emulator: token, Kubernetes, AppRole.

Each login goes over HTTP through hvac; credentials come from files under a temporary refs
directory, as they would from mounted Secrets and projected service account tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vault_helpers import (
    TOKEN_SECRET,
    VAULT_VARIABLES,
    SharedClock,
    StoreFactory,
    request_count,
    vault_declaration,
    write_ref,
    write_service_account_token,
)

from agent.errors import AccessDeniedError, StoreError
from agent.metrics import Metrics
from agent.refs import MissingReferenceError
from agent.stores import RemoteKey
from agent.testing.jwt import fake_jwt

ORDER_SERVICE = {"username": "orders", "password": "fake-db-password-1"}
KEY = RemoteKey("secret/order-service")
ROLE_ID = "fake-role-id-0001"
SECRET_ID = "fake-secret-id-0001"


@pytest.fixture(autouse=True)
def _clean_vault_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VAULT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def factory(tmp_path: Path, vault) -> StoreFactory:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.set_policy("order-service", {"secret/data/order-service": ["read"]})
    return StoreFactory(refs_dir=tmp_path / "refs", metrics=Metrics(), clock=SharedClock(vault))


def add_order_service_role(vault, *, mount: str = "kubernetes", ttl: int = 3600) -> None:
    vault.add_kubernetes_role(
        "order-service",
        bound_service_account_names=["order-service"],
        bound_service_account_namespaces=["shop"],
        policies=["order-service"],
        ttl=ttl,
        mount=mount,
    )


def service_account_jwt(name: str = "order-service", **claims: object) -> str:
    return fake_jwt(f"system:serviceaccount:shop:{name}", **claims)


def kubernetes_auth(**fields: object) -> dict:
    return {"kubernetes": {"role": "order-service", **fields}}


# -- tokenSecretRef ----------------------------------------------------------------------------


def test_token_auth_reads(vault, factory: StoreFactory) -> None:
    token = vault.create_token(policies=["order-service"])
    write_ref(factory.refs_dir, "vault-token", "token", token)
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.count(path_prefix="auth/token/lookup-self") == 1


def test_token_auth_never_revoked(vault, factory: StoreFactory) -> None:
    token = vault.create_token(policies=["order-service"])
    write_ref(factory.refs_dir, "vault-token", "token", token)
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))
    store.fetch([KEY])

    store.close()

    assert vault.live_tokens() == 1
    assert vault.token_ttl(token) > 0
    assert vault.count(path_prefix="auth/token/revoke-self") == 0


def test_token_file_rotation(vault, factory: StoreFactory) -> None:
    first = vault.create_token(policies=["order-service"])
    write_ref(factory.refs_dir, "vault-token", "token", first)
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))
    store.fetch([KEY])

    second = vault.create_token(policies=["order-service"])
    write_ref(factory.refs_dir, "vault-token", "token", second + "\n")
    vault.revoke_token(first)

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.count(path_prefix="auth/token/lookup-self") == 2


def test_token_rejected_names_secret(vault, factory: StoreFactory) -> None:
    write_ref(factory.refs_dir, "vault-token", "token", "hvs.fake-token-nobody-issued")
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))

    with pytest.raises(AccessDeniedError) as caught:
        store.fetch([KEY])

    message = str(caught.value)
    assert "Vault rejected the token from tokenSecretRef" in message
    assert "write a valid token into Secret vault-token (key token)" in message
    assert not caught.value.transient


def test_token_file_empty(vault, factory: StoreFactory) -> None:
    write_ref(factory.refs_dir, "vault-token", "token", "  \n")
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))

    with pytest.raises(StoreError) as caught:
        store.fetch([KEY])

    assert "tokenSecretRef: the token file is empty" in str(caught.value)
    assert vault.count() == 0


def test_token_file_missing(vault, factory: StoreFactory) -> None:
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))

    with pytest.raises(MissingReferenceError) as caught:
        store.fetch([KEY])

    assert "spec.provider.vault.auth.tokenSecretRef" in str(caught.value)
    assert "mount Secret vault-token" in str(caught.value)


# -- Kubernetes --------------------------------------------------------------------------------


def test_kubernetes_service_account_ref(vault, factory: StoreFactory) -> None:
    add_order_service_role(vault)
    jwt = service_account_jwt()
    write_service_account_token(factory.refs_dir, "order-service", jwt)
    auth = kubernetes_auth(serviceAccountRef={"name": "order-service"})
    store = factory(vault_declaration(server=vault.url, auth=auth))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    store.close()

    assert vault.received_jwts() == [jwt]
    assert request_count(factory.metrics, store="vault-kv", operation="login") == 1
    assert vault.live_tokens() == 0


def test_kubernetes_pod_token(vault, tmp_path: Path, factory: StoreFactory) -> None:
    add_order_service_role(vault)
    jwt = service_account_jwt()
    factory.pod_token = tmp_path / "pod" / "token"
    factory.pod_token.parent.mkdir()
    factory.pod_token.write_text(jwt)
    store = factory(vault_declaration(server=vault.url, auth=kubernetes_auth()))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.received_jwts() == [jwt]


def test_kubernetes_secret_ref(vault, factory: StoreFactory) -> None:
    add_order_service_role(vault)
    jwt = service_account_jwt()
    write_ref(factory.refs_dir, "legacy-sa-token", "token", jwt)
    auth = kubernetes_auth(secretRef={"name": "legacy-sa-token", "key": "token"})
    store = factory(vault_declaration(server=vault.url, auth=auth))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.received_jwts() == [jwt]


def test_kubernetes_custom_mount_path(vault, factory: StoreFactory) -> None:
    add_order_service_role(vault, mount="k8s/prod")
    jwt = service_account_jwt()
    write_service_account_token(factory.refs_dir, "order-service", jwt)
    auth = kubernetes_auth(mountPath="/k8s/prod/", serviceAccountRef={"name": "order-service"})
    store = factory(vault_declaration(server=vault.url, auth=auth))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.received_jwts(mount="k8s/prod") == [jwt]


def test_kubernetes_token_reread_at_login(vault, factory: StoreFactory) -> None:
    vault.check_jwt_expiry = False
    add_order_service_role(vault, ttl=60)
    first = service_account_jwt(jti="first")
    second = service_account_jwt(jti="second")
    path = write_service_account_token(factory.refs_dir, "order-service", first)
    auth = kubernetes_auth(serviceAccountRef={"name": "order-service"})
    store = factory(vault_declaration(server=vault.url, auth=auth))
    store.fetch([KEY])

    path.write_text(second)
    assert factory.clock is not None
    factory.clock.advance(61)  # the token expires, so the next use logs in again

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.received_jwts() == [first, second]


def test_kubernetes_login_rejected(vault, factory: StoreFactory) -> None:
    add_order_service_role(vault)
    jwt = service_account_jwt("intruder")
    write_service_account_token(factory.refs_dir, "intruder", jwt)
    auth = kubernetes_auth(serviceAccountRef={"name": "intruder"})
    store = factory(vault_declaration(server=vault.url, auth=auth))

    with pytest.raises(AccessDeniedError) as caught:
        store.fetch([KEY])

    message = str(caught.value)
    assert "Vault rejected the Kubernetes login with role order-service at auth/kubernetes" in (
        message
    )
    assert "service account name not authorized" in message
    assert "check that role order-service exists at auth/kubernetes" in message
    assert not caught.value.transient
    assert caught.value.__cause__ is None


def test_kubernetes_unknown_role(vault, factory: StoreFactory) -> None:
    vault.enable_auth("kubernetes")
    jwt = service_account_jwt()
    write_service_account_token(factory.refs_dir, "order-service", jwt)
    auth = kubernetes_auth(serviceAccountRef={"name": "order-service"})
    store = factory(vault_declaration(server=vault.url, auth=auth))

    with pytest.raises(AccessDeniedError) as caught:
        store.fetch([KEY])

    assert "role order-service at auth/kubernetes" in str(caught.value)
    assert 'invalid role name "order-service"' in str(caught.value)


def test_kubernetes_unmounted_auth_path(vault, factory: StoreFactory) -> None:
    jwt = service_account_jwt()
    write_service_account_token(factory.refs_dir, "order-service", jwt)
    auth = kubernetes_auth(mountPath="nowhere", serviceAccountRef={"name": "order-service"})
    store = factory(vault_declaration(server=vault.url, auth=auth))

    with pytest.raises(StoreError) as caught:
        store.fetch([KEY])

    assert "auth/nowhere" in str(caught.value)
    assert not caught.value.transient


def test_kubernetes_token_file_missing(vault, factory: StoreFactory) -> None:
    auth = kubernetes_auth(serviceAccountRef={"name": "order-service"})
    store = factory(vault_declaration(server=vault.url, auth=auth))

    with pytest.raises(MissingReferenceError) as caught:
        store.fetch([KEY])

    assert "serviceAccountRef" in str(caught.value)
    assert vault.count() == 0


# -- AppRole -----------------------------------------------------------------------------------


def add_billing_approle(vault) -> None:
    vault.add_approle("billing", role_id=ROLE_ID, secret_id=SECRET_ID, policies=["order-service"])


def test_approle_role_id(vault, factory: StoreFactory) -> None:
    add_billing_approle(vault)
    write_ref(factory.refs_dir, "billing-approle", "secret-id", SECRET_ID)
    auth = {
        "appRole": {
            "roleId": ROLE_ID,
            "secretRef": {"name": "billing-approle", "key": "secret-id"},
        }
    }
    store = factory(vault_declaration(server=vault.url, auth=auth))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    store.close()

    assert vault.count(path_prefix="auth/approle/login") == 1
    assert vault.live_tokens() == 0


def test_approle_role_ref(vault, factory: StoreFactory) -> None:
    add_billing_approle(vault)
    write_ref(factory.refs_dir, "billing-approle", "role-id", ROLE_ID + "\n")
    write_ref(factory.refs_dir, "billing-approle", "secret-id", SECRET_ID + "\n")
    auth = {
        "appRole": {
            "roleRef": {"name": "billing-approle", "key": "role-id"},
            "secretRef": {"name": "billing-approle", "key": "secret-id"},
        }
    }
    store = factory(vault_declaration(server=vault.url, auth=auth))

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE


def test_approle_denied_read_names_role(vault, factory: StoreFactory) -> None:
    add_billing_approle(vault)
    write_ref(factory.refs_dir, "billing-approle", "secret-id", SECRET_ID)
    auth = {
        "appRole": {
            "roleId": ROLE_ID,
            "secretRef": {"name": "billing-approle", "key": "secret-id"},
        }
    }
    store = factory(vault_declaration(server=vault.url, auth=auth))

    key = RemoteKey("secret/payment")
    error = store.fetch([key])[key]

    assert isinstance(error, AccessDeniedError)
    assert "grant read on secret/data/payment in a Vault policy of AppRole billing" in str(error)


def test_approle_login_rejected(vault, factory: StoreFactory) -> None:
    add_billing_approle(vault)
    write_ref(factory.refs_dir, "billing-approle", "secret-id", "fake-secret-id-wrong")
    auth = {
        "appRole": {
            "path": "approle",
            "roleId": ROLE_ID,
            "secretRef": {"name": "billing-approle", "key": "secret-id"},
        }
    }
    store = factory(vault_declaration(server=vault.url, auth=auth))

    with pytest.raises(AccessDeniedError) as caught:
        store.fetch([KEY])

    message = str(caught.value)
    assert "Vault rejected the AppRole login at auth/approle" in message
    assert "invalid role or secret ID" in message
    assert ROLE_ID not in message
    assert "fake-secret-id-wrong" not in message
