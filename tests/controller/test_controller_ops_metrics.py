"""The controller's /metrics: per-ExternalSecret readiness, leadership, and no agent families."""

from __future__ import annotations

import asyncio
import datetime
import time

import aiohttp
import boto3
import pytest

from agent.controller.leadership import leads
from agent.controller.metrics import ControllerMetrics
from agent.metrics import Metrics
from tests.controller.conftest import API, Cluster, eventually

SSM = {"aws": {"service": "ParameterStore", "region": "us-east-1"}}
AGENT_ONLY = (
    "secrets_agent_sync_total",
    "secrets_agent_target_ready",
    "secrets_agent_last_success_timestamp_seconds",
)
NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def spec(remote_key: str) -> dict:
    return {
        "refreshInterval": "1h",
        "secretStoreRef": {"name": "aws-ssm"},
        "data": [{"secretKey": "a", "remoteRef": {"key": remote_key}}],
    }


def ready_series(controller, name: str, namespace: str = "team-a") -> float | None:
    """Return the value of an ExternalSecret's ready series, None when it does not exist."""
    labels = {"namespace": namespace, "name": name}
    return controller.metrics.registry.get_sample_value(
        "secrets_agent_controller_external_secret_ready", labels
    )


def leader(controller) -> float | None:
    return controller.metrics.registry.get_sample_value("secrets_agent_controller_leader")


async def scrape(controller) -> str:
    url = f"http://127.0.0.1:{controller.health.port}/metrics"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            return await response.text()


@pytest.fixture
def ssm_parameter(aws: str) -> None:
    client = boto3.client("ssm", region_name="us-east-1")
    client.put_parameter(Name="/app/a", Value="fake-a", Type="SecureString", Overwrite=True)


async def test_ready_gauge_per_external_secret(cluster: Cluster, ssm_parameter: None) -> None:
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.apply_external_secret("app", spec("/app/a"))
    await cluster.apply_external_secret("broken", spec("/app/missing"))
    controller = await cluster.start_controller()

    await eventually(lambda: ready_series(controller, "app") == 1.0)
    await eventually(lambda: ready_series(controller, "broken") == 0.0)
    text = await scrape(controller)
    assert (
        'secrets_agent_controller_external_secret_ready{name="app",namespace="team-a"} 1.0' in text
    )
    assert (
        'secrets_agent_controller_external_secret_ready{name="broken",namespace="team-a"} 0.0'
        in text
    )
    assert "fake-a" not in text

    await cluster.call("DELETE", f"{API}/namespaces/team-a/externalsecrets/app")
    await eventually(lambda: ready_series(controller, "app") is None)
    assert ready_series(controller, "broken") == 0.0


async def test_ready_gauge_follows_a_fix(cluster: Cluster, ssm_parameter: None) -> None:
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.apply_external_secret("app", spec("/app/missing"))
    controller = await cluster.start_controller()
    await eventually(lambda: ready_series(controller, "app") == 0.0)

    await cluster.patch_external_secret("app", {"spec": spec("/app/a")})

    await eventually(lambda: ready_series(controller, "app") == 1.0)


async def test_standalone_is_leader(cluster: Cluster) -> None:
    controller = await cluster.start_controller()

    assert leader(controller) == 1.0


async def test_leader_gauge_and_handover(cluster: Cluster, ssm_parameter: None) -> None:
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.apply_external_secret("app", spec("/app/a"))
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "secrets-agent"},
    }
    await cluster.call("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", peering)
    election = {"standalone": False, "peering_lifetime": 3, "leader_check_seconds": 0.1}

    first = await cluster.start_controller(priority=100, **election)
    await eventually(lambda: leader(first) == 1.0, timeout=15)
    await eventually(lambda: ready_series(first, "app") == 1.0, timeout=15)

    # A replica with a higher priority takes over: the first one pauses and stops reporting.
    second = await cluster.start_controller(priority=200, **election)
    await eventually(lambda: leader(first) == 0.0, timeout=15)
    await eventually(lambda: ready_series(first, "app") is None, timeout=15)
    await eventually(lambda: leader(second) == 1.0, timeout=15)
    await eventually(lambda: ready_series(second, "app") == 1.0, timeout=15)
    text = await scrape(first)
    assert "secrets_agent_controller_leader 0.0" in text
    assert "secrets_agent_controller_external_secret_ready{" not in text

    # When the leader goes, the paused replica resumes once the leader's entry expires.
    await cluster.stop_controller(second)
    await eventually(lambda: leader(first) == 1.0, timeout=20)
    await eventually(lambda: ready_series(first, "app") == 1.0, timeout=20)


async def test_leader_gauge_without_peering_object(cluster: Cluster) -> None:
    controller = await cluster.start_controller(standalone=False, leader_check_seconds=0.1)
    # kopf pauses every handler while the peering object is missing; the gauge stays 0.
    await asyncio.sleep(0.5)
    assert leader(controller) == 0.0


async def test_registry_has_no_agent_families(cluster: Cluster) -> None:
    controller = await cluster.start_controller()

    text = await scrape(controller)

    for family in AGENT_ONLY:
        assert f"# TYPE {family}" not in text, family
    assert "# TYPE secrets_agent_backend_requests_total counter" in text
    assert "# TYPE secrets_agent_controller_leader gauge" in text


def test_agent_metrics_keep_their_families() -> None:
    names = {family.name for family in Metrics().registry.collect()}
    controller_names = {family.name for family in ControllerMetrics().registry.collect()}

    # prometheus-client reports a counter's family name without `_total`.
    assert {"secrets_agent_sync", "secrets_agent_target_ready"} <= names
    assert "secrets_agent_last_success_timestamp_seconds" in names
    assert not {"secrets_agent_sync", "secrets_agent_target_ready"} & controller_names
    assert "secrets_agent_last_success_timestamp_seconds" not in controller_names


def entry(priority: int, *, seen_seconds_ago: float = 1.0, lifetime: int = 60) -> dict:
    seen = NOW - datetime.timedelta(seconds=seen_seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, True),
        ({"me": entry(100)}, True),
        ({"me": entry(100), "other": entry(50)}, True),
        ({"me": entry(100), "other": entry(200)}, False),
        ({"me": entry(100), "other": entry(100)}, False),  # a tie pauses both
        ({"me": entry(100), "other": entry(200, seen_seconds_ago=61)}, True),  # expired
        ({"me": entry(100), "other": entry(200, seen_seconds_ago=61, lifetime=120)}, False),
        ({"other": {"priority": 200}}, False),  # no lastseen: live, as in kopf
        ({"other": {"lastseen": "not a time"}}, True),  # priority 0 by default
    ],
)
def test_leads_follows_kopf_rule(status: dict, expected: bool) -> None:
    peering = {"metadata": {"name": "secrets-agent"}, "status": status}
    assert leads(peering, identity="me", priority=100, now=NOW) is expected


def test_leads_needs_the_peering_object() -> None:
    assert leads(None, identity="me", priority=100, now=NOW) is False
    assert leads({"metadata": {}}, identity="me", priority=100, now=NOW) is True


def test_leads_accepts_kopf_timestamp() -> None:
    # kopf writes `lastseen` with datetime.isoformat() of an aware UTC time.
    seen = datetime.datetime.fromtimestamp(time.time(), datetime.UTC).isoformat()
    status = {"other": {"priority": 200, "lifetime": 60, "lastseen": seen}}
    now = datetime.datetime.now(datetime.UTC)
    assert leads({"status": status}, identity="me", priority=100, now=now) is False
