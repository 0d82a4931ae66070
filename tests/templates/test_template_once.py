"""`secrets-agent once` in a subprocess renders an application.properties from SSM (moto)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
from templates_helpers import SSM_STORE, external_secret, write_declarations

PROPERTIES_TEMPLATE = """\
spring.datasource.url=jdbc:postgresql://db:5432/payment
spring.datasource.username={{ username }}
spring.datasource.password={{ password | properties }}
payment.api-key={{ data["api-key"] | properties }}
"""
FAKE_VALUES = ("fake-db-user-1", "fake:db=password#1", "fake-api-key-1")


def run_once(tmp_path: Path, document: dict) -> subprocess.CompletedProcess[str]:
    config = write_declarations(tmp_path / "declarations.yaml", [SSM_STORE, document])
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_AGENT_")}
    (tmp_path / "secrets").mkdir(exist_ok=True)
    environment.update(
        SECRETS_AGENT_CONFIG=str(config),
        SECRETS_AGENT_OUTPUT_DIR=str(tmp_path / "secrets"),
        SECRETS_AGENT_REFS_DIR=str(tmp_path / "refs"),
    )
    return subprocess.run(
        [sys.executable, "-m", "agent", "once", "--timeout", "5"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def seed(aws: str) -> None:
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    ssm.put_parameter(Name="/payment/username", Value="fake-db-user-1", Type="String")
    ssm.put_parameter(Name="/payment/password", Value="fake:db=password#1", Type="SecureString")
    ssm.put_parameter(Name="/payment/api-key", Value="fake-api-key-1", Type="SecureString")


def payment(template: str) -> dict:
    data = [
        {"secretKey": key, "remoteRef": {"key": f"/payment/{key}"}}
        for key in ("username", "password", "api-key")
    ]
    return external_secret({"application.properties": template}, data=data)


def test_once_renders_application_properties(aws, tmp_path: Path) -> None:
    seed(aws)

    result = run_once(tmp_path, payment(PROPERTIES_TEMPLATE))

    assert result.returncode == 0, result.stderr
    target = tmp_path / "secrets" / "payment"
    visible = sorted(entry.name for entry in target.iterdir() if not entry.name.startswith(".."))
    assert visible == ["application.properties"]
    assert (target / "application.properties").read_text() == (
        "spring.datasource.url=jdbc:postgresql://db:5432/payment\n"
        "spring.datasource.username=fake-db-user-1\n"
        "spring.datasource.password=fake\\:db\\=password\\#1\n"
        "payment.api-key=fake-api-key-1\n"
    )
    for value in FAKE_VALUES:
        assert value not in result.stdout + result.stderr


def test_once_missing_key_exits_one(aws, tmp_path: Path) -> None:
    seed(aws)
    template = PROPERTIES_TEMPLATE + "payment.webhook-secret={{ webhook_secret }}\n"

    result = run_once(tmp_path, payment(template))

    assert result.returncode == 1
    assert "target payment not written" in result.stderr
    assert "secret key 'webhook_secret' is missing" in result.stderr
    assert 'spec.target.template.data["application.properties"] line 5' in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "secrets" / "payment" / "..data").exists()
    for value in FAKE_VALUES:
        assert value not in result.stdout + result.stderr
