"""Fixtures for the controller: the Kubernetes API emulator over HTTP and running controllers.

`cluster` serves a `KubernetesApiEmulator` on a loopback port with an aiohttp client for the
test's own requests. `start_controller` runs a `Controller` (kopf and all) against it on an event
loop of its own in a thread, logging in with a `ConnectionInfo` for the emulator's URL, and the
fixture stops every controller at the end.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kmock
import kopf
import pytest

from agent.controller.handlers import Controller
from agent.controller.settings import ControllerSettings
from agent.testing.kubernetes import KubernetesApiEmulator

ES_PLURAL = "secrets-agent.io/v1alpha1/externalsecrets"
API = "/apis/secrets-agent.io/v1alpha1"
MERGE = {"Content-Type": "application/merge-patch+json"}
# Keyword arguments of `start_controller` that go to `Controller` instead of its settings.
CONTROLLER_ARGUMENTS = (
    "lease_clock",
    "api_warning_seconds",
    "api_probe_seconds",
    "leader_check_seconds",
)


@dataclass
class Cluster:
    """The emulator, its URL and a client for the test's own requests."""

    emulator: KubernetesApiEmulator
    url: str
    session: aiohttp.ClientSession
    controllers: list[tuple[Controller, threading.Event, threading.Thread]] = field(
        default_factory=list
    )

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        async with self.session.request(method, path, json=body, **kwargs) as response:
            payload = await response.json()
            assert response.status < 400, f"{method} {path}: {response.status} {payload}"
            return payload

    async def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        await self.call(
            "POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": labels or {}}}
        )

    async def apply_store(
        self, name: str, provider: dict[str, Any], *, namespace: str | None = "team-a", **spec: Any
    ) -> dict[str, Any]:
        kind = "SecretStore" if namespace else "ClusterSecretStore"
        plural = "secretstores" if namespace else "clustersecretstores"
        where = f"/namespaces/{namespace}" if namespace else ""
        body = {
            "apiVersion": "secrets-agent.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": {"provider": provider, **spec},
        }
        return await self.call("POST", f"{API}{where}/{plural}", body)

    async def apply_external_secret(
        self, name: str, spec: dict[str, Any], *, namespace: str = "team-a", **metadata: Any
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "secrets-agent.io/v1alpha1",
            "kind": "ExternalSecret",
            "metadata": {"name": name, **metadata},
            "spec": spec,
        }
        return await self.call("POST", f"{API}/namespaces/{namespace}/externalsecrets", body)

    async def patch_external_secret(
        self, name: str, patch: dict[str, Any], *, namespace: str = "team-a"
    ) -> dict[str, Any]:
        path = f"{API}/namespaces/{namespace}/externalsecrets/{name}"
        return await self.call("PATCH", path, patch, headers=MERGE)

    def external_secret(self, name: str, namespace: str = "team-a") -> dict[str, Any] | None:
        return self.emulator.body(ES_PLURAL, namespace, name)

    def secret(self, name: str, namespace: str = "team-a") -> dict[str, Any] | None:
        return self.emulator.body("v1/secrets", namespace, name)

    def secret_data(self, name: str, namespace: str = "team-a") -> dict[str, bytes] | None:
        body = self.secret(name, namespace)
        if body is None:
            return None
        return {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}

    def ready(self, name: str, namespace: str = "team-a") -> dict[str, Any] | None:
        body = self.external_secret(name, namespace) or {}
        for condition in (body.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "Ready":
                return condition
        return None

    def writes_to(self, plural: str, name: str) -> int:
        """Count write requests (POST, PATCH, PUT, DELETE) that named one object."""
        count = 0
        for request in self.emulator._requests:
            method = str(request.method.value).upper()
            if method == "GET" or request.resource is None:
                continue
            if request.resource.plural != plural:
                continue
            named = request.name or ((request.data or {}).get("metadata") or {}).get("name")
            if named == name and request.subresource is None:
                count += 1
        return count

    async def start_controller(self, **overrides: Any) -> Controller:
        """Start a controller against this cluster; it is stopped when the test ends."""
        peering_lifetime = overrides.pop("peering_lifetime", 60)
        priority = overrides.pop("priority", None)
        extra = {}
        for name in CONTROLLER_ARGUMENTS:
            if name in overrides:
                extra[name] = overrides.pop(name)
        # A test may send the controller's requests through something of its own, such as a
        # proxy it can stop.
        server = overrides.pop("server", self.url)
        settings = ControllerSettings(
            listen="127.0.0.1:0", standalone=overrides.pop("standalone", True), **overrides
        )

        async def login() -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server, insecure=True)

        controller = Controller(
            settings, login=login, peering_lifetime=peering_lifetime, priority=priority, **extra
        )
        # kopf cancels every task of its loop that it did not start when it stops, so each
        # controller runs on a loop of its own in a thread, as `kopf.testing.KopfRunner` does.
        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=asyncio.run,
            args=(controller.run(stop_flag=stop, ready_flag=ready),),
            name=f"controller-{len(self.controllers)}",
            daemon=True,
        )
        thread.start()
        self.controllers.append((controller, stop, thread))
        assert await asyncio.to_thread(ready.wait, 10), "the controller did not start"
        return controller

    async def stop_controller(self, controller: Controller) -> None:
        for entry in list(self.controllers):
            if entry[0] is controller:
                self.controllers.remove(entry)
                entry[1].set()
                await asyncio.to_thread(entry[2].join, 20)
                assert not entry[2].is_alive(), "the controller did not stop"


async def eventually(
    check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05
) -> Any:
    """Poll `check` until it returns a true value; fail with its last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value: {value!r})")
        await asyncio.sleep(interval)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    emulator = KubernetesApiEmulator()
    async with emulator, kmock.Server(emulator) as server:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            cluster = Cluster(emulator, str(server.url).rstrip("/"), session)
            await cluster.create_namespace("team-a")
            await cluster.create_namespace("team-b")
            try:
                yield cluster
            finally:
                for controller, _, _ in list(cluster.controllers):
                    await cluster.stop_controller(controller)
