"""The API emulator's namespace watch, which kopf opens when it serves a list of namespaces."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import kmock
import pytest

from agent.testing.kubernetes import KubernetesApiEmulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    emulator = KubernetesApiEmulator()
    emulator.add_namespace("team-a")
    emulator.add_namespace("team-b", {"tier": "trusted"})
    async with emulator, kmock.Server(emulator) as server:
        async with aiohttp.ClientSession(base_url=server.url) as client:
            yield client


async def test_namespace_watch_lists_existing(session) -> None:
    async with session.get("/api/v1/namespaces", params={"watch": "true"}) as response:
        assert response.status == 200
        lines = [await response.content.readline() for _ in range(2)]
        events = [json.loads(line) for line in lines]
        assert [event["type"] for event in events] == ["ADDED", "ADDED"]
        names = sorted(event["object"]["metadata"]["name"] for event in events)
        assert names == ["team-a", "team-b"]
        # The stream stays open: nothing more arrives, and the read times out.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(response.content.readline(), timeout=0.3)


async def test_namespace_list_still_served(session) -> None:
    async with session.get("/api/v1/namespaces") as response:
        body = await response.json()
    assert body["kind"] == "NamespaceList"
    assert sorted(item["metadata"]["name"] for item in body["items"]) == ["team-a", "team-b"]
