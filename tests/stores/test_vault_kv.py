"""The Vault store's KV reads against the Vault API emulator, through hvac over a socket.

Covers KV v1 and v2, explicit versions, deleted and destroyed versions, where the mount comes
from, namespaces, per-key 404 and 403, store-wide failures and recursive prefix reads.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from vault_helpers import (
    TOKEN_SECRET,
    VAULT_VARIABLES,
    StoreFactory,
    request_count,
    vault_declaration,
    write_ref,
    write_service_account_token,
)

from agent.errors import (
    AccessDeniedError,
    InvalidValueError,
    RemoteKeyNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from agent.metrics import Metrics
from agent.stores import RemoteKey
from agent.stores.vault import VaultStore
from agent.testing.jwt import fake_jwt

ORDER_SERVICE = {"username": "orders", "password": "fake-db-password-1"}


@pytest.fixture(autouse=True)
def _clean_vault_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VAULT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def factory(tmp_path: Path) -> StoreFactory:
    return StoreFactory(refs_dir=tmp_path / "refs", metrics=Metrics())


@pytest.fixture
def token_store(vault, factory: StoreFactory):
    """Build a store that reads with a token holding the given policy rules."""
    stores: list[VaultStore] = []

    def build(rules: dict | None = None, *, namespace: str = "", **fields: object) -> VaultStore:
        if rules is None:
            policies = ["root"]
        else:
            vault.set_policy("reader", rules, namespace=namespace)
            policies = ["reader"]
        token = vault.create_token(policies=policies, namespace=namespace)
        write_ref(factory.refs_dir, TOKEN_SECRET["name"], TOKEN_SECRET["key"], token)
        declaration = vault_declaration(
            server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}, **fields
        )
        store = factory(declaration)
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()


def kubernetes_store(vault, factory: StoreFactory, *, policy_rules: dict, **fields: object):
    """A store logging in with Kubernetes auth as role order-service."""
    vault.set_policy("order-service", policy_rules)
    vault.add_kubernetes_role(
        "order-service",
        bound_service_account_names=["order-service"],
        bound_service_account_namespaces=["shop"],
        policies=["order-service"],
    )
    jwt = fake_jwt("system:serviceaccount:shop:order-service")
    write_service_account_token(factory.refs_dir, "order-service", jwt)
    auth = {"kubernetes": {"role": "order-service", "serviceAccountRef": {"name": "order-service"}}}
    return factory(vault_declaration(server=vault.url, auth=auth, **fields))


# -- KV v2 -------------------------------------------------------------------------------------


def test_kv2_key_with_data_segment(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    store = token_store()

    key = RemoteKey("secret/data/order-service")
    result = store.fetch([key])

    assert result[key] == ORDER_SERVICE


def test_kv2_key_without_data_segment(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    store = token_store()

    key = RemoteKey("secret/order-service")
    result = store.fetch([key])

    assert result[key] == ORDER_SERVICE


@pytest.mark.parametrize("path", ["secret", "secret/", "/secret/data", "secret/data/"])
def test_kv2_mount_from_store_path(vault, token_store, path: str) -> None:
    vault.kv_put("secret", "team/order-service", ORDER_SERVICE)
    store = token_store(path=path)

    keys = [
        RemoteKey("team/order-service"),
        RemoteKey("secret/team/order-service"),
        RemoteKey("secret/data/team/order-service"),
    ]
    result = store.fetch(keys)

    for key in keys:
        assert result[key] == ORDER_SERVICE, key


def test_kv2_nested_mount_from_store_path(vault, token_store) -> None:
    vault.enable_kv("team/kv", version=2)
    vault.kv_put("team/kv", "order-service", ORDER_SERVICE)
    store = token_store(path="team/kv")

    key = RemoteKey("order-service")
    result = store.fetch([key])

    assert result[key] == ORDER_SERVICE


def test_kv2_explicit_version(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", {"password": "fake-old-password"})
    vault.kv_put("secret", "order-service", {"password": "fake-new-password"})
    store = token_store()

    first = RemoteKey("secret/order-service", "1")
    latest = RemoteKey("secret/order-service")
    result = store.fetch([first, latest])

    assert result[first] == {"password": "fake-old-password"}
    assert result[latest] == {"password": "fake-new-password"}
    assert vault.count(path_prefix="secret/data/order-service") == 2


def test_kv2_missing_version(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    store = token_store()

    key = RemoteKey("secret/order-service", "7")
    error = store.fetch([key])[key]

    assert isinstance(error, RemoteKeyNotFoundError)
    assert "version 7 not found on mount secret (KV v2)" in str(error)
    assert "remoteRef.version" in str(error)


@pytest.mark.parametrize("version", ["latest", "-1", "1.5", ""])
def test_kv2_invalid_version(vault, token_store, version: str) -> None:
    store = token_store()

    key = RemoteKey("secret/order-service", version)
    error = store.fetch([key])[key]

    assert isinstance(error, InvalidValueError)
    assert "secret/order-service" in str(error)
    assert "remoteRef.version" in str(error)
    assert vault.count(path_prefix="secret/data/") == 0


def test_kv2_soft_deleted_latest_version(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.kv_delete("secret", "order-service")
    store = token_store()

    key = RemoteKey("secret/order-service")
    error = store.fetch([key])[key]

    assert isinstance(error, RemoteKeyNotFoundError)
    assert "the latest version (2) was deleted on mount secret" in str(error)
    assert "vault kv undelete -mount=secret -versions=2 order-service" in str(error)


def test_kv2_soft_deleted_explicit_version(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.kv_delete("secret", "order-service", versions=[1])
    store = token_store()

    deleted = RemoteKey("secret/order-service", "1")
    latest = RemoteKey("secret/order-service")
    result = store.fetch([deleted, latest])

    assert isinstance(result[deleted], RemoteKeyNotFoundError)
    assert "version 1 was deleted" in str(result[deleted])
    assert result[latest] == ORDER_SERVICE


def test_kv2_destroyed_version(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.kv_destroy("secret", "order-service", versions=[1])
    store = token_store()

    key = RemoteKey("secret/order-service", "1")
    error = store.fetch([key])[key]

    assert isinstance(error, RemoteKeyNotFoundError)
    assert "version 1 was destroyed on mount secret (KV v2) and cannot be recovered" in str(error)
    assert "write a new version" in str(error)


def test_kv2_undeleted_version_reads_again(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.kv_delete("secret", "order-service")
    store = token_store()
    key = RemoteKey("secret/order-service")
    assert isinstance(store.fetch([key])[key], RemoteKeyNotFoundError)

    vault.kv_undelete("secret", "order-service", versions=[1])

    assert store.fetch([key])[key] == ORDER_SERVICE


# -- KV v1 -------------------------------------------------------------------------------------


def test_kv1_mount_from_key(vault, token_store) -> None:
    vault.enable_kv("kv", version=1)
    vault.kv_put("kv", "app/config", ORDER_SERVICE)
    store = token_store(version="v1")

    key = RemoteKey("kv/app/config")
    result = store.fetch([key])

    assert result[key] == ORDER_SERVICE
    assert vault.count(method="GET", path_prefix="kv/app/config") == 1


def test_kv1_mount_from_store_path(vault, token_store) -> None:
    vault.enable_kv("kv", version=1)
    vault.kv_put("kv", "app/config", ORDER_SERVICE)
    store = token_store(version="v1", path="kv")

    keys = [RemoteKey("app/config"), RemoteKey("kv/app/config")]
    result = store.fetch(keys)

    assert result[keys[0]] == ORDER_SERVICE
    assert result[keys[1]] == ORDER_SERVICE


def test_kv1_data_segment_is_part_of_path(vault, token_store) -> None:
    vault.enable_kv("kv", version=1)
    vault.kv_put("kv", "data/app", ORDER_SERVICE)
    store = token_store(version="v1")

    key = RemoteKey("kv/data/app")
    result = store.fetch([key])

    assert result[key] == ORDER_SERVICE


def test_kv1_rejects_version(vault, token_store) -> None:
    vault.enable_kv("kv", version=1)
    store = token_store(version="v1")

    key = RemoteKey("kv/app/config", "2")
    error = store.fetch([key])[key]

    assert isinstance(error, InvalidValueError)
    assert "KV v1 keeps no versions" in str(error)


def test_kv1_missing_key(vault, token_store) -> None:
    vault.enable_kv("kv", version=1)
    store = token_store(version="v1")

    key = RemoteKey("kv/app/missing")
    error = store.fetch([key])[key]

    assert isinstance(error, RemoteKeyNotFoundError)
    assert "not found on mount kv (KV v1)" in str(error)


def test_key_without_path_in_mount(vault, token_store) -> None:
    store = token_store()

    result = store.fetch([RemoteKey("secret"), RemoteKey("secret/data")])

    for error in result.values():
        assert isinstance(error, InvalidValueError)
        assert "names no secret beneath a KV mount" in str(error)


# -- several keys, one read each ---------------------------------------------------------------


def test_fetch_nothing_sends_nothing(vault, token_store) -> None:
    store = token_store()

    assert store.fetch([]) == {}
    assert vault.count() == 0


def test_missing_key_beside_found_keys(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.kv_put("secret", "payment", {"api-key": "fake-api-key-1"})
    store = token_store()

    found = RemoteKey("secret/data/order-service")
    missing = RemoteKey("secret/data/missing-service")
    other = RemoteKey("secret/payment")
    result = store.fetch([found, missing, other])

    assert result[found] == ORDER_SERVICE
    assert result[other] == {"api-key": "fake-api-key-1"}
    error = result[missing]
    assert isinstance(error, RemoteKeyNotFoundError)
    assert str(error) == (
        "store vault-kv: secret/data/missing-service: not found on mount secret (KV v2); "
        "check remoteRef.key and the store's path"
    )


def test_one_read_per_distinct_secret(vault, token_store, factory: StoreFactory) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    store = token_store()

    keys = [
        RemoteKey("secret/data/order-service"),
        RemoteKey("secret/data/order-service"),
        RemoteKey("secret/order-service"),
        RemoteKey("/secret/order-service/"),
    ]
    result = store.fetch(keys)

    assert len(result) == 3
    assert all(value == ORDER_SERVICE for value in result.values())
    assert vault.count(path_prefix="secret/data/order-service") == 1
    assert request_count(factory.metrics, store="vault-kv", operation="read") == 1


def test_denied_key_beside_allowed_key(vault, factory: StoreFactory) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.kv_put("secret", "payment", {"api-key": "fake-api-key-1"})
    vault.kv_put("secret", "billing", {"api-key": "fake-api-key-2"})
    store = kubernetes_store(vault, factory, policy_rules={"secret/data/order-service": ["read"]})

    allowed = RemoteKey("secret/order-service")
    denied = RemoteKey("secret/payment")
    also_denied = RemoteKey("secret/billing")
    result = store.fetch([allowed, denied, also_denied])
    store.close()

    assert result[allowed] == ORDER_SERVICE
    error = result[denied]
    assert isinstance(error, AccessDeniedError)
    assert "do not allow read on secret/data/payment" in str(error)
    assert "grant read on secret/data/payment" in str(error)
    assert "role order-service at auth/kubernetes" in str(error)
    assert isinstance(result[also_denied], AccessDeniedError)
    # One token check for the whole call; the valid token is not replaced.
    assert vault.count(path_prefix="auth/token/lookup-self") == 1
    assert vault.count(path_prefix="auth/kubernetes/login") == 1


def test_metrics_count_results(vault, token_store, factory: StoreFactory) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    store = token_store({"secret/data/order-service": ["read"], "secret/data/missing": ["read"]})

    store.fetch(
        [
            RemoteKey("secret/order-service"),
            RemoteKey("secret/missing"),
            RemoteKey("secret/payment"),
        ]
    )

    metrics = factory.metrics
    assert request_count(metrics, store="vault-kv", operation="read", result="success") == 1
    assert request_count(metrics, store="vault-kv", operation="read", result="not_found") == 1
    assert request_count(metrics, store="vault-kv", operation="read", result="denied") == 1
    assert request_count(metrics, store="vault-kv", operation="lookup_self") == 2


# -- namespaces --------------------------------------------------------------------------------


def test_namespace_from_store(vault, factory: StoreFactory) -> None:
    vault.enable_kv("secret", namespace="team-a")
    vault.kv_put("secret", "order-service", ORDER_SERVICE, namespace="team-a")
    vault.kv_put("secret", "order-service", {"password": "fake-root-namespace"})
    vault.set_policy("reader", {"secret/data/*": ["read"]}, namespace="team-a")
    token = vault.create_token(policies=["reader"], namespace="team-a")
    write_ref(factory.refs_dir, "vault-token", "token", token)
    store = factory(
        vault_declaration(
            server=vault.url, namespace="team-a", auth={"tokenSecretRef": TOKEN_SECRET}
        )
    )

    key = RemoteKey("secret/order-service")
    result = store.fetch([key])

    assert result[key] == ORDER_SERVICE
    assert {record.namespace for record in vault.requests} == {"team-a"}


def test_namespace_from_environment(vault, factory: StoreFactory, monkeypatch) -> None:
    vault.enable_kv("secret", namespace="team-b")
    vault.kv_put("secret", "order-service", ORDER_SERVICE, namespace="team-b")
    token = vault.create_token(policies=["root"], namespace="team-b")
    write_ref(factory.refs_dir, "vault-token", "token", token)
    monkeypatch.setenv("VAULT_NAMESPACE", "team-b")
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))

    key = RemoteKey("secret/order-service")
    result = store.fetch([key])

    assert result[key] == ORDER_SERVICE


def test_namespace_missing_key_names_namespace(vault, factory: StoreFactory) -> None:
    vault.enable_kv("secret", namespace="team-a")
    token = vault.create_token(policies=["root"], namespace="team-a")
    write_ref(factory.refs_dir, "vault-token", "token", token)
    store = factory(
        vault_declaration(
            server=vault.url, namespace="team-a", auth={"tokenSecretRef": TOKEN_SECRET}
        )
    )

    key = RemoteKey("secret/missing")
    error = store.fetch([key])[key]

    assert isinstance(error, RemoteKeyNotFoundError)
    assert "on mount secret (KV v2) in namespace team-a" in str(error)


def test_login_namespace_differs_from_data(vault, factory: StoreFactory) -> None:
    vault.enable_kv("secret", namespace="team-a/app")
    vault.kv_put("secret", "order-service", ORDER_SERVICE, namespace="team-a/app")
    # A parent-namespace token's policy names child paths with the child's prefix.
    vault.set_policy("order-service", {"app/secret/data/*": ["read"]}, namespace="team-a")
    vault.add_kubernetes_role(
        "order-service",
        bound_service_account_names=["order-service"],
        bound_service_account_namespaces=["shop"],
        policies=["order-service"],
        namespace="team-a",
    )
    jwt = fake_jwt("system:serviceaccount:shop:order-service")
    write_service_account_token(factory.refs_dir, "order-service", jwt)
    auth = {
        "namespace": "team-a",
        "kubernetes": {"role": "order-service", "serviceAccountRef": {"name": "order-service"}},
    }
    store = factory(vault_declaration(server=vault.url, namespace="team-a/app", auth=auth))

    key = RemoteKey("secret/order-service")
    result = store.fetch([key])
    store.close()

    assert result[key] == ORDER_SERVICE
    logins = [r for r in vault.requests if r.path == "auth/kubernetes/login"]
    reads = [r for r in vault.requests if r.path.startswith("secret/")]
    assert [r.namespace for r in logins] == ["team-a"]
    assert [r.namespace for r in reads] == ["team-a/app"]
    assert vault.live_tokens(namespace="team-a") == 0


# -- store-wide failures -----------------------------------------------------------------------


def test_sealed_vault_is_transient(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    store = token_store()
    key = RemoteKey("secret/order-service")
    store.fetch([key])
    vault.seal()

    with pytest.raises(StoreUnavailableError) as caught:
        store.fetch([key])

    assert caught.value.transient
    assert "is sealed" in str(caught.value)
    vault.unseal()
    assert store.fetch([key])[key] == ORDER_SERVICE


def test_sealed_vault_at_login_is_transient(vault, factory: StoreFactory) -> None:
    store = kubernetes_store(vault, factory, policy_rules={"secret/data/*": ["read"]})
    vault.seal()

    with pytest.raises(StoreUnavailableError) as caught:
        store.fetch([RemoteKey("secret/order-service")])

    assert caught.value.transient
    assert "is sealed" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_error_is_transient(vault, token_store, status: int) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    store = token_store()
    key = RemoteKey("secret/order-service")
    store.fetch([key])
    vault.fail_next(1, status=status, path_prefix="secret/data/order-service")

    with pytest.raises(StoreUnavailableError) as caught:
        store.fetch([key])

    assert caught.value.transient
    assert store.fetch([key])[key] == ORDER_SERVICE


def test_throttling_is_transient(vault, token_store) -> None:
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    store = token_store()
    key = RemoteKey("secret/order-service")
    store.fetch([key])
    vault.fail_next(1, status=429, path_prefix="secret/")

    with pytest.raises(StoreUnavailableError) as caught:
        store.fetch([key])

    assert "throttled" in str(caught.value)


def test_connection_refused_is_transient(factory: StoreFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_ref(factory.refs_dir, "vault-token", "token", "fake-token-unused")
    store = factory(
        vault_declaration(server=f"http://127.0.0.1:{port}", auth={"tokenSecretRef": TOKEN_SECRET})
    )

    with pytest.raises(StoreUnavailableError) as caught:
        store.fetch([RemoteKey("secret/order-service")])

    assert caught.value.transient
    assert f"cannot connect to Vault at http://127.0.0.1:{port} (connection refused)" in str(
        caught.value
    )
    assert caught.value.__cause__ is None


def test_unexpected_client_error_is_not_transient(vault, token_store) -> None:
    store = token_store()
    store.fetch([RemoteKey("secret/order-service")])
    vault.fail_next(1, status=412, path_prefix="secret/")

    with pytest.raises(StoreError) as caught:
        store.fetch([RemoteKey("secret/order-service")])

    assert not caught.value.transient
    assert "unexpected HTTP status 412" in str(caught.value)


# -- prefix reads ------------------------------------------------------------------------------


def seed_tree(vault, mount: str = "secret") -> None:
    vault.kv_put(mount, "app/db", {"password": "fake-db-password-1"})
    vault.kv_put(mount, "app/api", {"key": "fake-api-key-1"})
    vault.kv_put(mount, "app/nested/deep/cert", {"pem": "fake-pem"})
    vault.kv_put(mount, "other/thing", {"x": "fake-x"})


def test_prefix_kv2_recursive(vault, token_store) -> None:
    seed_tree(vault)
    store = token_store()

    values = store.fetch_prefix("secret/app")

    assert values == {
        "secret/app/db": {"password": "fake-db-password-1"},
        "secret/app/api": {"key": "fake-api-key-1"},
        "secret/app/nested/deep/cert": {"pem": "fake-pem"},
    }
    assert vault.count(method="LIST") == 3


def test_prefix_keys_read_again_through_fetch(vault, token_store) -> None:
    seed_tree(vault)
    store = token_store()

    values = store.fetch_prefix("secret/data/app/")
    fetched = store.fetch([RemoteKey(key) for key in values])

    assert sorted(values) == [
        "secret/data/app/api",
        "secret/data/app/db",
        "secret/data/app/nested/deep/cert",
    ]
    for key, value in values.items():
        assert fetched[RemoteKey(key)] == value


def test_prefix_with_store_path(vault, token_store) -> None:
    seed_tree(vault)
    store = token_store(path="secret")

    whole_mount = store.fetch_prefix("/")
    beneath = store.fetch_prefix("app/nested")

    assert sorted(whole_mount) == ["app/api", "app/db", "app/nested/deep/cert", "other/thing"]
    assert beneath == {"app/nested/deep/cert": {"pem": "fake-pem"}}


def test_prefix_kv1(vault, token_store) -> None:
    vault.enable_kv("kv", version=1)
    seed_tree(vault, "kv")
    store = token_store(version="v1")

    values = store.fetch_prefix("kv/app")

    assert sorted(values) == ["kv/app/api", "kv/app/db", "kv/app/nested/deep/cert"]
    assert values["kv/app/db"] == {"password": "fake-db-password-1"}


def test_prefix_skips_deleted_secret(vault, token_store) -> None:
    seed_tree(vault)
    vault.kv_delete("secret", "app/api")
    store = token_store()

    values = store.fetch_prefix("secret/app")

    assert sorted(values) == ["secret/app/db", "secret/app/nested/deep/cert"]


def test_prefix_with_nothing_beneath(vault, token_store) -> None:
    store = token_store()

    assert store.fetch_prefix("secret/nothing-here") == {}


def test_prefix_without_mount(vault, token_store) -> None:
    store = token_store()

    with pytest.raises(InvalidValueError) as caught:
        store.fetch_prefix("/")

    assert "names no KV mount" in str(caught.value)


def test_prefix_list_denied(vault, token_store) -> None:
    seed_tree(vault)
    store = token_store({"secret/data/app/*": ["read"]})

    with pytest.raises(AccessDeniedError) as caught:
        store.fetch_prefix("secret/app")

    assert "do not allow list on secret/metadata/app/" in str(caught.value)
    assert "grant list on secret/metadata/app/" in str(caught.value)


def test_prefix_read_denied(vault, token_store) -> None:
    seed_tree(vault)
    store = token_store({"secret/metadata/*": ["list"], "secret/data/app/db": ["read"]})

    with pytest.raises(AccessDeniedError) as caught:
        store.fetch_prefix("secret/app")

    assert "do not allow read on secret/data/app/" in str(caught.value)
