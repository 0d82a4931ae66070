"""No secret value, token, JWT, role ID or secret ID in any Vault store log line or error.

Each scenario runs with every logger at DEBUG (hvac, requests, urllib3 and the emulator too),
collects every token the store held along the way, and then searches every log record and every
error message for each of those strings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pytest
from vault_helpers import (
    TOKEN_SECRET,
    VAULT_VARIABLES,
    SharedClock,
    StoreFactory,
    vault_declaration,
    write_ref,
    write_service_account_token,
)

from agent.errors import StoreError
from agent.metrics import Metrics
from agent.stores import RemoteKey
from agent.stores.vault import VaultStore
from agent.testing.jwt import fake_jwt

VALUES = {
    "order-service": {"password": "fake-leak-password-1", "username": "fake-leak-user-1"},
    "payment": {"api-key": "fake-leak-api-key-2"},
    "app/db": {"password": "fake-leak-password-3"},
}
ROLE_ID = "fake-leak-role-id-4"
SECRET_ID = "fake-leak-secret-id-5"


@pytest.fixture(autouse=True)
def _clean_vault_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VAULT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock(vault) -> SharedClock:
    vault.check_jwt_expiry = False
    for path, data in VALUES.items():
        vault.kv_put("secret", path, data)
    vault.kv_put("secret", "order-service", {"password": "fake-leak-password-6"})
    vault.kv_delete("secret", "order-service", versions=[2])
    vault.set_policy(
        "order-service",
        {"secret/data/order-service": ["read"], "secret/data/app/*": ["read"]},
    )
    return SharedClock(vault)


@pytest.fixture
def factory(tmp_path: Path, clock: SharedClock) -> StoreFactory:
    return StoreFactory(refs_dir=tmp_path / "refs", metrics=Metrics(), clock=clock)


def secret_strings() -> set[str]:
    return {value for data in VALUES.values() for value in data.values()} | {
        "fake-leak-password-6",
        ROLE_ID,
        SECRET_ID,
    }


def held_token(store: VaultStore) -> str | None:
    token = store.connection._token
    return token.value if token is not None else None


def log_texts(records: Iterable[logging.LogRecord]) -> list[str]:
    texts = []
    for record in records:
        texts.append(record.getMessage())
        texts.append(repr(getattr(record, "event_fields", {})))
        if record.exc_text:
            texts.append(record.exc_text)
    return texts


def assert_no_leak(secrets: set[str], texts: list[str]) -> None:
    assert secrets, "the scenario collected nothing to look for"
    for secret in secrets:
        leaked = [text for text in texts if secret in text]
        # Report where, never the text itself: it would print the secret.
        assert not leaked, f"a secret of length {len(secret)} leaked into {len(leaked)} text(s)"


def collect_errors(results: dict) -> list[str]:
    return [str(value) for value in results.values() if isinstance(value, Exception)]


def test_kubernetes_lifecycle_leaks_nothing(vault, factory, clock, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    vault.add_kubernetes_role(
        "order-service",
        bound_service_account_names=["order-service"],
        bound_service_account_namespaces=["shop"],
        policies=["order-service"],
        ttl=60,
        max_ttl=150,
    )
    jwts = [fake_jwt("system:serviceaccount:shop:order-service", jti=str(n)) for n in range(3)]
    token_path = write_service_account_token(factory.refs_dir, "order-service", jwts[0])
    auth = {"kubernetes": {"role": "order-service", "serviceAccountRef": {"name": "order-service"}}}
    store = factory(vault_declaration(server=vault.url, auth=auth))
    keys = [
        RemoteKey("secret/order-service", "1"),
        RemoteKey("secret/order-service"),
        RemoteKey("secret/payment"),
        RemoteKey("secret/missing"),
        RemoteKey("secret/order-service", "not-a-number"),
    ]
    tokens: set[str] = set()
    errors: list[str] = []

    errors += collect_errors(store.fetch(keys))
    tokens.add(held_token(store) or "")
    for step in range(12):
        token_path.write_text(jwts[step % 3])
        delay = store.maintain()
        assert delay is not None
        clock.advance(delay)
        store.maintain()
        tokens.add(held_token(store) or "")
        errors += collect_errors(store.fetch(keys))
    vault.advance(200)  # Vault alone expires the token: a 403, a check and a new login
    errors += collect_errors(store.fetch(keys))
    tokens.add(held_token(store) or "")
    try:
        store.fetch_prefix("secret")
    except StoreError as error:
        errors.append(str(error))
    store.close()

    assert len(tokens - {""}) >= 3
    assert any("was deleted" in error for error in errors)
    assert any("permission denied" in error for error in errors)
    logins = [r for r in caplog.records if r.getMessage() == "vault_login"]
    assert logins
    assert {"store", "auth", "ttl_s"} <= set(logins[0].event_fields)
    assert_no_leak(secret_strings() | tokens - {""} | set(jwts), log_texts(caplog.records) + errors)


def test_approle_failure_leaks_nothing(vault, factory, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    vault.add_approle("billing", role_id=ROLE_ID, secret_id=SECRET_ID, policies=["order-service"])
    secret_file = write_ref(factory.refs_dir, "billing", "secret-id", "fake-leak-wrong-7")
    auth = {"appRole": {"roleId": ROLE_ID, "secretRef": {"name": "billing", "key": "secret-id"}}}
    store = factory(vault_declaration(server=vault.url, auth=auth))
    errors: list[str] = []

    with pytest.raises(StoreError) as caught:
        store.fetch([RemoteKey("secret/order-service")])
    errors.append(str(caught.value))
    secret_file.write_text(SECRET_ID)
    errors += collect_errors(store.fetch([RemoteKey("secret/payment")]))
    token = held_token(store)
    store.close()

    assert token is not None
    secrets = secret_strings() | {"fake-leak-wrong-7", token}
    assert_no_leak(secrets, log_texts(caplog.records) + errors)


def test_token_auth_leaks_nothing(vault, factory, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    rejected = "hvs.fake-leak-token-nobody-issued"
    write_ref(factory.refs_dir, "vault-token", "token", rejected)
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))
    errors: list[str] = []

    with pytest.raises(StoreError) as caught:
        store.fetch([RemoteKey("secret/order-service")])
    errors.append(str(caught.value))
    valid = vault.create_token(policies=["order-service"], ttl=60)
    write_ref(factory.refs_dir, "vault-token", "token", valid)
    errors += collect_errors(store.fetch([RemoteKey("secret/order-service")]))
    store.close()

    secrets = secret_strings() | {rejected, valid}
    assert_no_leak(secrets, log_texts(caplog.records) + errors)
