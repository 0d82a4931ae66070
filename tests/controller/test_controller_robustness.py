"""Robustness of the controller: store wake-ups, odd object shapes, hung stores, names in logs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import boto3
import pytest
from prometheus_client import generate_latest

from tests.controller.conftest import Cluster, eventually

SSM = {"aws": {"service": "ParameterStore", "region": "us-east-1"}}
# A retry this far away never comes within a test, so only a wake-up can reconcile again.
FAR_BACKOFF_SECONDS = 600.0


@pytest.fixture
def ssm(aws: str):
    client = boto3.client("ssm", region_name="us-east-1")

    def put(name: str, value: str) -> None:
        client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)

    return put


@pytest.fixture
def far_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every retry after a failure wait far longer than a test runs."""
    monkeypatch.setattr(
        "agent.controller.reconcile.backoff_delay", lambda failures: FAR_BACKOFF_SECONDS
    )


def es_spec(key: str, *, store: str = "aws-ssm") -> dict:
    return {
        "refreshInterval": "1h",
        "secretStoreRef": {"name": store},
        "data": [{"secretKey": "value", "remoteRef": {"key": key}}],
    }


def status_of(cluster: Cluster, name: str, namespace: str = "team-a") -> str | None:
    return (cluster.ready(name, namespace) or {}).get("status")


async def test_store_created_wakes_external_secret(cluster: Cluster, ssm, far_backoff) -> None:
    ssm("/app/db", "fake-db-password-1")
    await cluster.start_controller()
    await cluster.apply_external_secret("app", es_spec("/app/db"))
    await eventually(lambda: status_of(cluster, "app") == "False")
    await cluster.apply_store("aws-ssm", SSM)
    await eventually(lambda: cluster.secret_data("app") == {"value": b"fake-db-password-1"})
    await eventually(lambda: status_of(cluster, "app") == "True")  # patched after the Secret


async def test_store_fixed_wakes_external_secret(cluster: Cluster, ssm, far_backoff) -> None:
    ssm("/app/db", "fake-db-password-1")
    await cluster.apply_store("aws-ssm", {"aws": {"service": "ParamStore", "region": "us-east-1"}})
    await cluster.start_controller()
    await cluster.apply_external_secret("app", es_spec("/app/db"))
    condition = await eventually(
        lambda: status_of(cluster, "app") == "False" and cluster.ready("app")
    )
    assert "invalid" in condition["message"]
    path = "/apis/secrets-agent.io/v1alpha1/namespaces/team-a/secretstores/aws-ssm"
    patch = {"spec": {"provider": {"aws": {"service": "ParameterStore"}}}}
    await cluster.call(
        "PATCH", path, patch, headers={"Content-Type": "application/merge-patch+json"}
    )
    await eventually(lambda: cluster.secret_data("app") == {"value": b"fake-db-password-1"})
    await eventually(lambda: status_of(cluster, "app") == "True")  # patched after the Secret


ODD_SPECS = {
    "spec-list": [1, 2],
    "target-str": {**es_spec("/app/db"), "target": "oops"},
    "storeref-str": {**es_spec("/app/db"), "secretStoreRef": "aws-ssm"},
    "sourceref-str": {"secretStoreRef": {"name": "aws-ssm"}, "dataFrom": [{"sourceRef": "gen"}]},
    "generatorref-str": {"dataFrom": [{"sourceRef": {"generatorRef": "gen"}}]},
    "data-str": {"secretStoreRef": {"name": "aws-ssm"}, "data": "oops", "dataFrom": "oops"},
}


async def test_odd_shapes_reported_then_fixed(
    cluster: Cluster, ssm, caplog: pytest.LogCaptureFixture
) -> None:
    ssm("/app/db", "fake-db-password-1")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.start_controller()
    caplog.set_level(logging.INFO)
    for name, spec in ODD_SPECS.items():
        await cluster.apply_external_secret(name, spec)
    for name in ODD_SPECS:
        await eventually(lambda name=name: status_of(cluster, name) == "False")
        assert cluster.ready(name)["reason"] == "SecretSyncedError"
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert tracebacks == []
    # A merge patch keeps keys it does not name, so the odd ones are removed with null.
    fixed = {**es_spec("/app/db"), "target": None, "dataFrom": None}
    for name in ODD_SPECS:
        await cluster.patch_external_secret(name, {"spec": fixed})
    for name in ODD_SPECS:
        await eventually(lambda name=name: status_of(cluster, name) == "True")
        assert cluster.secret_data(name) == {"value": b"fake-db-password-1"}


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """A TCP server on a loopback port that accepts connections and never responds."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    yield silent
    silent.close()


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "emulator", "user": {"token": "fake-kube-token"}}],
                "contexts": [
                    {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}
                ],
                "current-context": "emulator",
            }
        )
    )
    return path


def controller_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "controller", "--listen", "127.0.0.1:0", *flags]


async def stop_while_hung(silent_server: socket.socket) -> tuple[int, float, str]:
    """Start a controller, send SIGTERM once its first request reaches `silent_server` (which
    never responds), and return its exit code, the seconds it took to stop, and its output."""
    process = subprocess.Popen(
        controller_command("--standalone"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        silent_server.settimeout(30)
        try:
            accepted, _ = await asyncio.to_thread(silent_server.accept)
        except TimeoutError:
            process.kill()
            print(process.stdout.read().decode())
            raise
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(process.wait, 60)
        stopped_after = time.monotonic() - started
        accepted.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, stopped_after, process.stdout.read().decode()


async def test_stop_abandons_hung_store(
    cluster: Cluster, aws: str, silent_server: socket.socket, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", cluster.url)))
    host, port = silent_server.getsockname()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.apply_external_secret("app", es_spec("/app/db"))
    code, stopped_after, output = await stop_while_hung(silent_server)
    assert code == 0, output
    # The store's read timeout is 15 s and kopf's cancellation backoff 10 s: without abandoning
    # the request, stopping takes at least 10 s.
    assert stopped_after < 5, output
    assert "reconcile_abandoned" in output


async def test_stop_abandons_hung_generator(
    cluster: Cluster, silent_server: socket.socket, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", cluster.url)))
    host, port = silent_server.getsockname()
    token = {"metadata": {"name": "vault-token"}, "data": {"token": "ZmFrZS12YXVsdC10b2tlbg=="}}
    await cluster.call("POST", "/api/v1/namespaces/team-a/secrets", token)
    generator = {
        "apiVersion": "secrets-agent.io/v1alpha1",
        "kind": "VaultDynamicSecret",
        "metadata": {"name": "orders-db"},
        "spec": {
            "path": "/database/creds/orders",
            "provider": {
                "server": f"http://{host}:{port}",
                "auth": {"tokenSecretRef": {"name": "vault-token", "key": "token"}},
            },
        },
    }
    await cluster.call(
        "POST", "/apis/secrets-agent.io/v1alpha1/namespaces/team-a/vaultdynamicsecrets", generator
    )
    spec = {
        "refreshInterval": "1h",
        "dataFrom": [
            {"sourceRef": {"generatorRef": {"kind": "VaultDynamicSecret", "name": "orders-db"}}}
        ],
    }
    await cluster.apply_external_secret("orders-db", spec)
    code, stopped_after, output = await stop_while_hung(silent_server)
    assert code == 0, output
    # Vault's read timeout is 30 s: without abandoning the request, stopping waits for it.
    assert stopped_after < 5, output
    assert "lease_close_abandoned" in output


async def test_store_names_carry_namespace(
    cluster: Cluster, ssm, caplog: pytest.LogCaptureFixture
) -> None:
    ssm("/app/db", "fake-db-password-1")
    caplog.set_level(logging.INFO)
    for namespace in ("team-a", "team-b"):
        await cluster.apply_store("aws-ssm", SSM, namespace=namespace)
        await cluster.apply_external_secret("app", es_spec("/app/db"), namespace=namespace)
    controller = await cluster.start_controller()
    for namespace in ("team-a", "team-b"):
        await eventually(lambda namespace=namespace: cluster.secret("app", namespace))
    metrics = generate_latest(controller.metrics.registry).decode()
    for namespace in ("team-a", "team-b"):
        assert f'result="success",store="{namespace}/aws-ssm"}}' in metrics
    assert 'store="aws-ssm"' not in metrics
    opened = sorted(
        record.event_fields["store"]
        for record in caplog.records
        if record.getMessage() == "store_opened"
    )
    assert opened == ["team-a/aws-ssm", "team-b/aws-ssm"]


def store_ready(cluster: Cluster, name: str, namespace: str = "team-a") -> dict:
    body = cluster.emulator.body("secrets-agent.io/v1alpha1/secretstores", namespace, name) or {}
    conditions = (body.get("status") or {}).get("conditions") or [{}]
    return conditions[0]


async def test_store_invalid_when_unusable(cluster: Cluster, vault) -> None:
    foreign = {"name": "vault-token", "key": "token", "namespace": "team-b"}
    provider = {"vault": {"server": vault.url, "auth": {"tokenSecretRef": foreign}}}
    await cluster.apply_store("foreign-ref", provider)
    await cluster.apply_store(
        "bad-region", {"aws": {"service": "ParameterStore", "region": "eu west 1"}}
    )
    await cluster.start_controller()
    await cluster.apply_external_secret("app", es_spec("app", store="foreign-ref"))

    condition = await eventually(lambda: store_ready(cluster, "foreign-ref").get("status"))
    assert condition == "False"
    message = store_ready(cluster, "foreign-ref")["message"]
    assert "spec.provider.vault.auth.tokenSecretRef.namespace" in message
    assert "team-b" in message
    assert store_ready(cluster, "foreign-ref")["reason"] == "InvalidProviderConfig"
    await eventually(lambda: status_of(cluster, "app") == "False")
    assert "tokenSecretRef.namespace" in cluster.ready("app")["message"]

    await eventually(lambda: store_ready(cluster, "bad-region").get("status"))
    assert store_ready(cluster, "bad-region")["status"] == "False"
    assert "spec.provider.aws.region" in store_ready(cluster, "bad-region")["message"]


async def healthz(controller) -> tuple[int, str]:
    url = f"http://127.0.0.1:{controller.health.port}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_missing_peering_reported(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.controller.handlers.PEERING_CHECK_SECONDS", 0.2)
    caplog.set_level(logging.INFO)
    controller = await cluster.start_controller(standalone=False)

    def events(name: str) -> list[logging.LogRecord]:
        return [record for record in caplog.records if record.getMessage() == name]

    await eventually(lambda: events("peering_missing"))
    assert (
        events("peering_missing")[0].event_fields["peering"] == "ClusterKopfPeering secrets-agent"
    )
    status, body = await healthz(controller)
    assert status == 200
    assert "warning: ClusterKopfPeering secrets-agent not found" in body
    assert "--standalone" in body

    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "secrets-agent"},
    }
    await cluster.call("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", peering)
    await eventually(lambda: events("peering_found"))
    status, body = await healthz(controller)
    assert body == "ok\n"


async def run_controller_until(
    cluster: Cluster, condition, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *flags: str
) -> tuple[int | None, str]:
    """Run `secrets-agent controller` until `condition()` holds, stop it; return code and log."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", cluster.url)))
    process = subprocess.Popen(
        controller_command(*flags), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        await eventually(lambda: condition() or process.poll() is not None, timeout=20)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, process.stdout.read().decode()


async def test_kopf_handler_chatter_hidden(
    cluster: Cluster, ssm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssm("/app/db", "fake-db-password-1")
    await cluster.apply_store("aws-ssm", SSM)
    await cluster.apply_external_secret("app", es_spec("/app/db"))
    code, output = await run_controller_until(
        cluster, lambda: status_of(cluster, "app") == "True", tmp_path, monkeypatch, "--standalone"
    )
    assert code == 0, output
    assert "event=reconcile_done" in output
    assert "Handler 'Controller." not in output
    assert "fake-db-password-1" not in output


def run_controller_to_exit(*flags: str, kubeconfig_path: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KUBECONFIG": str(kubeconfig_path)}
    return subprocess.run(
        controller_command(*flags), env=environment, capture_output=True, text=True, timeout=30
    )


async def test_listen_port_in_use_exits(cluster: Cluster, tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    path = kubeconfig(tmp_path / "kubeconfig", cluster.url)
    try:
        command = ["--standalone", "--listen", f"127.0.0.1:{port}"]
        # The emulator is served by this test's loop, so the controller runs in a thread.
        result = await asyncio.to_thread(run_controller_to_exit, *command, kubeconfig_path=path)
    finally:
        taken.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_credentials_exit(tmp_path: Path) -> None:
    result = run_controller_to_exit("--standalone", kubeconfig_path=tmp_path / "absent")
    assert result.returncode == 1
    assert "no Kubernetes credentials" in result.stderr
    assert "KUBECONFIG" in result.stderr
    assert "Traceback" not in result.stderr
