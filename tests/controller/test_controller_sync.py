"""The controller against the Kubernetes API emulator and moto's server, over HTTP.

Covers create, update on a spec change, refresh without a write when nothing changed, drift
repair, the creation policies, Merge with foreign keys, and template metadata.
"""

from __future__ import annotations

import boto3
import pytest

from tests.controller.conftest import Cluster, eventually

SSM = {"aws": {"service": "ParameterStore", "region": "us-east-1"}}


@pytest.fixture
def ssm(aws: str):
    client = boto3.client("ssm", region_name="us-east-1")

    def put(name: str, value: str) -> None:
        client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)

    return put


def spec(*keys: tuple[str, str], **extra) -> dict:
    return {
        "refreshInterval": "1h",
        "secretStoreRef": {"name": "aws-ssm"},
        "data": [{"secretKey": k, "remoteRef": {"key": r}} for k, r in keys],
        **extra,
    }


async def test_creates_secret_with_owner(cluster: Cluster, ssm) -> None:
    ssm("/app/db-password", "fake-db-password-1")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    es = await cluster.apply_external_secret("app", spec(("db-password", "/app/db-password")))
    data = await eventually(lambda: cluster.secret_data("app"))
    assert data == {"db-password": b"fake-db-password-1"}
    secret = cluster.secret("app")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == es["metadata"]["uid"]
    assert secret["metadata"]["labels"]["secrets-agent.io/managed"] == "true"
    ready = await eventually(lambda: cluster.ready("app"))
    assert ready["status"] == "True"
    assert ready["reason"] == "SecretSynced"
