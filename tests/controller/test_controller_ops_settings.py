"""The controller's namespace setting: comma-separated names from the flag and the variable."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from agent.cli import main
from agent.controller.settings import load_controller_settings
from agent.errors import SettingsError
from tests.controller.conftest import Cluster, eventually

VARIABLE = "SECRETS_AGENT_CONTROLLER_NAMESPACES"


@pytest.fixture(autouse=True)
def _no_namespaces_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["team-a,team-b"], ["team-a", "team-b"]),
        (["team-a", "team-b"], ["team-a", "team-b"]),
        ([" team-a , ,team-b,", "team-c"], ["team-a", "team-b", "team-c"]),
        (["team-a,team-a", "team-a"], ["team-a"]),
    ],
)
def test_namespace_flag_splits_commas(flags: list[str], expected: list[str]) -> None:
    assert load_controller_settings(namespaces=flags).namespaces == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("team-a,team-b", ["team-a", "team-b"]),
        (" team-a , ,team-b ", ["team-a", "team-b"]),
        ("", []),
        ("  ", []),
    ],
)
def test_namespace_variable_splits_commas(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv(VARIABLE, value)
    assert load_controller_settings().namespaces == expected


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["Team-A"], "'Team-A'"),
        (["team-a,team_b"], "'team_b'"),
        (["team-a.prod"], "'team-a.prod'"),
        (["-team"], "'-team'"),
        (["a" * 64], "'" + "a" * 64 + "'"),
    ],
)
def test_namespace_flag_rejects_invalid_name(flags: list[str], named: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_controller_settings(namespaces=flags)
    message = str(raised.value)
    assert "--namespace (SECRETS_AGENT_CONTROLLER_NAMESPACES)" in message
    assert named in message
    assert "not a valid namespace name" in message
    assert "separate several names with commas" in message


@pytest.mark.parametrize("flags", [[","], [""], [" , "]])
def test_namespace_flag_rejects_no_name(flags: list[str]) -> None:
    with pytest.raises(SettingsError) as raised:
        load_controller_settings(namespaces=flags)
    message = str(raised.value)
    assert "--namespace (SECRETS_AGENT_CONTROLLER_NAMESPACES)" in message
    assert "names no namespace" in message


def test_namespace_variable_rejects_invalid_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "team-a,Team B")
    with pytest.raises(SettingsError) as raised:
        load_controller_settings()
    message = str(raised.value)
    assert "SECRETS_AGENT_CONTROLLER_NAMESPACES" in message
    assert "'Team B'" in message


def test_controller_command_rejects_invalid_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without credentials, a controller that wrongly accepted the name would exit 1, not 2.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["controller", "--namespace", "team-a,Team_B"]) == 2
    error = capsys.readouterr().err
    assert "--namespace (SECRETS_AGENT_CONTROLLER_NAMESPACES)" in error
    assert "'Team_B'" in error


async def test_comma_namespaces_elect_and_sync(cluster: Cluster, aws: str) -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name="/app/a", Value="fake-a", Type="SecureString", Overwrite=True)
    store = {"aws": {"service": "ParameterStore", "region": "us-east-1"}}
    spec = {
        "refreshInterval": "1h",
        "secretStoreRef": {"name": "aws-ssm"},
        "data": [{"secretKey": "a", "remoteRef": {"key": "/app/a"}}],
    }
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering"}
    for namespace in ("team-a", "team-b"):
        await cluster.apply_store("aws-ssm", store, namespace=namespace)
        await cluster.apply_external_secret("app", spec, namespace=namespace)
        path = f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings"
        await cluster.call("POST", path, {**peering, "metadata": {"name": "secrets-agent"}})

    # The form the flag delivers: one value with a comma.
    controller = await cluster.start_controller(namespaces=["team-a,team-b"], standalone=False)

    assert controller.settings.namespaces == ["team-a", "team-b"]
    await eventually(lambda: cluster.secret_data("app", "team-a"), timeout=15)
    await eventually(lambda: cluster.secret_data("app", "team-b"), timeout=15)
    for namespace in ("team-a", "team-b"):
        path = f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/secrets-agent"
        status = (await cluster.call("GET", path)).get("status") or {}
        assert controller.identity in status, namespace
    assert controller.warnings == {}
