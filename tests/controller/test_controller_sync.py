"""The controller against the Kubernetes API emulator and moto's server, over HTTP.

Covers create, update on a spec change, refresh without a write when nothing changed, drift
repair, the creation and deletion policies, Merge with foreign keys, and template metadata.
"""

from __future__ import annotations

import base64
import json

import boto3
import pytest

from tests.controller.conftest import Cluster, eventually

SSM = {"aws": {"service": "ParameterStore", "region": "us-east-1"}}
SECRETS = "/api/v1/namespaces/team-a/secrets"
MERGE = {"Content-Type": "application/merge-patch+json"}
ES = "/apis/secrets-agent.io/v1alpha1/namespaces/team-a/externalsecrets"


@pytest.fixture
def ssm(aws: str):
    client = boto3.client("ssm", region_name="us-east-1")

    class Parameters:
        def put(self, name: str, value: str) -> None:
            client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)

        def delete(self, name: str) -> None:
            client.delete_parameter(Name=name)

    return Parameters()


def spec(*keys: tuple[str, str], interval: str = "1h", **extra) -> dict:
    return {
        "refreshInterval": interval,
        "secretStoreRef": {"name": "aws-ssm"},
        "data": [{"secretKey": k, "remoteRef": {"key": r}} for k, r in keys],
        **extra,
    }


def target(**fields) -> dict:
    return {"target": fields}


def failed(cluster: Cluster, name: str) -> dict | None:
    condition = cluster.ready(name) or {}
    return condition if condition.get("status") == "False" else None


async def synced(cluster: Cluster, name: str) -> dict:
    """Wait until the ExternalSecret reports Ready=True and return the condition."""
    return await eventually(
        lambda: (cluster.ready(name) or {}).get("status") == "True" and cluster.ready(name)
    )


async def test_creates_secret_with_owner(cluster: Cluster, ssm) -> None:
    ssm.put("/app/db-password", "fake-db-password-1")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    es = await cluster.apply_external_secret("app", spec(("db-password", "/app/db-password")))
    data = await eventually(lambda: cluster.secret_data("app"))
    assert data == {"db-password": b"fake-db-password-1"}
    secret = cluster.secret("app")
    owner = secret["metadata"]["ownerReferences"][0]
    assert owner["uid"] == es["metadata"]["uid"]
    assert owner["controller"] is True
    labels = secret["metadata"]["labels"]
    assert labels["secrets-agent.io/managed"] == "true"
    assert labels["app.kubernetes.io/managed-by"] == "secrets-agent"
    annotations = secret["metadata"]["annotations"]
    assert annotations["reloader.stakater.com/match"] == "true"
    assert len(annotations["secrets-agent.io/data-hash"]) == 64
    assert json.loads(annotations["secrets-agent.io/managed-keys"]) == {"app": ["db-password"]}
    ready = await synced(cluster, "app")
    assert ready["reason"] == "SecretSynced"
    status = cluster.external_secret("app")["status"]
    assert status["refreshTime"]
    assert status["syncedResourceVersion"].startswith("1-")


async def test_spec_and_metadata_untouched(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    applied = spec(("a", "/app/a"))
    await cluster.apply_external_secret("app", applied, annotations={"team": "payments"})
    await synced(cluster, "app")
    es = cluster.external_secret("app")
    assert es["spec"] == applied  # no defaults written back
    assert es["metadata"]["annotations"] == {"team": "payments"}
    assert es["metadata"]["generation"] == 1
    assert es["metadata"]["finalizers"] == ["secrets-agent.io/finalizer"]


async def test_spec_change_applies_at_once(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    ssm.put("/app/b", "fake-b")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    await cluster.apply_external_secret("app", spec(("a", "/app/a")))
    await eventually(lambda: cluster.secret_data("app"))
    await cluster.patch_external_secret("app", {"spec": spec(("a", "/app/a"), ("b", "/app/b"))})
    await eventually(lambda: cluster.secret_data("app") == {"a": b"fake-a", "b": b"fake-b"})
    await cluster.patch_external_secret("app", {"spec": spec(("a", "/app/a"))})
    await eventually(lambda: cluster.secret_data("app") == {"a": b"fake-a"})


async def test_refresh_writes_only_changes(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a-1")
    await cluster.apply_store("aws-ssm", SSM)
    controller = await cluster.start_controller(cache_seconds=0.1)
    await cluster.apply_external_secret("app", spec(("a", "/app/a"), interval="1s"))
    await eventually(lambda: cluster.secret_data("app"))
    version = cluster.secret("app")["metadata"]["resourceVersion"]
    unchanged = controller.metrics.reconcile_total.labels("unchanged")
    await eventually(lambda: unchanged._value.get() >= 2, timeout=10)
    assert cluster.secret("app")["metadata"]["resourceVersion"] == version
    assert cluster.writes_to("secrets", "app") == 1  # the create, nothing after it
    ssm.put("/app/a", "fake-a-2")
    await eventually(lambda: cluster.secret_data("app") == {"a": b"fake-a-2"})
    assert cluster.writes_to("secrets", "app") == 2


async def test_drift_repair(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    await cluster.apply_external_secret("app", spec(("a", "/app/a")))
    await eventually(lambda: cluster.secret_data("app"))

    tampered = {"data": {"a": base64.b64encode(b"fake-tampered").decode(), "extra": "eA=="}}
    await cluster.call("PATCH", f"{SECRETS}/app", tampered, headers=MERGE)
    await eventually(lambda: cluster.secret_data("app") == {"a": b"fake-a"})

    unlabel = {"metadata": {"labels": {"secrets-agent.io/managed": None}}}
    await cluster.call("PATCH", f"{SECRETS}/app", unlabel, headers=MERGE)
    await eventually(
        lambda: (
            cluster.secret("app")["metadata"]["labels"].get("secrets-agent.io/managed") == "true"
        )
    )

    first_uid = cluster.secret("app")["metadata"]["uid"]
    await cluster.call("DELETE", f"{SECRETS}/app")
    await eventually(
        lambda: (
            (cluster.secret("app") or {}).get("metadata", {}).get("uid") not in (None, first_uid)
        )
    )
    assert cluster.secret_data("app") == {"a": b"fake-a"}


async def test_deleted_es_owner_and_orphan(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    await cluster.apply_external_secret("owned", spec(("a", "/app/a")))
    orphan = spec(("a", "/app/a"), **target(creationPolicy="Orphan"))
    await cluster.apply_external_secret("orphan", orphan)
    await eventually(lambda: cluster.secret_data("owned") and cluster.secret_data("orphan"))
    assert "ownerReferences" not in cluster.secret("orphan")["metadata"]
    for name in ("owned", "orphan"):
        await cluster.call("DELETE", f"{ES}/{name}")
    await eventually(lambda: cluster.external_secret("orphan") is None)
    await eventually(lambda: cluster.secret("owned") is None)  # garbage-collected
    assert cluster.secret_data("orphan") == {"a": b"fake-a"}


async def test_merge_keeps_foreign_keys(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    ssm.put("/app/b", "fake-b")
    foreign = {
        "metadata": {"name": "shared", "labels": {"app.kubernetes.io/managed-by": "Helm"}},
        "data": {"foreign": base64.b64encode(b"fake-foreign").decode()},
    }
    await cluster.call("POST", SECRETS, foreign)
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    merged = spec(("a", "/app/a"), ("b", "/app/b"), **target(name="shared", creationPolicy="Merge"))
    await cluster.apply_external_secret("app", merged)
    await eventually(lambda: len(cluster.secret_data("shared")) == 3)
    secret = cluster.secret("shared")
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert "ownerReferences" not in secret["metadata"]
    reduced = spec(("a", "/app/a"), **target(name="shared", creationPolicy="Merge"))
    await cluster.patch_external_secret("app", {"spec": reduced})
    await eventually(
        lambda: cluster.secret_data("shared") == {"foreign": b"fake-foreign", "a": b"fake-a"}
    )
    await cluster.call("DELETE", f"{ES}/app")
    await eventually(lambda: cluster.secret_data("shared") == {"foreign": b"fake-foreign"})
    labels = cluster.secret("shared")["metadata"]["labels"]
    assert "secrets-agent.io/managed" not in labels


async def test_creation_policy_limits(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    foreign = {"metadata": {"name": "taken"}, "data": {"x": base64.b64encode(b"fake-x").decode()}}
    await cluster.call("POST", SECRETS, foreign)
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    merge = spec(("a", "/app/a"), **target(creationPolicy="Merge"))
    await cluster.apply_external_secret("merge", merge)
    await cluster.apply_external_secret(
        "none", spec(("a", "/app/a"), **target(creationPolicy="None"))
    )
    await cluster.apply_external_secret("owner", spec(("a", "/app/a"), **target(name="taken")))

    ready = await eventually(lambda: cluster.ready("merge"))
    assert ready["status"] == "False"
    assert "does not exist" in ready["message"]
    assert cluster.secret("merge") is None

    await synced(cluster, "none")
    assert cluster.secret("none") is None

    # Owner takes over a Secret without a controller reference, as External Secrets Operator
    # does: the data becomes the snapshot and the owner reference is added.
    await eventually(lambda: cluster.secret_data("taken") == {"a": b"fake-a"})
    taken = cluster.secret("taken")
    [reference] = taken["metadata"]["ownerReferences"]
    assert reference["name"] == "owner"
    assert reference["controller"] is True
    assert taken["metadata"]["labels"]["secrets-agent.io/managed"] == "true"
    ready = await synced(cluster, "owner")
    assert ready["reason"] == "SecretSynced"


async def test_owner_respects_other_controller(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    controlled = {
        "metadata": {
            "name": "controlled",
            "ownerReferences": [
                {
                    "apiVersion": "bitnami.com/v1alpha1",
                    "kind": "SealedSecret",
                    "name": "controlled",
                    "uid": "7a3c1d4e-0000-4000-8000-000000000001",
                    "controller": True,
                }
            ],
        },
        "data": {"x": base64.b64encode(b"fake-x").decode()},
    }
    await cluster.call("POST", SECRETS, controlled)
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    await cluster.apply_external_secret("owner", spec(("a", "/app/a"), **target(name="controlled")))
    ready = await eventually(lambda: failed(cluster, "owner"))
    assert "controlled by SealedSecret controlled" in ready["message"]
    assert cluster.secret_data("controlled") == {"x": b"fake-x"}
    assert len(cluster.secret("controlled")["metadata"]["ownerReferences"]) == 1


async def test_template_type_and_metadata(cluster: Cluster, ssm) -> None:
    ssm.put("/app/user", "fake-user")
    ssm.put("/app/pass", "fake-pass")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    template = {
        "type": "kubernetes.io/basic-auth",
        "metadata": {"labels": {"tier": "db"}, "annotations": {"owner": "payments"}},
    }
    declared = spec(
        ("username", "/app/user"),
        ("password", "/app/pass"),
        **target(template=template, immutable=True),
    )
    await cluster.apply_external_secret("app", declared)
    await eventually(lambda: cluster.secret_data("app"))
    secret = cluster.secret("app")
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert secret["immutable"] is True
    assert secret["metadata"]["labels"]["tier"] == "db"
    assert secret["metadata"]["annotations"]["owner"] == "payments"


async def test_deletion_policies(cluster: Cluster, ssm) -> None:
    for name in ("retain", "delete", "merge-a", "merge-b"):
        ssm.put(f"/app/{name}", f"fake-{name}")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller(cache_seconds=0.1)
    await cluster.apply_external_secret("retain", spec(("v", "/app/retain"), interval="1s"))
    deleting = spec(("v", "/app/delete"), interval="1s", **target(deletionPolicy="Delete"))
    await cluster.apply_external_secret("delete", deleting)
    merging = spec(
        ("a", "/app/merge-a"),
        ("b", "/app/merge-b"),
        interval="1s",
        **target(deletionPolicy="Merge"),
    )
    await cluster.apply_external_secret("merge", merging)
    await eventually(lambda: all(cluster.secret_data(n) for n in ("retain", "delete", "merge")))
    for name in ("retain", "delete", "merge-b"):
        ssm.delete(f"/app/{name}")

    ready = await eventually(lambda: failed(cluster, "retain"))
    assert ready["reason"] == "SecretSyncedError"
    assert "/app/retain" in ready["message"]
    assert cluster.secret_data("retain") == {"v": b"fake-retain"}

    await eventually(lambda: cluster.secret("delete") is None)
    await eventually(lambda: (cluster.ready("delete") or {}).get("reason") == "SecretDeleted")

    await eventually(lambda: cluster.secret_data("merge") == {"a": b"fake-merge-a"})
    ready = await synced(cluster, "merge")
    assert ready["reason"] == "SecretSynced"


async def test_events_posted(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    await cluster.apply_external_secret("app", spec(("a", "/app/a")))
    await synced(cluster, "app")

    def reasons() -> list[str]:
        return [
            obj.raw.get("reason")
            for (res, _, _), obj in cluster.emulator.objects.items()
            if res.plural == "events" and not obj.deleted
        ]

    assert await eventually(lambda: "Created" in reasons())


async def test_type_change_recreates_secret(cluster: Cluster, ssm) -> None:
    ssm.put("/app/user", "fake-user")
    ssm.put("/app/pass", "fake-pass")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    keys = (("username", "/app/user"), ("password", "/app/pass"))
    es = await cluster.apply_external_secret("app", spec(*keys))
    await eventually(lambda: cluster.secret_data("app"))
    first = cluster.secret("app")
    assert first["type"] == "Opaque"
    labelled = {"metadata": {"labels": {"team": "payments"}}}
    await cluster.call("PATCH", f"{SECRETS}/app", labelled, headers=MERGE)

    template = {"type": "kubernetes.io/basic-auth"}
    await cluster.patch_external_secret("app", {"spec": spec(*keys, **target(template=template))})
    await eventually(
        lambda: (cluster.secret("app") or {}).get("type") == "kubernetes.io/basic-auth"
    )
    second = cluster.secret("app")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    [reference] = second["metadata"]["ownerReferences"]
    assert reference["uid"] == es["metadata"]["uid"]
    assert second["metadata"]["labels"]["team"] == "payments"
    assert cluster.secret_data("app") == {"username": b"fake-user", "password": b"fake-pass"}
    await synced(cluster, "app")


async def test_immutable_secret_recreated(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a-1")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller(cache_seconds=0.1)
    declared = spec(("a", "/app/a"), interval="1s", **target(immutable=True))
    es = await cluster.apply_external_secret("app", declared)
    await eventually(lambda: cluster.secret_data("app"))
    first = cluster.secret("app")
    assert first["immutable"] is True

    ssm.put("/app/a", "fake-a-2")
    await eventually(lambda: cluster.secret_data("app") == {"a": b"fake-a-2"})
    second = cluster.secret("app")
    assert second["immutable"] is True
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert second["metadata"]["ownerReferences"][0]["uid"] == es["metadata"]["uid"]
    assert (cluster.ready("app") or {}).get("status") != "False"


async def test_merge_keeps_immutable_secret(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    frozen = {
        "metadata": {"name": "frozen"},
        "data": {"x": base64.b64encode(b"fake-x").decode()},
        "immutable": True,
    }
    await cluster.call("POST", SECRETS, frozen)
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    merging = spec(("a", "/app/a"), **target(name="frozen", creationPolicy="Merge"))
    await cluster.apply_external_secret("merge", merging)
    ready = await eventually(lambda: failed(cluster, "merge"))
    assert "immutable" in ready["message"]
    assert "never deletes the Secret" in ready["message"]
    assert cluster.secret_data("frozen") == {"x": b"fake-x"}


async def test_removed_template_metadata_removed(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    template = {
        "metadata": {
            "labels": {"tier": "db", "app": "orders"},
            "annotations": {"owner": "payments", "note": "kept"},
        }
    }
    await cluster.apply_external_secret("app", spec(("a", "/app/a"), **target(template=template)))
    await eventually(lambda: cluster.secret_data("app"))
    others = {"metadata": {"labels": {"team": "a"}, "annotations": {"reviewed": "yes"}}}
    await cluster.call("PATCH", f"{SECRETS}/app", others, headers=MERGE)

    # A JSON merge patch removes a map entry with null.
    smaller = {"metadata": {"labels": {"tier": None}, "annotations": {"owner": None}}}
    await cluster.patch_external_secret("app", {"spec": target(template=smaller)})
    await eventually(lambda: "tier" not in cluster.secret("app")["metadata"]["labels"])
    metadata = cluster.secret("app")["metadata"]
    assert metadata["labels"]["app"] == "orders"
    assert metadata["labels"]["team"] == "a"
    assert "owner" not in metadata["annotations"]
    assert metadata["annotations"]["note"] == "kept"
    assert metadata["annotations"]["reviewed"] == "yes"
    recorded = json.loads(metadata["annotations"]["secrets-agent.io/template-metadata"])
    assert recorded == {"app": {"labels": ["app"], "annotations": ["note"]}}

    await cluster.patch_external_secret("app", {"spec": {"target": None}})
    await eventually(lambda: "app" not in cluster.secret("app")["metadata"]["labels"])
    metadata = cluster.secret("app")["metadata"]
    assert "note" not in metadata["annotations"]
    assert "secrets-agent.io/template-metadata" not in metadata["annotations"]
    assert metadata["labels"]["team"] == "a"


async def test_merge_removes_template_metadata(cluster: Cluster, ssm) -> None:
    ssm.put("/app/a", "fake-a")
    await cluster.call("POST", SECRETS, {"metadata": {"name": "shared", "labels": {"k": "v"}}})
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    template = {"metadata": {"labels": {"tier": "db"}}}
    merging = spec(
        ("a", "/app/a"), **target(name="shared", creationPolicy="Merge", template=template)
    )
    await cluster.apply_external_secret("app", merging)
    await eventually(lambda: cluster.secret("shared")["metadata"]["labels"].get("tier") == "db")
    await cluster.call("DELETE", f"{ES}/app")
    await eventually(lambda: "tier" not in cluster.secret("shared")["metadata"]["labels"])
    assert cluster.secret("shared")["metadata"]["labels"] == {"k": "v"}
