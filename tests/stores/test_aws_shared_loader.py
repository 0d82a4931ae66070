"""What AWS stores share in one process, and what they leave unimported, against moto's server.

Every store's botocore session uses one loader, so botocore's endpoint data and each service
model are parsed once per process. The stores use botocore directly and never import boto3.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
from aws_helpers import aws_store

from agent.metrics import Metrics
from agent.refs import Refs
from agent.stores import RemoteKey
from agent.stores.aws import AwsClientOptions
from agent.stores.secretsmanager import SecretsManagerStore
from agent.stores.ssm import ParameterStore

FAST = AwsClientOptions(retry_mode="standard", botocore_attempts=1)


def test_stores_share_one_loader(aws: str, tmp_path: Path) -> None:
    boto3.client("ssm").put_parameter(
        Name="/shared/db-password", Value="fake-db-password-1", Type="SecureString"
    )
    boto3.client("secretsmanager").create_secret(Name="shared-api-key", SecretString="fake-key-2")
    refs = Refs(tmp_path / "refs")
    metrics = Metrics()
    first = ParameterStore(
        aws_store("aws-ssm-a", "ParameterStore"), refs=refs, metrics=metrics, options=FAST
    )
    second = ParameterStore(
        aws_store("aws-ssm-b", "ParameterStore", region="eu-west-1"),
        refs=refs,
        metrics=metrics,
        options=FAST,
    )
    third = SecretsManagerStore(
        aws_store("aws-sm", "SecretsManager"), refs=refs, metrics=metrics, options=FAST
    )
    try:
        key = RemoteKey("/shared/db-password")
        assert first.fetch([key])[key] == b"fake-db-password-1"
        missing = second.fetch([key])[key]  # moto keeps each region apart
        assert isinstance(missing, Exception)
        secret = RemoteKey("shared-api-key")
        assert third.fetch([secret])[secret] == b"fake-key-2"

        sessions = [store.aws._session for store in (first, second, third)]
        assert all(session is not None for session in sessions)
        assert len({id(session) for session in sessions}) == 3
        loaders = {id(session.get_component("data_loader")) for session in sessions}
        assert len(loaders) == 1
    finally:
        for store in (first, second, third):
            store.close()


def test_aws_client_does_not_import_boto3(aws: str) -> None:
    code = (
        "import sys\n"
        "from agent.declarations import Origin, StoreDeclaration\n"
        "from agent.metrics import Metrics\n"
        "from agent.models import StoreSpec\n"
        "from agent.refs import Refs\n"
        "from agent.stores.aws import AwsClients\n"
        "spec = StoreSpec.model_validate(\n"
        "    {'provider': {'aws': {'service': 'ParameterStore', 'region': 'us-east-1'}}}\n"
        ")\n"
        "declaration = StoreDeclaration(\n"
        "    kind='SecretStore', name='aws-ssm', spec=spec, origin=Origin('test', 1)\n"
        ")\n"
        "clients = AwsClients(declaration, refs=Refs('/nonexistent'), metrics=Metrics())\n"
        "clients.client('ssm')\n"
        "assert 'botocore' in sys.modules\n"
        "assert 'boto3' not in sys.modules, 'boto3 was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
