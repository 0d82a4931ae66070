"""The Vault store's token lifecycle in accelerated time: renewal, re-login, revocation.

`SharedClock` moves the store's clock and the emulator's together, so a token's TTL and max TTL
pass in microseconds. Every test checks what Vault itself sees: requests by path and the number
of live tokens, which must stay at one per store.
"""

from __future__ import annotations

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

from agent.errors import StoreUnavailableError
from agent.metrics import Metrics
from agent.stores import RemoteKey
from agent.stores.vault import VaultStore
from agent.testing.jwt import fake_jwt

ORDER_SERVICE = {"username": "orders", "password": "fake-db-password-1"}
KEY = RemoteKey("secret/order-service")
LOGIN = "auth/kubernetes/login"
RENEW = "auth/token/renew-self"
REVOKE = "auth/token/revoke-self"


@pytest.fixture(autouse=True)
def _clean_vault_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VAULT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock(vault) -> SharedClock:
    # The fake JWT's exp claim is in real time; hours of emulator time must not expire it.
    vault.check_jwt_expiry = False
    vault.kv_put("secret", "order-service", ORDER_SERVICE)
    vault.set_policy("order-service", {"secret/data/order-service": ["read"]})
    return SharedClock(vault)


@pytest.fixture
def factory(tmp_path: Path, clock: SharedClock) -> StoreFactory:
    return StoreFactory(refs_dir=tmp_path / "refs", metrics=Metrics(), clock=clock)


def kubernetes_store(vault, factory: StoreFactory, *, ttl: int, max_ttl: int = 0) -> VaultStore:
    vault.add_kubernetes_role(
        "order-service",
        bound_service_account_names=["order-service"],
        bound_service_account_namespaces=["shop"],
        policies=["order-service"],
        ttl=ttl,
        max_ttl=max_ttl,
    )
    jwt = fake_jwt("system:serviceaccount:shop:order-service")
    write_service_account_token(factory.refs_dir, "order-service", jwt)
    auth = {"kubernetes": {"role": "order-service", "serviceAccountRef": {"name": "order-service"}}}
    return factory(vault_declaration(server=vault.url, auth=auth))


def test_renewal_at_two_thirds_of_ttl(vault, factory, clock: SharedClock) -> None:
    store = kubernetes_store(vault, factory, ttl=60)
    store.fetch([KEY])

    clock.advance(39)
    store.fetch([KEY])
    renewals_before_due = vault.count(path_prefix=RENEW)
    clock.advance(2)
    store.fetch([KEY])

    assert renewals_before_due == 0
    assert vault.count(path_prefix=RENEW) == 1
    assert vault.count(path_prefix=LOGIN) == 1
    assert vault.live_tokens() == 1


def test_maintain_schedules_renewal(vault, factory, clock: SharedClock) -> None:
    store = kubernetes_store(vault, factory, ttl=60)
    assert store.maintain() is None

    store.fetch([KEY])
    first = store.maintain()
    assert first is not None
    clock.advance(first)
    second = store.maintain()

    assert first == pytest.approx(40, abs=0.01)
    assert second == pytest.approx(40, abs=0.01)
    assert vault.count(path_prefix=RENEW) == 1
    assert vault.count(path_prefix=LOGIN) == 1


def test_relogin_when_max_ttl_reached(vault, factory, clock: SharedClock) -> None:
    store = kubernetes_store(vault, factory, ttl=60, max_ttl=150)
    store.fetch([KEY])

    # Renewals at 40 and 80 s get the full 60 s, and the one at 120 s gets the 30 s left.
    # The store logs in again at 130 s, when 20 s (a third of the TTL) remain.
    elapsed = 0.0
    logins_at: list[float] = []
    for _ in range(10):
        delay = store.maintain()
        assert delay is not None
        clock.advance(delay)
        elapsed += delay
        before = vault.count(path_prefix=LOGIN)
        store.maintain()
        if vault.count(path_prefix=LOGIN) > before:
            logins_at.append(elapsed)
        assert store.fetch([KEY])[KEY] == ORDER_SERVICE
        assert vault.live_tokens() == 1
        if logins_at:
            break

    # Vault counts the max TTL in whole seconds, so the re-login may come a second early.
    assert logins_at == [pytest.approx(130, abs=1.5)]
    assert vault.count(path_prefix=RENEW) == 3
    assert vault.count(path_prefix=REVOKE) == 1


def test_one_live_token_over_many_cycles(vault, factory, clock: SharedClock) -> None:
    store = kubernetes_store(vault, factory, ttl=60, max_ttl=200)
    store.fetch([KEY])

    for _ in range(120):
        delay = store.maintain()
        assert delay is not None
        clock.advance(delay)
        store.maintain()
        assert store.fetch([KEY])[KEY] == ORDER_SERVICE
        assert vault.live_tokens() == 1

    logins = vault.count(path_prefix=LOGIN)
    assert logins > 10
    assert vault.count(path_prefix=REVOKE) == logins - 1
    store.close()
    assert vault.live_tokens() == 0


def test_fetch_alone_keeps_token_alive(vault, factory, clock: SharedClock) -> None:
    store = kubernetes_store(vault, factory, ttl=60, max_ttl=200)

    for _ in range(100):
        assert store.fetch([KEY])[KEY] == ORDER_SERVICE
        assert vault.live_tokens() == 1
        clock.advance(15)

    assert vault.count(path_prefix=LOGIN) > 5


def test_close_revokes_login_token(vault, factory) -> None:
    store = kubernetes_store(vault, factory, ttl=60)
    store.fetch([KEY])
    assert vault.live_tokens() == 1

    store.close()

    assert vault.live_tokens() == 0
    assert vault.count(path_prefix=REVOKE) == 1


def test_close_keeps_token_when_asked(vault, factory) -> None:
    store = kubernetes_store(vault, factory, ttl=60)
    store.revoke_on_close = False
    store.fetch([KEY])

    store.close()

    assert vault.live_tokens() == 1
    assert vault.count(path_prefix=REVOKE) == 0


def test_close_before_login(vault, factory) -> None:
    store = kubernetes_store(vault, factory, ttl=60)

    store.close()

    assert vault.count() == 0


def test_expired_on_server_relogin_once(vault, factory) -> None:
    store = kubernetes_store(vault, factory, ttl=60)
    store.fetch([KEY])

    # Only Vault's clock moves: the store believes its token is fresh, Vault has expired it.
    vault.advance(61)

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.count(path_prefix=LOGIN) == 2
    assert vault.count(path_prefix="auth/token/lookup-self") == 1
    assert vault.count(path_prefix="secret/data/order-service") == 3
    assert vault.live_tokens() == 1


def test_rejected_renewal_logs_in_again(vault, factory, clock: SharedClock) -> None:
    store = kubernetes_store(vault, factory, ttl=60)
    store.fetch([KEY])

    clock.advance(41)
    vault.advance(20)  # Vault expires the token before the store renews it

    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.count(path_prefix=RENEW) == 1
    assert vault.count(path_prefix=LOGIN) == 2
    assert vault.live_tokens() == 1


def test_failed_renewal_retried(vault, factory, clock: SharedClock) -> None:
    store = kubernetes_store(vault, factory, ttl=60)
    store.fetch([KEY])
    vault.fail_next(1, status=500, path_prefix=RENEW)

    clock.advance(41)
    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    retry = store.maintain()
    assert retry is not None
    clock.advance(retry)
    after_renewal = store.maintain()

    # The retry waits 10 s, or half the 19 s the token has left, whichever is shorter.
    assert retry == pytest.approx(9.5, abs=0.01)
    assert after_renewal == pytest.approx(40, abs=0.01)
    assert vault.count(path_prefix=RENEW) == 2
    assert vault.count(path_prefix=LOGIN) == 1


def test_failed_relogin_keeps_old_token(vault, factory, clock: SharedClock) -> None:
    store = kubernetes_store(vault, factory, ttl=60, max_ttl=100)
    store.fetch([KEY])
    clock.advance(40)
    store.maintain()  # renewed to 60 s, now ending at 100 s
    vault.fail_next(1, status=503, path_prefix=LOGIN)

    clock.advance(40)
    assert store.fetch([KEY])[KEY] == ORDER_SERVICE  # the capped renewal's re-login failed
    retry = store.maintain()
    assert retry is not None
    clock.advance(retry)
    store.maintain()

    assert retry == pytest.approx(10, abs=0.01)
    assert vault.count(path_prefix=LOGIN) == 3
    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.live_tokens() == 1


def test_expired_token_and_sealed_vault(vault, factory, clock: SharedClock) -> None:
    store = kubernetes_store(vault, factory, ttl=60)
    store.fetch([KEY])
    vault.seal()

    clock.advance(61)
    retry = store.maintain()
    with pytest.raises(StoreUnavailableError):
        store.fetch([KEY])

    assert retry is not None
    assert 0 < retry <= 10
    vault.unseal()
    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.live_tokens() == 1


def test_given_token_renewed_not_revoked(vault, factory, clock: SharedClock) -> None:
    token = vault.create_token(policies=["order-service"], ttl=60)
    write_ref(factory.refs_dir, "vault-token", "token", token)
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))
    store.fetch([KEY])

    clock.advance(41)
    store.fetch([KEY])
    clock.advance(41)
    store.fetch([KEY])
    store.close()

    assert vault.count(path_prefix=RENEW) == 2
    assert vault.count(path_prefix=REVOKE) == 0
    assert vault.token_ttl(token) == pytest.approx(60, abs=1)  # renewed just now


def test_given_token_not_renewable(vault, factory, clock: SharedClock) -> None:
    token = vault.create_token(policies=["order-service"], ttl=60, renewable=False)
    write_ref(factory.refs_dir, "vault-token", "token", token)
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))
    store.fetch([KEY])

    assert store.maintain() is None
    clock.advance(50)
    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.count(path_prefix=RENEW) == 0


def test_root_token_never_renewed(vault, factory, clock: SharedClock) -> None:
    write_ref(factory.refs_dir, "vault-token", "token", vault.root_token)
    store = factory(vault_declaration(server=vault.url, auth={"tokenSecretRef": TOKEN_SECRET}))
    store.fetch([KEY])

    clock.advance(10_000_000)

    assert store.maintain() is None
    assert store.fetch([KEY])[KEY] == ORDER_SERVICE
    assert vault.count(path_prefix=RENEW) == 0
