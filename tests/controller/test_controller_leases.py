"""Dynamic secrets in the controller, against the Vault API emulator and the Kubernetes emulator.

The controller's lease clock is the emulator's: a test moves it with `vault.advance()` and then
calls `controller.check_leases()`, so minutes of lease lifetime pass at once.

Covered: one credential over many reconciles and one login per store and per generator. Then
renewal before expiry, new credentials at the max TTL, and revocation when the ExternalSecret is
deleted or its generatorRef changes, also while no controller runs. Then separate credentials per
ExternalSecret, adoption after a restart or by a new leader, lease records that hold no values and
cannot be planted, and creationPolicy None rejected for generators.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from typing import Any

import pytest

from agent.controller.handlers import Controller
from tests.controller.conftest import API, Cluster, eventually

ROLE_ID = "fake-role-id-orders"
SECRET_ID = "fake-secret-id-orders"
CREDS = "database/creds/orders"
LOGIN = "auth/approle/login"
RENEW = "sys/leases/renew"
GRACE = 60
POLICY = {
    "database/creds/orders": ["read"],
    "database/creds/billing": ["read"],
    "sys/leases/revoke": ["update"],
    "secret/data/orders/*": ["read"],
}
LEASES = "secrets-agent.io/leases"


def setup_vault(vault: Any, *, ttl: int = 600, max_ttl: int = 3600) -> None:
    vault.add_database_role("orders", default_ttl=ttl, max_ttl=max_ttl)
    vault.add_database_role("billing", default_ttl=ttl, max_ttl=max_ttl)
    vault.set_policy("orders", POLICY)
    vault.add_approle(
        "orders", role_id=ROLE_ID, secret_id=SECRET_ID, policies=["orders"], ttl=36000
    )
    vault.kv_put("secret", "orders/settings", {"api-key": "fake-api-key-1"})


def vault_provider(vault: Any, **extra: Any) -> dict[str, Any]:
    return {
        "server": vault.url,
        "auth": {
            "appRole": {
                "roleId": ROLE_ID,
                "secretRef": {"name": "vault-approle", "key": "secret-id"},
            }
        },
        **extra,
    }


async def apply_generator(
    cluster: Cluster, vault: Any, name: str = "orders-db", *, role: str = "orders"
) -> None:
    body = {
        "apiVersion": "secrets-agent.io/v1alpha1",
        "kind": "VaultDynamicSecret",
        "metadata": {"name": name},
        "spec": {"path": f"/database/creds/{role}", "provider": vault_provider(vault)},
    }
    await cluster.call("POST", f"{API}/namespaces/team-a/vaultdynamicsecrets", body)


def generated(name: str = "orders-db", *, interval: str = "1h", **target: Any) -> dict[str, Any]:
    return {
        "refreshInterval": interval,
        "target": target,
        "dataFrom": [
            {
                "sourceRef": {
                    "generatorRef": {
                        "apiVersion": "generators.external-secrets.io/v1alpha1",
                        "kind": "VaultDynamicSecret",
                        "name": name,
                    }
                }
            }
        ],
    }


@pytest.fixture
async def orders(cluster: Cluster, vault: Any) -> Cluster:
    """A cluster with the AppRole secret ID in team-a and the orders-db generator."""
    secret = {
        "metadata": {"name": "vault-approle"},
        "data": {"secret-id": base64.b64encode(SECRET_ID.encode()).decode()},
    }
    await cluster.call("POST", "/api/v1/namespaces/team-a/secrets", secret)
    return cluster


async def start(cluster: Cluster, vault: Any, **overrides: Any) -> Controller:
    return await cluster.start_controller(
        lease_clock=vault.now, lease_revoke_grace=GRACE, **overrides
    )


def leases_of(cluster: Cluster, secret: str, owner: str) -> list[dict[str, Any]]:
    annotations = (cluster.secret(secret) or {}).get("metadata", {}).get("annotations") or {}
    return json.loads(annotations.get(LEASES) or "{}").get(owner, [])


def reconciles(controller: Controller) -> float:
    registry = controller.metrics.registry
    return sum(
        registry.get_sample_value("secrets_agent_controller_reconcile_total", {"result": result})
        or 0.0
        for result in ("success", "unchanged")
    )


async def revocation_scheduled(cluster: Cluster, secret: str, owner: str) -> None:
    """Wait until a superseded lease's revocation time is saved on the Secret.

    The grace starts once the new lease's Secret write is committed; moving the clock before
    that would only push the revocation later.
    """
    await eventually(
        lambda: any(
            record["superseded"] and record["revoke_at"] is not None
            for record in leases_of(cluster, secret, owner)
        )
    )


async def advance(controller: Controller, vault: Any, seconds: float) -> None:
    vault.advance(seconds)
    controller.check_leases()


async def test_many_reconciles_one_credential(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    controller = await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated(interval="1s"))

    data = await eventually(lambda: orders.secret_data("orders-db"))
    assert set(data) == {"username", "password"}
    before = reconciles(controller)
    await eventually(lambda: reconciles(controller) >= before + 3, timeout=15)
    assert orders.secret_data("orders-db") == data
    assert vault.count(method="GET", path_prefix=CREDS) == 1
    assert len(vault.live_leases()) == 1
    assert vault.count(path_prefix=LOGIN) == 1
    ready = orders.ready("orders-db")
    assert ready["status"] == "True"
    # Generators of one name in two namespaces count apart.
    issued = controller.metrics.registry.get_sample_value(
        "secrets_agent_backend_requests_total",
        {"store": "VaultDynamicSecret/team-a/orders-db", "operation": "issue", "result": "success"},
    )
    assert issued == 1


async def test_store_logs_in_once(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await orders.apply_store("vault-kv", {"vault": vault_provider(vault, path="secret")})
    await start(orders, vault, cache_seconds=0.1)
    for name in ("orders-a", "orders-b", "orders-c"):
        spec = {
            "refreshInterval": "1s",
            "secretStoreRef": {"name": "vault-kv"},
            "data": [
                {
                    "secretKey": "api-key",
                    "remoteRef": {"key": "orders/settings", "property": "api-key"},
                }
            ],
        }
        await orders.apply_external_secret(name, spec)
    await eventually(lambda: all(orders.secret_data(n) for n in ("orders-a", "orders-b")))
    # Reconciles that follow one another within the 0.1 s cache share one read, so
    # wait for the reads themselves rather than for a number of reconciles.
    await eventually(
        lambda: vault.count(path_prefix="secret/data/orders/settings") >= 3, timeout=20
    )
    assert vault.count(path_prefix=LOGIN) == 1


async def test_lease_renewed_before_expiry(orders: Cluster, vault: Any) -> None:
    setup_vault(vault, ttl=600, max_ttl=3600)
    await apply_generator(orders, vault)
    controller = await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated())
    data = await eventually(lambda: orders.secret_data("orders-db"))
    [lease_id] = vault.live_leases()
    [record] = await eventually(lambda: leases_of(orders, "orders-db", "orders-db"))
    assert record["lease_id"] == lease_id
    assert record["secret_keys"] == {"username": "username", "password": "password"}

    await advance(controller, vault, 450)  # past 2/3 of the TTL, before its end
    await eventually(lambda: vault.count(path_prefix=RENEW) == 1)
    assert vault.live_leases() == [lease_id]
    assert vault.lease_ttl(lease_id) > 500
    assert orders.secret_data("orders-db") == data
    assert vault.count(method="GET", path_prefix=CREDS) == 1
    # The records annotation follows the renewal, so a restarted controller can adopt it.
    renewed = await eventually(
        lambda: [
            r
            for r in leases_of(orders, "orders-db", "orders-db")
            if r["renewed_at"] > record["renewed_at"]
        ]
    )
    assert renewed[0]["expires_at"] > record["expires_at"]


async def test_max_ttl_writes_new_credentials(orders: Cluster, vault: Any) -> None:
    setup_vault(vault, ttl=600, max_ttl=900)
    await apply_generator(orders, vault)
    controller = await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated())
    first = await eventually(lambda: orders.secret_data("orders-db"))
    [old_lease] = vault.live_leases()

    await advance(controller, vault, 450)  # renewal capped by the max TTL: 450 s left
    await eventually(lambda: vault.count(path_prefix=RENEW) == 1)
    await advance(controller, vault, 320)  # 2/3 of the capped remainder has passed
    second = await eventually(
        lambda: (
            (orders.secret_data("orders-db") or first) != first and orders.secret_data("orders-db")
        )
    )
    assert second["username"] != first["username"]
    assert vault.count(method="GET", path_prefix=CREDS) == 2
    assert old_lease in vault.live_leases()  # the grace has not passed yet

    await revocation_scheduled(orders, "orders-db", "orders-db")
    await advance(controller, vault, GRACE + 1)
    await eventually(lambda: old_lease not in vault.live_leases())
    assert len(vault.live_leases()) == 1
    assert orders.secret_data("orders-db") == second


async def test_deleted_owner_revokes_lease(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    controller = await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated())
    await eventually(lambda: orders.secret_data("orders-db"))
    assert len(vault.live_leases()) == 1

    await orders.call("DELETE", f"{API}/namespaces/team-a/externalsecrets/orders-db")
    await eventually(lambda: orders.external_secret("orders-db") is None)
    await eventually(lambda: orders.secret("orders-db") is None)
    gauge = "secrets_agent_lease_expiry_timestamp_seconds"
    await eventually(
        lambda: (
            controller.metrics.registry.get_sample_value(gauge, {"target": "team-a/orders-db"})
            is None
        )
    )
    assert len(vault.live_leases()) == 1  # revoked only after the grace

    await advance(controller, vault, GRACE + 1)
    await eventually(lambda: vault.live_leases() == [])


async def test_generator_ref_change_revokes_old(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    await apply_generator(orders, vault, "billing-db", role="billing")
    controller = await start(orders, vault)
    await orders.apply_external_secret("app", generated())
    first = await eventually(lambda: orders.secret_data("app"))
    [old_lease] = vault.live_leases()
    assert old_lease.startswith("database/creds/orders/")

    await orders.patch_external_secret("app", {"spec": generated("billing-db")})
    await eventually(lambda: (orders.secret_data("app") or first) != first)
    assert vault.count(method="GET", path_prefix="database/creds/billing") == 1
    records = await eventually(lambda: leases_of(orders, "app", "app"))
    current = [record["generator"] for record in records if not record["superseded"]]
    assert current == ["billing-db"]
    superseded = [record["lease_id"] for record in records if record["superseded"]]
    assert superseded == [old_lease]  # listed until revoked, so a restart still revokes it

    await revocation_scheduled(orders, "app", "app")
    await advance(controller, vault, GRACE + 1)
    await eventually(lambda: old_lease not in vault.live_leases())
    [new_lease] = vault.live_leases()
    assert new_lease.startswith("database/creds/billing/")
    await eventually(lambda: len(leases_of(orders, "app", "app")) == 1)


async def test_generator_ref_changed_while_stopped(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    await apply_generator(orders, vault, "billing-db", role="billing")
    first = await start(orders, vault)
    await orders.apply_external_secret("app", generated())
    await eventually(lambda: leases_of(orders, "app", "app"))
    await orders.stop_controller(first)
    [old_lease] = vault.live_leases()

    await orders.patch_external_secret("app", {"spec": generated("billing-db")})
    second = await start(orders, vault)
    records = await eventually(
        lambda: [r for r in leases_of(orders, "app", "app") if r["generator"] == "billing-db"]
    )
    assert not records[0]["superseded"]
    # The saved record of the old generator was adopted as superseded, not lost: its lease is
    # revoked after the grace although no running controller ever issued it.
    assert vault.count(method="GET", path_prefix=CREDS) == 1
    assert old_lease in vault.live_leases()
    await revocation_scheduled(orders, "app", "app")
    await advance(second, vault, GRACE + 1)
    await eventually(lambda: old_lease not in vault.live_leases())
    [new_lease] = vault.live_leases()
    assert new_lease.startswith("database/creds/billing/")


async def test_records_adopted_before_generator_watch(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    await apply_generator(orders, vault, "billing-db", role="billing")
    first = await start(orders, vault)
    await orders.apply_external_secret("app", generated())
    await eventually(lambda: leases_of(orders, "app", "app"))
    await orders.stop_controller(first)
    [old_lease] = vault.live_leases()

    await orders.patch_external_secret("app", {"spec": generated("billing-db")})
    # The next controller reconciles before its watch lists the generators, so the one the
    # saved record names is read on demand.
    orders.emulator.delay_responses("LIST", plural="vaultdynamicsecrets", seconds=5)
    second = await start(orders, vault)
    await revocation_scheduled(orders, "app", "app")
    await advance(second, vault, GRACE + 1)
    await eventually(lambda: old_lease not in vault.live_leases())
    orders.emulator.delay_responses("LIST", plural="vaultdynamicsecrets", seconds=0)


async def test_creation_policy_none_rejected(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated(creationPolicy="None"))
    ready = await eventually(lambda: orders.ready("orders-db"))
    assert ready["status"] == "False"
    assert "creationPolicy: None" in ready["message"]
    assert "use Owner, Orphan or Merge" in ready["message"]
    assert vault.count(path_prefix="database/creds") == 0
    assert vault.live_leases() == []


async def test_separate_credentials_per_owner(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    await start(orders, vault)
    await orders.apply_external_secret("orders-a", generated())
    await orders.apply_external_secret("orders-b", generated())
    a = await eventually(lambda: orders.secret_data("orders-a"))
    b = await eventually(lambda: orders.secret_data("orders-b"))
    assert a["username"] != b["username"]
    assert len(vault.live_leases()) == 2
    assert vault.count(path_prefix=LOGIN) == 1  # one generator, one login


async def test_restart_adopts_lease(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    first = await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated())
    data = await eventually(lambda: orders.secret_data("orders-db"))
    [saved] = await eventually(lambda: leases_of(orders, "orders-db", "orders-db"))
    await orders.stop_controller(first)
    [lease_id] = vault.live_leases()  # stopping keeps the lease for the next controller

    vault.advance(100)
    second = await start(orders, vault)
    await eventually(lambda: vault.count(path_prefix=RENEW) == 1)
    await eventually(lambda: reconciles(second) >= 1)
    assert vault.count(method="GET", path_prefix=CREDS) == 1
    assert vault.live_leases() == [lease_id]
    assert orders.secret_data("orders-db") == data
    # The renewal at adoption moved the lease's expiry, and the records annotation follows.
    [record] = await eventually(
        lambda: [
            r
            for r in leases_of(orders, "orders-db", "orders-db")
            if r["renewed_at"] > saved["renewed_at"] + 99
        ]
    )
    assert record["lease_id"] == lease_id


async def test_records_hold_no_values(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated())
    data = await eventually(lambda: orders.secret_data("orders-db"))
    await eventually(lambda: leases_of(orders, "orders-db", "orders-db"))
    text = orders.secret("orders-db")["metadata"]["annotations"][LEASES]
    for value in data.values():
        assert value.decode() not in text
    # The status is patched after the Secret is written; wait for it before reading it.
    await eventually(lambda: orders.ready("orders-db"))
    status = json.dumps(orders.external_secret("orders-db")["status"])
    for value in data.values():
        assert value.decode() not in status


async def test_missing_generator_reported(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated("nowhere"))
    ready = await eventually(lambda: orders.ready("orders-db"))
    assert ready["status"] == "False"
    assert "VaultDynamicSecret team-a/nowhere not found" in ready["message"]
    assert orders.secret("orders-db") is None

    await apply_generator(orders, vault, "nowhere")
    await orders.patch_external_secret("orders-db", {"metadata": {"annotations": {"x": "1"}}})
    await eventually(lambda: orders.secret_data("orders-db"))


async def test_generator_status_reports_validity(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await start(orders, vault)
    await apply_generator(orders, vault)
    invalid = {
        "apiVersion": "secrets-agent.io/v1alpha1",
        "kind": "VaultDynamicSecret",
        "metadata": {"name": "broken"},
        "spec": {"path": "database/creds/orders", "method": "GET", "parameters": {"a": 1}},
    }
    await orders.call("POST", f"{API}/namespaces/team-a/vaultdynamicsecrets", invalid)

    def condition(name: str) -> dict[str, Any] | None:
        body = orders.emulator.body("secrets-agent.io/v1alpha1/vaultdynamicsecrets", "team-a", name)
        conditions = ((body or {}).get("status") or {}).get("conditions") or []
        return conditions[0] if conditions else None

    valid = await eventually(lambda: condition("orders-db"))
    assert valid["status"] == "True"
    broken = await eventually(lambda: condition("broken"))
    assert broken["status"] == "False"
    assert broken["reason"] == "InvalidProviderConfig"
    assert "spec.provider" in broken["message"]


async def test_paused_replica_hands_leases_over(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "secrets-agent"},
    }
    await orders.call("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", peering)
    election = {"standalone": False, "peering_lifetime": 3}
    first = await start(orders, vault, priority=100, **election)
    await orders.apply_external_secret("orders-db", generated())
    data = await eventually(lambda: orders.secret_data("orders-db"))
    await eventually(lambda: leases_of(orders, "orders-db", "orders-db"))
    [lease_id] = vault.live_leases()

    second = await start(orders, vault, priority=200, **election)
    await eventually(lambda: reconciles(second) >= 1, timeout=15)
    # The new leader adopted the lease (one renewal to verify it), and requested nothing new.
    await eventually(lambda: vault.count(path_prefix=RENEW) == 1)
    assert vault.count(method="GET", path_prefix=CREDS) == 1
    assert orders.secret_data("orders-db") == data

    await advance(first, vault, 450)
    second.check_leases()
    await eventually(lambda: vault.count(path_prefix=RENEW) == 2)
    await asyncio.sleep(0.5)
    assert vault.count(path_prefix=RENEW) == 2  # the paused replica no longer renews it
    assert vault.live_leases() == [lease_id]


async def test_planted_record_not_revoked(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    request = urllib.request.Request(
        f"{vault.url}/v1/database/creds/billing", headers={"X-Vault-Token": vault.root_token}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        other_lease = json.loads(response.read())["lease_id"]
    now = vault.now()
    planted = {
        "target": "team-a/orders-db",
        "entry": 0,
        "generator": "orders-db",
        "fingerprint": "sha256:planted",
        "path": "database/creds/billing",
        "kind": "lease",
        "lease_id": other_lease,
        "issued_at": now,
        "renewed_at": now,
        "expires_at": now + 600,
        "duration": 600,
        "renewable": True,
        "capped": False,
        "token_expires_at": None,
        "secret_keys": {},
        "superseded": True,
        "revoke_at": now,
    }
    secret = {
        "metadata": {
            "name": "orders-db",
            "annotations": {LEASES: json.dumps({"orders-db": [planted]})},
        },
        "data": {},
    }
    await orders.call("POST", "/api/v1/namespaces/team-a/secrets", secret)
    controller = await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated())
    await eventually(lambda: set(orders.secret_data("orders-db") or {}) == {"username", "password"})

    # Without the check of the lease id against the generator's path, the next tick would
    # revoke the planted lease.
    await advance(controller, vault, GRACE + 1)
    await asyncio.sleep(0.5)
    assert other_lease in vault.live_leases()
    assert vault.count(path_prefix="sys/leases/revoke") == 0
    records = leases_of(orders, "orders-db", "orders-db")
    assert all(record["lease_id"] != other_lease for record in records)
