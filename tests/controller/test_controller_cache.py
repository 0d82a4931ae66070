"""The shared read cache and the refresh planner, without Kubernetes or a backend server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from agent.controller.cache import (
    ConnectionKey,
    DaemonThreadExecutor,
    ReadCache,
    RefreshPlanner,
    StoreConnection,
    StoreConnections,
)
from agent.declarations import Origin, StoreDeclaration
from agent.errors import RemoteKeyNotFoundError, StoreUnavailableError
from agent.metrics import Metrics
from agent.models import StoreSpec
from agent.refs import Refs
from agent.stores import RemoteKey, RemoteValue, Store

KEY = ConnectionKey("SecretStore", "team-a", "memory", "digest", None)


class MemoryStore(Store):
    """A store over a dict that records every `fetch` call it receives."""

    def __init__(self, values: dict[str, bytes]) -> None:
        spec = StoreSpec.model_validate({"provider": {"aws": {"service": "ParameterStore"}}})
        declaration = StoreDeclaration("SecretStore", "memory", spec, Origin("test", 1))
        super().__init__(declaration, refs=Refs(Path("/nonexistent")), metrics=Metrics())
        self.values = values
        self.calls: list[list[RemoteKey]] = []
        self.fail = False

    def fetch(self, keys: Sequence[RemoteKey]) -> dict[RemoteKey, RemoteValue | Exception]:
        self.calls.append(list(keys))
        if self.fail:
            raise StoreUnavailableError("down", store=self.name)
        return {
            key: self.values.get(key.key)
            or RemoteKeyNotFoundError("not found", store=self.name, remote_key=key.key)
            for key in keys
        }

    def fetch_prefix(self, path: str) -> dict[str, RemoteValue]:
        self.calls.append([RemoteKey(path)])
        return {k: v for k, v in self.values.items() if k.startswith(path)}


async def test_concurrent_reads_share_one_fetch() -> None:
    store = MemoryStore({"/a": b"fake-a", "/b": b"fake-b"})
    connection = StoreConnection(KEY, store)
    cache = ReadCache(ttl=60)
    results = await asyncio.gather(
        *(cache.fetch(connection, [RemoteKey("/a"), RemoteKey("/b")]) for _ in range(20))
    )
    assert len(store.calls) == 1
    assert sorted(key.key for key in store.calls[0]) == ["/a", "/b"]
    assert all(result[RemoteKey("/a")] == b"fake-a" for result in results)


async def test_cached_values_expire() -> None:
    now = [0.0]
    store = MemoryStore({"/a": b"fake-a"})
    connection = StoreConnection(KEY, store)
    cache = ReadCache(ttl=10, clock=lambda: now[0])
    await cache.fetch(connection, [RemoteKey("/a")])
    await cache.fetch(connection, [RemoteKey("/a")])
    assert len(store.calls) == 1
    now[0] = 11.0
    await cache.fetch(connection, [RemoteKey("/a")])
    assert len(store.calls) == 2


async def test_store_failure_not_cached() -> None:
    store = MemoryStore({"/a": b"fake-a"})
    store.fail = True
    connection = StoreConnection(KEY, store)
    cache = ReadCache(ttl=60)
    try:
        await cache.fetch(connection, [RemoteKey("/a")])
    except StoreUnavailableError:
        pass
    else:
        raise AssertionError("the store failure was not raised")
    store.fail = False
    result = await cache.fetch(connection, [RemoteKey("/a")])
    assert result[RemoteKey("/a")] == b"fake-a"
    assert len(store.calls) == 2


async def test_missing_key_reported_per_key() -> None:
    store = MemoryStore({"/a": b"fake-a"})
    cache = ReadCache(ttl=60)
    result = await cache.fetch(StoreConnection(KEY, store), [RemoteKey("/a"), RemoteKey("/gone")])
    assert result[RemoteKey("/a")] == b"fake-a"
    assert isinstance(result[RemoteKey("/gone")], RemoteKeyNotFoundError)


async def test_prefix_reads_shared() -> None:
    store = MemoryStore({"/app/a": b"fake-a", "/app/b": b"fake-b"})
    connection = StoreConnection(KEY, store)
    cache = ReadCache(ttl=60)
    results = await asyncio.gather(*(cache.fetch_prefix(connection, "/app") for _ in range(5)))
    assert len(store.calls) == 1
    assert all(set(result) == {"/app/a", "/app/b"} for result in results)


def test_planner_aligns_refreshes_per_store() -> None:
    now = [1000.0]
    draws = iter([0.5, 0.0, 1.0])
    planner = RefreshPlanner(clock=lambda: now[0], rng=lambda: next(draws))
    first = planner.next_refresh("store-a", 3600)
    assert 1000 + 3600 * 0.9 <= first <= 1000 + 3600 * 1.1
    now[0] += 60  # a minute later, another ExternalSecret of the same store
    assert planner.next_refresh("store-a", 3600) == first
    other = planner.next_refresh("store-b", 3600)
    assert other != first  # another store draws its own time


def test_planner_stays_within_jitter() -> None:
    now = [0.0]
    planner = RefreshPlanner(clock=lambda: now[0], rng=lambda: 0.0)
    first = planner.next_refresh("store", 100)
    assert first == 90.0
    now[0] = 50.0  # the planned slot is now too early for a 100 s interval
    second = planner.next_refresh("store", 100)
    assert second == 140.0


async def test_store_without_maintain_never_due() -> None:
    connections = StoreConnections(lambda declaration, references: MemoryStore({}))
    await connections.get(KEY, MemoryStore({}).declaration, lambda: None)  # type: ignore[arg-type]

    # An AWS store has nothing to renew: a delay of 0 here made the maintenance loop spin.
    assert await connections.maintain() is None
    assert await connections.maintain() is None
    await connections.close_all()


def test_daemon_executor_cancels_queued_jobs() -> None:
    executor = DaemonThreadExecutor("test-executor")
    started, release = threading.Event(), threading.Event()

    def block() -> bool:
        started.set()
        return release.wait(10)

    running = executor.submit(block)
    assert started.wait(5)
    queued = executor.submit(lambda: "fake-result")

    executor.shutdown(wait=False, cancel_futures=True)

    assert queued.cancelled()
    release.set()
    assert running.result(timeout=5) is True
