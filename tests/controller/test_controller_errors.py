"""Failures: store errors keep the Secret, invalid declarations, namespace boundaries, no leaks."""

from __future__ import annotations

import base64
import json

import boto3
import pytest

from tests.controller.conftest import Cluster, eventually

SSM = {"aws": {"service": "ParameterStore", "region": "us-east-1"}}
FAKE_VALUES = ("fake-db-password-1", "fake-api-key-2")


@pytest.fixture
def ssm(aws: str):
    client = boto3.client("ssm", region_name="us-east-1")

    def put(name: str, value: str) -> None:
        client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)

    return put


def es_spec(key: str, *, store: str = "aws-ssm", kind: str = "SecretStore", **extra) -> dict:
    return {
        "refreshInterval": "1h",
        "secretStoreRef": {"name": store, "kind": kind},
        "data": [{"secretKey": "value", "remoteRef": {"key": key, **extra}}],
    }


def failed(cluster: Cluster, name: str, namespace: str = "team-a"):
    condition = cluster.ready(name, namespace) or {}
    return condition if condition.get("status") == "False" else None


def assert_no_values(cluster: Cluster) -> None:
    """No fake value appears in any ExternalSecret, store or event the controller wrote."""
    for (res, _, _), obj in cluster.emulator.objects.items():
        if res.plural in ("externalsecrets", "secretstores", "clustersecretstores", "events"):
            if obj.deleted:
                continue
            text = json.dumps(obj.raw)
            for value in FAKE_VALUES:
                assert value not in text, f"{res.plural} contains a secret value"
                assert base64.b64encode(value.encode()).decode() not in text


async def test_store_error_keeps_secret(cluster: Cluster, vault) -> None:
    vault.kv_put("secret", "app", {"password": "fake-db-password-1"})
    token_secret = {
        "metadata": {"name": "vault-token"},
        "data": {"token": base64.b64encode(b"root-token-fake").decode()},
    }
    await cluster.call("POST", "/api/v1/namespaces/team-a/secrets", token_secret)
    provider = {
        "vault": {
            "server": vault.url,
            "path": "secret",
            "auth": {"tokenSecretRef": {"name": "vault-token", "key": "token"}},
        }
    }
    await cluster.apply_store("vault", provider)
    await cluster.start_controller(cache_seconds=0.1)
    spec = es_spec("app", store="vault", property="password")
    spec["refreshInterval"] = "1s"
    await cluster.apply_external_secret("app", spec)
    await eventually(lambda: cluster.secret_data("app") == {"value": b"fake-db-password-1"})
    version = cluster.secret("app")["metadata"]["resourceVersion"]
    vault.seal()
    condition = await eventually(lambda: failed(cluster, "app"))
    assert condition["reason"] == "SecretSyncedError"
    assert "seal" in condition["message"].lower()
    assert cluster.secret("app")["metadata"]["resourceVersion"] == version
    assert cluster.secret_data("app") == {"value": b"fake-db-password-1"}
    assert_no_values(cluster)
    vault.unseal()
    await eventually(lambda: (cluster.ready("app") or {}).get("status") == "True")


async def test_invalid_declarations_reported(cluster: Cluster, ssm) -> None:
    ssm("/app/a", "fake-db-password-1")
    ssm("/app/settings", json.dumps({"api key": "fake-api-key-2"}))
    await cluster.apply_store("aws-ssm", SSM)
    controller = await cluster.start_controller()
    imported = {
        "refreshInterval": "1h",
        "secretStoreRef": {"name": "aws-ssm"},
        "dataFrom": [{"extract": {"key": "/app/settings"}}],
    }
    await cluster.apply_external_secret("imported", imported)
    typo = es_spec("/app/a")
    typo["target"] = {"tempalte": {}}
    await cluster.apply_external_secret("typo", typo)
    bad_key = es_spec("/app/a")
    bad_key["data"][0]["secretKey"] = "db password"
    await cluster.apply_external_secret("bad-key", bad_key)
    unsupported = es_spec("/app/a")
    unsupported["dataFrom"] = [{"find": {"tags": {"team": "x"}}}]
    await cluster.apply_external_secret("unsupported", unsupported)
    condition = await eventually(lambda: failed(cluster, "typo"))
    assert "spec.target.tempalte" in condition["message"]
    assert "did you mean template" in condition["message"]
    condition = await eventually(lambda: failed(cluster, "bad-key"))
    assert "spec.data[0].secretKey" in condition["message"]
    condition = await eventually(lambda: failed(cluster, "unsupported"))
    assert "find.tags" in condition["message"]
    condition = await eventually(lambda: failed(cluster, "imported"))
    assert "'api key'" in condition["message"]
    assert "rewrite" in condition["message"]
    assert cluster.secret("typo") is None
    assert_no_values(cluster)
    requests = controller.metrics.backend_requests.labels(
        "team-a/aws-ssm", "GetParameters", "success"
    )
    # Only the valid ExternalSecret was fetched; the invalid ones were rejected before.
    assert requests._value.get() == 1


async def test_namespace_boundaries(cluster: Cluster, ssm) -> None:
    ssm("/app/a", "fake-db-password-1")
    await cluster.create_namespace("team-c", {"tier": "trusted"})
    keys = {
        "metadata": {"name": "aws-keys"},
        "data": {
            "id": base64.b64encode(b"testing-fake-key-id").decode(),
            "secret": base64.b64encode(b"testing-fake-secret-key").decode(),
        },
    }
    await cluster.call("POST", "/api/v1/namespaces/team-b/secrets", keys)
    other_namespace = {"name": "aws-keys", "namespace": "team-b"}
    borrowing = {
        "aws": {
            "service": "ParameterStore",
            "region": "us-east-1",
            "auth": {
                "secretRef": {
                    "accessKeyIDSecretRef": {**other_namespace, "key": "id"},
                    "secretAccessKeySecretRef": {**other_namespace, "key": "secret"},
                }
            },
        }
    }
    await cluster.apply_store("aws-ssm", SSM, namespace="team-a")
    await cluster.apply_store("borrowing", borrowing, namespace="team-a")
    conditions = [
        {"namespaces": ["team-a"]},
        {"namespaceSelector": {"matchLabels": {"tier": "trusted"}}},
    ]
    await cluster.apply_store("shared", SSM, namespace=None, conditions=conditions)
    await cluster.start_controller()

    # A SecretStore serves only ExternalSecrets of its own namespace.
    await cluster.apply_external_secret("app", es_spec("/app/a"), namespace="team-b")
    condition = await eventually(lambda: failed(cluster, "app", "team-b"))
    assert "not found in namespace team-b" in condition["message"]
    assert cluster.secret("app", "team-b") is None

    # A SecretStore reads references only in its own namespace.
    await cluster.apply_external_secret("borrow", es_spec("/app/a", store="borrowing"))
    condition = await eventually(lambda: failed(cluster, "borrow"))
    assert "reads references only in its own namespace" in condition["message"]

    # A ClusterSecretStore serves the namespaces its conditions admit.
    shared = es_spec("/app/a", store="shared", kind="ClusterSecretStore")
    for namespace in ("team-a", "team-b", "team-c"):
        await cluster.apply_external_secret("shared", shared, namespace=namespace)
    await eventually(lambda: cluster.secret_data("shared", "team-a"))
    await eventually(lambda: cluster.secret_data("shared", "team-c"))
    condition = await eventually(lambda: failed(cluster, "shared", "team-b"))
    assert "does not serve namespace team-b" in condition["message"]
    assert cluster.secret("shared", "team-b") is None


async def test_store_references_read_through_api(cluster: Cluster, ssm) -> None:
    ssm("/app/a", "fake-db-password-1")
    keys = {
        "metadata": {"name": "aws-keys"},
        "data": {
            "id": base64.b64encode(b"testing-fake-key-id").decode(),
            "secret": base64.b64encode(b"testing-fake-secret-key").decode(),
        },
    }
    await cluster.call("POST", "/api/v1/namespaces/team-a/secrets", keys)
    provider = {
        "aws": {
            "service": "ParameterStore",
            "region": "us-east-1",
            "auth": {
                "secretRef": {
                    "accessKeyIDSecretRef": {"name": "aws-keys", "key": "id"},
                    "secretAccessKeySecretRef": {"name": "aws-keys", "key": "secret"},
                }
            },
        }
    }
    await cluster.apply_store("aws-ssm", provider)
    await cluster.start_controller()
    await cluster.apply_external_secret("app", es_spec("/app/a"))
    await eventually(lambda: cluster.secret_data("app") == {"value": b"fake-db-password-1"})


async def test_status_write_failures_back_off(cluster: Cluster, ssm, monkeypatch) -> None:
    failures_seen: list[int] = []

    def backoff(failures: int) -> float:
        failures_seen.append(failures)
        return 0.05

    monkeypatch.setattr("agent.controller.reconcile.backoff_delay", backoff)
    ssm("/app/db", "fake-db-password-1")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    store = "secrets-agent.io/v1alpha1/secretstores"
    await eventually(
        lambda: (cluster.emulator.body(store, "team-a", "aws-ssm") or {}).get("status")
    )
    cluster.emulator.fail_writes("PATCH", subresource="status", times=4)
    await cluster.apply_external_secret("app", es_spec("/app/db"))
    await eventually(lambda: (cluster.ready("app") or {}).get("status") == "True")
    # Each failed status write counts as one more failure, as a store error does.
    assert failures_seen[:4] == [1, 2, 3, 4]
    assert cluster.secret_data("app") == {"value": b"fake-db-password-1"}
