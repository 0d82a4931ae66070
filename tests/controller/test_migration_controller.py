"""The controller during a migration from External Secrets Operator, against the Kubernetes API
emulator and moto's server over HTTP: a Secret that ESO controls, and ESO template keys."""

from __future__ import annotations

import base64

import boto3
import pytest

from tests.controller.conftest import Cluster, eventually

SSM = {"aws": {"service": "ParameterStore", "region": "us-east-1"}}
SECRETS = "/api/v1/namespaces/team-a/secrets"


@pytest.fixture
def ssm(aws: str):
    return boto3.client("ssm", region_name="us-east-1")


def spec(*keys: tuple[str, str], **target: object) -> dict:
    return {
        "refreshInterval": "1h",
        "secretStoreRef": {"name": "aws-ssm"},
        "data": [{"secretKey": key, "remoteRef": {"key": remote}} for key, remote in keys],
        "target": target,
    }


def failed(cluster: Cluster, name: str) -> dict | None:
    condition = cluster.ready(name) or {}
    return condition if condition.get("status") == "False" else None


def eso_secret(name: str, api_version: str) -> dict:
    return {
        "metadata": {
            "name": name,
            "ownerReferences": [
                {
                    "apiVersion": api_version,
                    "kind": "ExternalSecret",
                    "name": name,
                    "uid": "5b0e2f6a-0000-4000-8000-000000000002",
                    "controller": True,
                }
            ],
        },
        "data": {"password": base64.b64encode(b"fake-eso-password-1").decode()},
    }


async def test_takeover_names_eso_owner(cluster: Cluster, ssm) -> None:
    ssm.put_parameter(Name="/payment/db", Value="fake-db-password-1", Type="SecureString")
    await cluster.call("POST", SECRETS, eso_secret("payment-db", "external-secrets.io/v1beta1"))
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()

    await cluster.apply_external_secret("payment-db", spec(("password", "/payment/db")))

    ready = await eventually(lambda: failed(cluster, "payment-db"))
    message = ready["message"]
    assert "ExternalSecret payment-db (external-secrets.io/v1beta1)" in message
    assert "External Secrets Operator" in message
    assert "kubectl delete externalsecrets.external-secrets.io payment-db -n team-a" in message
    assert cluster.secret_data("payment-db") == {"password": b"fake-eso-password-1"}


async def test_takeover_names_other_owner_group(cluster: Cluster, ssm) -> None:
    ssm.put_parameter(Name="/payment/db", Value="fake-db-password-1", Type="SecureString")
    await cluster.call("POST", SECRETS, eso_secret("payment-db", "example.com/v2"))
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()

    await cluster.apply_external_secret("payment-db", spec(("password", "/payment/db")))

    ready = await eventually(lambda: failed(cluster, "payment-db"))
    message = ready["message"]
    assert "ExternalSecret payment-db (example.com/v2)" in message
    assert "External Secrets Operator" not in message
    assert "rename spec.target.name" in message


async def test_keyword_key_renders_in_secret(cluster: Cluster, ssm) -> None:
    ssm.put_parameter(Name="/payment/user", Value="fake-db-user-1", Type="String")
    ssm.put_parameter(Name="/payment/pass", Value="fake-db-password-1", Type="SecureString")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    template = {"data": {"dsn": "{{ user }}:{{ pass }}"}}
    keys = (("user", "/payment/user"), ("pass", "/payment/pass"))

    await cluster.apply_external_secret("payment", spec(*keys, template=template))

    data = await eventually(lambda: cluster.secret_data("payment"))
    assert data == {"dsn": b"fake-db-user-1:fake-db-password-1"}
