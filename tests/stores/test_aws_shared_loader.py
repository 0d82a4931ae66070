"""What AWS stores share in one process, and what they leave unimported, against moto's server.

Every store's botocore session uses one loader, so botocore's endpoint data and each service
model are parsed once per process. That loader keeps the endpoint data of the agent's own
services only and looks for no other service's data. The stores use botocore directly and never
import boto3.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import botocore.session
import pytest
from aws_helpers import aws_store
from botocore.loaders import Loader

from agent.metrics import Metrics
from agent.refs import Refs
from agent.stores import RemoteKey
from agent.stores.aws import AGENT_SERVICES, ENDPOINT_VARIABLES, AwsClientOptions, AwsClients
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


REGIONS = [
    "us-east-1",
    "eu-west-1",
    "ap-southeast-2",
    "cn-north-1",
    "us-gov-west-1",
    "eu-central-2",
]


@pytest.mark.parametrize("service", sorted(AGENT_SERVICES))
def test_endpoints_match_botocore(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's loader drops other services' endpoint data; each client of the agent must
    # still get the endpoint that botocore's own loader gives it. No request is sent.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for variable in ENDPOINT_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-fake-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-fake-secret-key")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-credentials"))
    plain = botocore.session.Session()
    for region in REGIONS:
        kind = "ParameterStore" if service != "secretsmanager" else "SecretsManager"
        clients = AwsClients(
            aws_store(f"aws-{region}", kind, region=region),
            refs=Refs(tmp_path / "refs"),
            metrics=Metrics(),
        )
        ours = clients.client(service)
        theirs = plain.create_client(service, region_name=region)
        assert ours.meta.endpoint_url == theirs.meta.endpoint_url, region
        assert ours.meta.region_name == theirs.meta.region_name, region
        assert ours.meta.partition == theirs.meta.partition, region
        # botocore's endpoint data decides how requests are signed: region, name and version.
        ours_signer, theirs_signer = ours._request_signer, theirs._request_signer
        assert ours_signer.region_name == theirs_signer.region_name, region
        assert ours_signer.signing_name == theirs_signer.signing_name, region
        assert ours_signer.signature_version == theirs_signer.signature_version, region


def test_loader_keeps_agent_services_only(aws: str, tmp_path: Path) -> None:
    clients = AwsClients(
        aws_store("aws-ssm", "ParameterStore"), refs=Refs(tmp_path / "refs"), metrics=Metrics()
    )
    clients.client("ssm")
    assert clients._session is not None
    endpoints = clients._session.get_component("data_loader").load_data("endpoints")
    partitions = endpoints["partitions"]
    assert {partition["partition"] for partition in partitions} >= {"aws", "aws-cn", "aws-us-gov"}
    for partition in partitions:
        assert set(partition["services"]) <= set(AGENT_SERVICES), partition["partition"]
    assert set(partitions[0]["services"]) == set(AGENT_SERVICES)


@pytest.mark.parametrize("type_name", ["service-2", "endpoint-rule-set-1", "paginators-1"])
def test_loader_lists_agent_services(aws: str, tmp_path: Path, type_name: str) -> None:
    clients = AwsClients(
        aws_store("aws-ssm", "ParameterStore"), refs=Refs(tmp_path / "refs"), metrics=Metrics()
    )
    clients.client("ssm")
    assert clients._session is not None
    ours = clients._session.get_component("data_loader").list_available_services(type_name)
    botocores = Loader().list_available_services(type_name)
    assert ours == [name for name in botocores if name in AGENT_SERVICES]
    assert "ssm" in ours


@pytest.mark.parametrize("service", sorted(AGENT_SERVICES))
def test_loader_reads_same_models(aws: str, tmp_path: Path, service: str) -> None:
    clients = AwsClients(
        aws_store("aws-ssm", "ParameterStore"), refs=Refs(tmp_path / "refs"), metrics=Metrics()
    )
    clients.client("ssm")
    assert clients._session is not None
    ours = clients._session.get_component("data_loader")
    botocores = Loader()
    for type_name in ("service-2", "endpoint-rule-set-1"):
        model = ours.load_service_model(service, type_name)
        assert type(model) is dict
        assert model == botocores.load_service_model(service, type_name), type_name
    assert ours.load_data("partitions") == botocores.load_data("partitions")
