"""Write policies of the controller, against the Kubernetes API emulator, moto and Vault.

Covers deletionPolicy Retain for `find` and `extract` of a path, and owner references under
creationPolicy Orphan and None. Then a changed `spec.target.name`, two Merge ExternalSecrets
writing one secret key, and Kubernetes' Secret size limit. Then a deleted VaultDynamicSecret,
and the messages for secret keys that cannot be Kubernetes Secret keys.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest

from tests.controller.conftest import API, Cluster, eventually
from tests.controller.test_controller_leases import (
    GRACE,
    advance,
    apply_generator,
    generated,
    leases_of,
    setup_vault,
    start,
)

SSM = {"aws": {"service": "ParameterStore", "region": "us-east-1"}}
ES = f"{API}/namespaces/team-a/externalsecrets"
SECRETS = "/api/v1/namespaces/team-a/secrets"
MANAGED_KEYS = "secrets-agent.io/managed-keys"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def ssm(aws: str):
    client = boto3.client("ssm", region_name="us-east-1")

    class Parameters:
        def put(self, name: str, value: str) -> None:
            client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)

        def delete(self, name: str) -> None:
            client.delete_parameter(Name=name)

    return Parameters()


@pytest.fixture
async def orders(cluster: Cluster, vault: Any) -> Cluster:
    """A cluster with the AppRole secret ID of the Vault emulator's orders role in team-a."""
    secret = {
        "metadata": {"name": "vault-approle"},
        "data": {"secret-id": base64.b64encode(b"fake-secret-id-orders").decode()},
    }
    await cluster.call("POST", SECRETS, secret)
    return cluster


def spec(*keys: tuple[str, str], interval: str = "1h", **target: Any) -> dict[str, Any]:
    return {
        "refreshInterval": interval,
        "secretStoreRef": {"name": "aws-ssm"},
        "target": target,
        "data": [{"secretKey": k, "remoteRef": {"key": r}} for k, r in keys],
    }


def imported(*entries: dict[str, Any], interval: str = "1s", **target: Any) -> dict[str, Any]:
    return {
        "refreshInterval": interval,
        "secretStoreRef": {"name": "aws-ssm"},
        "target": target,
        "dataFrom": list(entries),
    }


def failed(cluster: Cluster, name: str) -> dict[str, Any] | None:
    condition = cluster.ready(name) or {}
    return condition if condition.get("status") == "False" else None


def synced(cluster: Cluster, name: str) -> dict[str, Any] | None:
    condition = cluster.ready(name) or {}
    return condition if condition.get("status") == "True" else None


def owners_of(cluster: Cluster, secret: str) -> list[str]:
    metadata = (cluster.secret(secret) or {}).get("metadata") or {}
    return [reference["name"] for reference in metadata.get("ownerReferences") or []]


def managed(cluster: Cluster, secret: str) -> dict[str, list[str]]:
    annotations = ((cluster.secret(secret) or {}).get("metadata") or {}).get("annotations") or {}
    return json.loads(annotations.get(MANAGED_KEYS) or "{}")


async def test_retain_find_keeps_data(cluster: Cluster, ssm) -> None:
    for name in ("a", "b"):
        ssm.put(f"/find/{name}", f"fake-find-{name}")
        ssm.put(f"/path/{name}", f"fake-path-{name}")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller(cache_seconds=0.1)
    await cluster.apply_external_secret("found", imported({"find": {"path": "/find"}}))
    await cluster.apply_external_secret("extracted", imported({"extract": {"key": "/path"}}))
    full = {
        "found": {"a": b"fake-find-a", "b": b"fake-find-b"},
        "extracted": {"a": b"fake-path-a", "b": b"fake-path-b"},
    }
    for name, data in full.items():
        await eventually(lambda name=name, data=data: cluster.secret_data(name) == data)
        await eventually(lambda name=name: synced(cluster, name))

    ssm.delete("/find/a")
    ssm.delete("/path/a")
    for name in full:
        ready = await eventually(lambda name=name: failed(cluster, name))
        assert ready["reason"] == "SecretSyncedError"
        assert "'a'" in ready["message"]
        assert "deletionPolicy Retain" in ready["message"]
        assert "fake-" not in ready["message"]
        assert cluster.secret_data(name) == full[name]

    # Every remote key gone: the Secret still keeps its data. An extract whose path lists
    # nothing fails as a missing remote key.
    ssm.delete("/find/b")
    ssm.delete("/path/b")
    for name, named in (("found", "'b'"), ("extracted", "/path")):
        await eventually(
            lambda name=name, named=named: named in (failed(cluster, name) or {}).get("message", "")
        )
        assert cluster.secret_data(name) == full[name]


async def test_retain_applies_spec_change(cluster: Cluster, ssm) -> None:
    for name in ("a", "b"):
        ssm.put(f"/find/{name}", f"fake-find-{name}")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller(cache_seconds=0.1)
    await cluster.apply_external_secret("found", imported({"find": {"path": "/find"}}))
    await eventually(lambda: len(cluster.secret_data("found") or {}) == 2)
    await eventually(lambda: synced(cluster, "found"))

    # A spec change that imports fewer keys is applied, not reported as missing keys.
    narrowed = {"find": {"path": "/find", "name": {"regexp": "b$"}}}
    await cluster.patch_external_secret("found", {"spec": imported(narrowed)})
    await eventually(lambda: cluster.secret_data("found") == {"b": b"fake-find-b"})
    await eventually(lambda: synced(cluster, "found"))


async def test_merge_deletion_drops_found_keys(cluster: Cluster, ssm) -> None:
    for name in ("a", "b"):
        ssm.put(f"/find/{name}", f"fake-find-{name}")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller(cache_seconds=0.1)
    entry = {"find": {"path": "/find"}}
    await cluster.apply_external_secret("found", imported(entry, deletionPolicy="Merge"))
    await eventually(lambda: len(cluster.secret_data("found") or {}) == 2)
    ssm.delete("/find/a")
    await eventually(lambda: cluster.secret_data("found") == {"b": b"fake-find-b"})
    await eventually(lambda: synced(cluster, "found"))


async def test_orphan_switch_drops_owner_reference(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    keeper = await cluster.call(
        "POST", "/api/v1/namespaces/team-a/configmaps", {"metadata": {"name": "keeper"}}
    )
    uid = keeper["metadata"]["uid"]
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": uid}
    await cluster.apply_external_secret("orphan", spec(("a", "/app/a")))
    await cluster.apply_external_secret("none", spec(("a", "/app/a")))
    await eventually(lambda: owners_of(cluster, "orphan") == ["orphan"])
    await eventually(lambda: owners_of(cluster, "none") == ["none"])
    # Someone else's owner reference stays.
    reference = cluster.secret("orphan")["metadata"]["ownerReferences"][0]
    patch = {"metadata": {"ownerReferences": [foreign, reference]}}
    await cluster.call("PATCH", f"{SECRETS}/orphan", patch, headers=MERGE_PATCH)

    for name, policy in (("orphan", "Orphan"), ("none", "None")):
        changed = {"spec": {"target": {"creationPolicy": policy}}}
        await cluster.patch_external_secret(name, changed)
    await eventually(lambda: owners_of(cluster, "orphan") == ["keeper"])
    await eventually(lambda: owners_of(cluster, "none") == [])

    for name in ("orphan", "none"):
        await cluster.call("DELETE", f"{ES}/{name}")
        await eventually(lambda name=name: cluster.external_secret(name) is None)
    # Give the emulator's garbage collector a chance to run: nothing collects these Secrets.
    await cluster.apply_external_secret("probe", spec(("a", "/app/a")))
    await eventually(lambda: cluster.secret_data("probe"))
    assert cluster.secret_data("orphan") == {"a": b"fake-a"}
    assert cluster.secret_data("none") == {"a": b"fake-a"}


async def test_renamed_target_releases_old(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    shared = {
        "metadata": {"name": "shared"},
        "data": {"foreign": base64.b64encode(b"fake-foreign").decode()},
    }
    await cluster.call("POST", SECRETS, shared)
    await cluster.call("POST", SECRETS, {"metadata": {"name": "merged-two"}, "data": {}})
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    await cluster.apply_external_secret("owned", spec(("a", "/app/a"), name="owned-one"))
    orphan = spec(("a", "/app/a"), name="orphan-one", creationPolicy="Orphan")
    await cluster.apply_external_secret("orphan", orphan)
    merged = spec(("a", "/app/a"), name="shared", creationPolicy="Merge")
    await cluster.apply_external_secret("merged", merged)
    await eventually(lambda: cluster.secret_data("owned-one"))
    await eventually(lambda: cluster.secret_data("orphan-one"))
    await eventually(lambda: len(cluster.secret_data("shared") or {}) == 2)

    for name in ("owned", "orphan", "merged"):
        await cluster.patch_external_secret(name, {"spec": {"target": {"name": f"{name}-two"}}})
    await eventually(lambda: cluster.secret_data("merged-two") == {"a": b"fake-a"})

    # Owner: the old Secret was ours, so it is deleted.
    await eventually(lambda: cluster.secret("owned-one") is None)
    assert cluster.secret_data("owned-two") == {"a": b"fake-a"}
    # Orphan: the old Secret keeps its data and loses the managed markers.
    await eventually(lambda: managed(cluster, "orphan-one") == {})
    assert cluster.secret_data("orphan-one") == {"a": b"fake-a"}
    labels = cluster.secret("orphan-one")["metadata"].get("labels") or {}
    assert "secrets-agent.io/managed" not in labels
    # Merge: the old Secret loses the ExternalSecret's keys and its managed-keys entry.
    await eventually(lambda: cluster.secret_data("shared") == {"foreign": b"fake-foreign"})
    assert managed(cluster, "shared") == {}
    for name in ("owned", "orphan", "merged"):
        await eventually(lambda name=name: synced(cluster, name))


async def test_retargeted_merge_leaves_host(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    ssm.put("/app/b", "fake-b")
    await cluster.call("POST", SECRETS, {"metadata": {"name": "elsewhere"}, "data": {}})
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    await cluster.apply_external_secret("host", spec(("a", "/app/a")))
    await eventually(lambda: cluster.secret_data("host"))
    guest = spec(("b", "/app/b"), name="host", creationPolicy="Merge")
    await cluster.apply_external_secret("guest", guest)
    await eventually(lambda: cluster.secret_data("host") == {"a": b"fake-a", "b": b"fake-b"})

    # The guest merged into a Secret that another ExternalSecret owns: moving it elsewhere
    # takes its key out, although the Secret was created by the controller.
    await cluster.patch_external_secret("guest", {"spec": {"target": {"name": "elsewhere"}}})
    await eventually(lambda: cluster.secret_data("elsewhere") == {"b": b"fake-b"})
    await eventually(lambda: cluster.secret_data("host") == {"a": b"fake-a"})
    assert managed(cluster, "host") == {"host": ["a"]}
    assert owners_of(cluster, "host") == ["host"]


async def test_merge_clash_reported(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    ssm.put("/app/b", "fake-b")
    ssm.put("/app/c", "fake-c")
    shared = {"metadata": {"name": "shared"}, "data": {}}
    await cluster.call("POST", SECRETS, shared)
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    first = spec(("key", "/app/a"), name="shared", creationPolicy="Merge")
    await cluster.apply_external_secret("first", first)
    await eventually(lambda: cluster.secret_data("shared") == {"key": b"fake-a"})
    second = spec(("key", "/app/b"), ("own", "/app/c"), name="shared", creationPolicy="Merge")
    await cluster.apply_external_secret("second", second)

    ready = await eventually(lambda: failed(cluster, "second"))
    assert "'key'" in ready["message"]
    assert "ExternalSecret first" in ready["message"]
    await eventually(lambda: cluster.secret_data("shared") == {"key": b"fake-a", "own": b"fake-c"})
    assert managed(cluster, "shared") == {"first": ["key"], "second": ["own"]}
    await eventually(lambda: synced(cluster, "first"))

    # Once the first writer is gone, the second one takes the key over.
    await cluster.call("DELETE", f"{ES}/first")
    await cluster.patch_external_secret("second", {"metadata": {"annotations": {"sync": "1"}}})
    await eventually(lambda: cluster.secret_data("shared") == {"key": b"fake-b", "own": b"fake-c"})
    await eventually(lambda: synced(cluster, "second"))


async def test_oversized_secret_reported(cluster: Cluster, vault: Any) -> None:
    vault.kv_put("secret", "huge", {"blob": "x" * (1536 * 1024), "small": "fake-small"})
    token_secret = {
        "metadata": {"name": "vault-token"},
        "data": {"token": base64.b64encode(b"root-token-fake").decode()},
    }
    await cluster.call("POST", SECRETS, token_secret)
    provider = {
        "vault": {
            "server": vault.url,
            "path": "secret",
            "auth": {"tokenSecretRef": {"name": "vault-token", "key": "token"}},
        }
    }
    await cluster.apply_store("vault", provider)
    await cluster.start_controller()
    body = {"secretStoreRef": {"name": "vault"}, "dataFrom": [{"extract": {"key": "huge"}}]}
    await cluster.apply_external_secret("huge", body)
    ready = await eventually(lambda: failed(cluster, "huge"))
    assert "1024 KiB" in ready["message"]
    assert "'blob' (1536 KiB)" in ready["message"]
    assert "Split the ExternalSecret" in ready["message"]
    assert "413" not in ready["message"]
    assert cluster.secret("huge") is None

    # Below the estimate's limit, but larger than the emulator's 1 MiB request limit once the
    # value is in base64: the API server's 413 comes with the fix.
    vault.kv_put("secret", "large", {"blob": "y" * (900 * 1024)})
    body = {"secretStoreRef": {"name": "vault"}, "dataFrom": [{"extract": {"key": "large"}}]}
    await cluster.apply_external_secret("large", body)
    ready = await eventually(lambda: failed(cluster, "large"))
    assert "413" in ready["message"]
    assert "split the ExternalSecret" in ready["message"]


async def test_deleted_generator_keeps_lease(orders: Cluster, vault: Any) -> None:
    setup_vault(vault)
    await apply_generator(orders, vault)
    controller = await start(orders, vault)
    await orders.apply_external_secret("orders-db", generated())
    data = await eventually(lambda: orders.secret_data("orders-db"))
    [lease] = vault.live_leases()
    await eventually(lambda: synced(orders, "orders-db"))

    generator = f"{API}/namespaces/team-a/vaultdynamicsecrets/orders-db"
    await orders.call("DELETE", generator)
    ready = await eventually(lambda: failed(orders, "orders-db"))
    assert "VaultDynamicSecret team-a/orders-db not found" in ready["message"]
    await advance(controller, vault, GRACE + 1)
    # Renewed with the client that issued it (about 2/3 into its TTL), and never revoked.
    await advance(controller, vault, 400)
    await eventually(lambda: vault.count(method="PUT", path_prefix="sys/leases/renew") >= 1)
    assert vault.live_leases() == [lease]
    assert orders.secret_data("orders-db") == data
    assert [record["lease_id"] for record in leases_of(orders, "orders-db", "orders-db")] == [lease]

    # Recreated: the ExternalSecret is reconciled at once and keeps the same credentials. After
    # three failures its backoff is at least 4 s, so a sync within 3 s comes from the wake-up.
    tracked = controller.tracked[("team-a", "orders-db")]
    await eventually(lambda: tracked.failures >= 3, timeout=30)
    await apply_generator(orders, vault)
    await eventually(lambda: synced(orders, "orders-db"), timeout=3)
    assert orders.secret_data("orders-db") == data
    assert vault.live_leases() == [lease]

    # Deleting the ExternalSecret still revokes the lease after the grace.
    await orders.call("DELETE", f"{ES}/orders-db")
    await eventually(lambda: orders.external_secret("orders-db") is None)
    # Released (its expiry gauge gone) before the clock moves, so the grace starts before.
    gauge = "secrets_agent_lease_expiry_timestamp_seconds"
    await eventually(
        lambda: (
            controller.metrics.registry.get_sample_value(gauge, {"target": "team-a/orders-db"})
            is None
        )
    )
    await advance(controller, vault, GRACE + 1)
    await eventually(lambda: vault.live_leases() == [])


async def test_key_messages_fit_controller(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    await cluster.apply_external_secret("slash", spec(("a/b", "/app/a")))
    templated = spec(("v", "/app/a"), template={"data": {"my file.conf": "x={{ v }}"}})
    await cluster.apply_external_secret("templated", templated)

    ready = await eventually(lambda: failed(cluster, "slash"))
    assert "--nested-keys" not in ready["message"]
    assert "nested keys are off" not in ready["message"]
    assert "cannot contain '/'" in ready["message"]

    ready = await eventually(lambda: failed(cluster, "templated"))
    assert "spec.target.template.data" in ready["message"]
    assert "'my file.conf'" in ready["message"]
    assert "rewrite" not in ready["message"]
    assert cluster.secret("templated") is None
