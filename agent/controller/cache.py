"""Shared store connections and the shared, short-lived cache of backend reads.

`StoreConnections` opens one `Store` per store and reference namespace, at first use, and keeps it:
an AWS session or a Vault token is created once and reused by every ExternalSecret of that store,
never once per reconcile. Each connection has one worker thread, because a store is used from one
thread at a time; `maintain()` renews Vault tokens on schedule, and a changed or deleted store is
closed (a Vault token it created is revoked). Worker threads are daemon threads, and `close_all`
waits at most `CLOSE_ALL_TIMEOUT_SECONDS` for them, so a store that never responds cannot keep
the controller from stopping.

Stores opened here are named `namespace/name` (a SecretStore) or `ClusterSecretStore/name` in
logs, messages and the `store` label of metrics, because SecretStores of different namespaces
may share a name.

`ReadCache` makes ExternalSecrets that read the same remote key share one backend read. Requests
that arrive within `window` seconds of each other are merged into one `Store.fetch` call, which
batches them (10 SSM names per GetParameters), and results are kept for `ttl` seconds, keyed by
connection and remote key. Prefix reads (`dataFrom.find`, `extract` of a path) are shared the
same way. A failure of the whole call is never cached.

`RefreshPlanner` gives each ExternalSecret its next refresh time: `refreshInterval` with ±10 %
jitter, moved to a time already planned for the same store when one falls inside that jitter
range. ExternalSecrets of one store therefore come due together, and one batched read serves
them all.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Coroutine, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from agent.declarations import StoreDeclaration
from agent.errors import AgentError, StoreError, StoreUnavailableError
from agent.logs import log_event
from agent.refs import ReferenceResolver
from agent.stores import RemoteKey, RemoteValue, Store

logger = logging.getLogger("agent.controller.cache")

REFRESH_JITTER = 0.10
MAINTAIN_RETRY_SECONDS = 10.0
# How long stopping the controller waits for stores to close and revoke the Vault tokens they
# created. A store still busy with a request after that is abandoned.
CLOSE_ALL_TIMEOUT_SECONDS = 1.0

_Result = TypeVar("_Result")
Opener = Callable[[StoreDeclaration, ReferenceResolver], Store]


@dataclass(frozen=True)
class ConnectionKey:
    """What makes two connections different: the store, its spec, and where refs are read.

    `references_namespace` is the ExternalSecret's namespace when the store resolves some
    reference there (a ClusterSecretStore reference without a namespace), else None, so that
    ExternalSecrets of every namespace share one connection whenever the credentials are the same.
    """

    kind: str
    namespace: str | None
    name: str
    spec_digest: str
    references_namespace: str | None


class ExecutorClosedError(RuntimeError):
    """A job was submitted to an executor after its shutdown."""


class DaemonThreadExecutor(concurrent.futures.Executor):
    """An executor with one daemon worker thread, which never delays the process's exit.

    `ThreadPoolExecutor` joins its threads at interpreter exit even after `shutdown(wait=False)`,
    so one store request that never returns would keep the process alive.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(  # type: ignore[override]
        self, function: Callable[..., _Result], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[_Result]:
        if self._closed:
            raise ExecutorClosedError("the executor is shut down")
        future: concurrent.futures.Future[_Result] = concurrent.futures.Future()
        self._jobs.put(_Job(future, function, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; the thread ends after the jobs already queued, or after the one
        running when `cancel_futures` cancels the queued ones."""
        self._closed = True
        while cancel_futures:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(job.function(*job.args, **job.kwargs))
            except BaseException as error:
                job.future.set_exception(error)


@dataclass
class _Job:
    future: concurrent.futures.Future[Any]
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def qualified_name(name: str, namespace: str | None) -> str:
    """Return a SecretStore's name with its namespace; a ClusterSecretStore's name is unique."""
    return name if namespace is None else f"{namespace}/{name}"


def store_label(kind: str, namespace: str | None, name: str) -> str:
    """Return the name a store has in logs and metrics, as its opened `Store.name` shows it."""
    if kind == "SecretStore":
        return qualified_name(name, namespace)
    return f"{kind}/{name}"


class StoreConnection:
    """One open store, its worker thread and its maintenance schedule."""

    def __init__(self, key: ConnectionKey, store: Store) -> None:
        self.key = key
        self.store = store
        self.executor = DaemonThreadExecutor(f"store-{key.name}")
        self.maintain_at = 0.0

    async def run(self, function: Callable[..., _Result], *args: Any) -> _Result:
        """Run `function` on the worker thread; raise StoreUnavailableError once it is closed."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, function, *args)
        except ExecutorClosedError:
            # The store changed or was deleted meanwhile; its ExternalSecrets are woken anyway.
            raise StoreUnavailableError(
                "the store's connection was closed because the store changed",
                store=store_label(self.key.kind, self.key.namespace, self.key.name),
            ) from None


class StoreConnections:
    """Opens stores on first use and keeps them until their declaration changes."""

    def __init__(self, opener: Opener, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._opener = opener
        self._clock = clock
        self._open: dict[ConnectionKey, StoreConnection] = {}
        self._opening: dict[ConnectionKey, asyncio.Future[StoreConnection]] = {}

    def __len__(self) -> int:
        return len(self._open)

    async def get(
        self,
        key: ConnectionKey,
        declaration: StoreDeclaration,
        references: Callable[[], ReferenceResolver],
    ) -> StoreConnection:
        """Return the open connection for `key`, opening it (once, however many ask) if needed."""
        connection = self._open.get(key)
        if connection is not None:
            return connection
        pending = self._opening.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[StoreConnection] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            named = replace(declaration, name=qualified_name(declaration.name, key.namespace))
            store = self._opener(named, references())
            connection = StoreConnection(key, store)
            await self._close_replaced(key)
            self._open[key] = connection
            future.set_result(connection)
            log_event(logger, logging.INFO, "store_opened", store=store.name)
            return connection
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # marks it retrieved when nobody else waits
            raise
        finally:
            del self._opening[key]

    async def close_store(self, kind: str, namespace: str | None, name: str) -> int:
        """Close every connection of one store (changed or deleted); return how many closed."""
        keys = [
            key
            for key in self._open
            if (key.kind, key.namespace, key.name) == (kind, namespace, name)
        ]
        for key in keys:
            await self._close(self._open.pop(key))
        return len(keys)

    async def maintain(self) -> float | None:
        """Let due stores renew their credentials; return seconds until the next is due."""
        now = self._clock()
        for connection in list(self._open.values()):
            maintain = getattr(connection.store, "maintain", None)
            if maintain is None:
                # Nothing to renew (AWS stores): never due, or the loop would spin on it.
                connection.maintain_at = float("inf")
                continue
            if connection.maintain_at > now:
                continue
            try:
                delay = await connection.run(maintain)
            except StoreError as error:
                log_event(
                    logger,
                    logging.WARNING,
                    "store_maintain_failed",
                    store=connection.store.name,
                    retry_in_s=MAINTAIN_RETRY_SECONDS,
                    error=str(error),
                )
                delay = MAINTAIN_RETRY_SECONDS
            connection.maintain_at = float("inf") if delay is None else now + max(0.0, delay)
        due = [c.maintain_at for c in self._open.values() if c.maintain_at != float("inf")]
        return None if not due else max(0.0, min(due) - self._clock())

    async def close_all(self, *, timeout: float = CLOSE_ALL_TIMEOUT_SECONDS) -> None:
        """Close every connection at once; abandon those still busy after `timeout` seconds."""
        connections = list(self._open.values())
        self._open.clear()
        if not connections:
            return
        closing = {
            asyncio.ensure_future(self._close(connection)): connection for connection in connections
        }
        _, pending = await asyncio.wait(closing, timeout=timeout)
        for task in pending:
            task.cancel()
            connection = closing[task]
            # Its worker is a daemon thread, left to finish (or hang) on its own.
            connection.executor.shutdown(wait=False)
            log_event(
                logger,
                logging.WARNING,
                "store_close_abandoned",
                store=connection.store.name,
                timeout_s=timeout,
            )

    async def _close_replaced(self, key: ConnectionKey) -> None:
        """Close connections of the same store opened from an older spec."""
        for other in list(self._open):
            same_store = (other.kind, other.namespace, other.name) == (
                key.kind,
                key.namespace,
                key.name,
            )
            if same_store and other.spec_digest != key.spec_digest:
                await self._close(self._open.pop(other))

    async def _close(self, connection: StoreConnection) -> None:
        try:
            await connection.run(connection.store.close)
        except AgentError as error:
            log_event(
                logger,
                logging.WARNING,
                "store_close_failed",
                store=connection.store.name,
                error=str(error),
            )
        finally:
            connection.executor.shutdown(wait=False)
        log_event(logger, logging.INFO, "store_closed", store=connection.store.name)


@dataclass
class _Entry:
    value: Any
    expires_at: float


@dataclass
class _Batch:
    """Remote keys requested from one connection that wait for the next `fetch` call."""

    futures: dict[RemoteKey, asyncio.Future[RemoteValue | Exception]] = field(default_factory=dict)


class ReadCache:
    """Backend reads shared by every ExternalSecret, batched and kept for `ttl` seconds."""

    def __init__(
        self,
        *,
        ttl: float,
        window: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.window = window
        self.clock = clock
        self._values: dict[tuple[ConnectionKey, RemoteKey], _Entry] = {}
        self._prefixes: dict[tuple[ConnectionKey, str], _Entry] = {}
        self._batches: dict[ConnectionKey, _Batch] = {}
        self._in_flight: dict[tuple[ConnectionKey, RemoteKey], asyncio.Future[Any]] = {}
        self._prefix_in_flight: dict[tuple[ConnectionKey, str], asyncio.Future[Any]] = {}
        # Batches waiting for their window, and reads in flight, which `close` cancels.
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Future[Any]] = set()

    async def fetch(
        self, connection: StoreConnection, keys: Sequence[RemoteKey]
    ) -> dict[RemoteKey, RemoteValue | Exception]:
        """Return every key's value or per-key error; raise StoreError when the store fails."""
        now = self.clock()
        result: dict[RemoteKey, RemoteValue | Exception] = {}
        waiting: dict[RemoteKey, asyncio.Future[Any]] = {}
        for key in dict.fromkeys(keys):
            entry = self._values.get((connection.key, key))
            if entry is not None and entry.expires_at > now:
                result[key] = entry.value
                continue
            waiting[key] = self._request(connection, key)
        for key, future in waiting.items():
            result[key] = await asyncio.shield(future)
        return result

    async def fetch_prefix(self, connection: StoreConnection, path: str) -> Mapping[str, Any]:
        """Return every remote key beneath `path`; raise StoreError when the read fails."""
        cache_key = (connection.key, path)
        entry = self._prefixes.get(cache_key)
        if entry is not None and entry.expires_at > self.clock():
            return entry.value
        future = self._prefix_in_flight.get(cache_key)
        if future is None:
            future = self._start(self._read_prefix(connection, path))
            self._prefix_in_flight[cache_key] = future
            future.add_done_callback(lambda _: self._prefix_in_flight.pop(cache_key, None))
        return await asyncio.shield(future)

    def forget(self, key: ConnectionKey) -> None:
        """Drop every cached value of a connection (its store changed)."""
        for cache_key in [k for k in self._values if k[0] == key]:
            del self._values[cache_key]
        for prefix_key in [k for k in self._prefixes if k[0] == key]:
            del self._prefixes[prefix_key]

    def expire(self) -> None:
        """Drop expired entries, so memory follows the declared keys rather than history."""
        now = self.clock()
        for table in (self._values, self._prefixes):
            for key in [k for k, entry in table.items() if entry.expires_at <= now]:
                del table[key]

    def close(self) -> None:
        """Cancel the reads in flight, so that stopping does not wait for a store's response."""
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        self._timers.clear()
        self._batches.clear()

    def _start(self, coroutine: Coroutine[Any, Any, _Result]) -> asyncio.Future[_Result]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _request(self, connection: StoreConnection, key: RemoteKey) -> asyncio.Future[Any]:
        in_flight = self._in_flight.get((connection.key, key))
        if in_flight is not None:
            return in_flight
        batch = self._batches.get(connection.key)
        if batch is None:
            batch = self._batches[connection.key] = _Batch()

            def flush() -> None:
                self._timers.discard(timer)
                self._start(self._flush(connection))

            timer = asyncio.get_running_loop().call_later(self.window, flush)
            self._timers.add(timer)
        future = batch.futures.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            batch.futures[key] = future
            self._in_flight[(connection.key, key)] = future
        return future

    async def _flush(self, connection: StoreConnection) -> None:
        batch = self._batches.pop(connection.key)
        keys = list(batch.futures)
        try:
            values = await connection.run(connection.store.fetch, keys)
        except BaseException as error:
            for key, future in batch.futures.items():
                self._in_flight.pop((connection.key, key), None)
                if not future.done():
                    future.set_exception(error)
                    future.exception()
            if not isinstance(error, Exception):
                raise
            return
        expires_at = self.clock() + self.ttl
        store_name = connection.store.name
        for key, future in batch.futures.items():
            missing = StoreError("no value returned for this key", store=store_name)
            value = values.get(key, missing)
            self._values[(connection.key, key)] = _Entry(value, expires_at)
            self._in_flight.pop((connection.key, key), None)
            if not future.done():
                future.set_result(value)

    async def _read_prefix(self, connection: StoreConnection, path: str) -> Mapping[str, Any]:
        values = await connection.run(connection.store.fetch_prefix, path)
        self._prefixes[(connection.key, path)] = _Entry(values, self.clock() + self.ttl)
        return values


class RefreshPlanner:
    """Plans refresh times so that ExternalSecrets of one store come due together."""

    def __init__(
        self,
        *,
        jitter: float = REFRESH_JITTER,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.jitter = jitter
        self.clock = clock
        self.rng = rng
        self._slots: dict[Hashable, list[float]] = {}

    def next_refresh(self, group: Hashable, interval: float) -> float:
        """Return the clock time of the next refresh, within `interval` ± jitter from now."""
        now = self.clock()
        earliest = now + interval * (1 - self.jitter)
        latest = now + interval * (1 + self.jitter)
        slots = self._slots.setdefault(group, [])
        del slots[: bisect.bisect_left(slots, now)]
        index = bisect.bisect_left(slots, earliest)
        if index < len(slots) and slots[index] <= latest:
            return slots[index]
        planned = now + interval * (1 + self.jitter * (2 * self.rng() - 1))
        bisect.insort(slots, planned)
        return planned
