"""The API emulator rejects what the API server rejects in Secret and ConfigMap updates.

A Secret's `type` cannot change, and a Secret or ConfigMap with `immutable: true` keeps its data
and the flag. The API server returns 422 Invalid for such an update, and so does the emulator. A
delete and a metadata change still work.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest

from agent.testing.kubernetes import KubernetesApiEmulator

SECRETS = "/api/v1/namespaces/team-a/secrets"
CONFIGMAPS = "/api/v1/namespaces/team-a/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    emulator = KubernetesApiEmulator()
    async with emulator, kmock.Server(emulator) as server:
        async with aiohttp.ClientSession(base_url=server.url) as client:
            yield client


async def call(
    session: aiohttp.ClientSession, method: str, path: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any]:
    async with session.request(method, path, json=body, **kwargs) as response:
        return response.status, await response.json()


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, *, immutable: bool = False, kind: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {"a": encoded("fake-value-1")},
    }
    if immutable:
        body["immutable"] = True
    if kind is not None:
        body["type"] = kind
    return body


async def test_secret_type_change_rejected(session) -> None:
    await call(session, "POST", SECRETS, secret("typed", kind="Opaque"))
    status, body = await call(
        session, "PATCH", f"{SECRETS}/typed", {"type": "kubernetes.io/tls"}, headers=MERGE
    )
    assert status == 422
    assert "type: Invalid value" in body["message"]
    assert "field is immutable" in body["message"]
    status, current = await call(session, "GET", f"{SECRETS}/typed")
    assert current["type"] == "Opaque"


async def test_missing_type_counts_as_opaque(session) -> None:
    await call(session, "POST", SECRETS, secret("untyped"))
    status, _ = await call(
        session, "PATCH", f"{SECRETS}/untyped", {"type": "Opaque"}, headers=MERGE
    )
    assert status == 200


async def test_immutable_secret_data_rejected(session) -> None:
    await call(session, "POST", SECRETS, secret("frozen", immutable=True))
    changed = {"data": {"a": encoded("fake-value-2")}}
    status, body = await call(session, "PATCH", f"{SECRETS}/frozen", changed, headers=MERGE)
    assert status == 422
    assert "data: Forbidden: field is immutable when `immutable` is set" in body["message"]
    status, body = await call(
        session, "PATCH", f"{SECRETS}/frozen", {"immutable": False}, headers=MERGE
    )
    assert status == 422
    assert "immutable: Forbidden" in body["message"]
    _, current = await call(session, "GET", f"{SECRETS}/frozen")
    assert current["data"] == {"a": encoded("fake-value-1")}
    assert current["immutable"] is True


async def test_immutable_secret_metadata_and_delete(session) -> None:
    await call(session, "POST", SECRETS, secret("frozen", immutable=True))
    labels = {"metadata": {"labels": {"team": "payments"}}}
    status, body = await call(session, "PATCH", f"{SECRETS}/frozen", labels, headers=MERGE)
    assert status == 200
    assert body["metadata"]["labels"] == {"team": "payments"}
    status, _ = await call(session, "DELETE", f"{SECRETS}/frozen")
    assert status == 200
    status, _ = await call(session, "GET", f"{SECRETS}/frozen")
    assert status == 404


async def test_mutable_secret_can_become_immutable(session) -> None:
    await call(session, "POST", SECRETS, secret("later"))
    status, body = await call(
        session, "PATCH", f"{SECRETS}/later", {"immutable": True}, headers=MERGE
    )
    assert status == 200
    assert body["immutable"] is True


async def test_immutable_configmap_data_rejected(session) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"mode": "a"},
        "immutable": True,
    }
    await call(session, "POST", CONFIGMAPS, config)
    changed = {"data": {"mode": "b"}}
    status, body = await call(session, "PATCH", f"{CONFIGMAPS}/settings", changed, headers=MERGE)
    assert status == 422
    assert body["message"].startswith('ConfigMap "settings" is invalid: data: Forbidden')
