"""The sync loop: fetch what the declarations name, build snapshots, project them, on schedule.

One round takes every due target, groups them by store, fetches each store's remote keys in one
batched call (different stores in parallel threads), then builds and writes each target on its
own: a target whose keys all arrived is
switched, a target with any failed key keeps its previous generation (last good wins).

`run_once` serves the init container: it retries transient failures until a deadline and reports
the rest. `run_forever` serves the sidecar: every ExternalSecret is refreshed on its own interval
with ±10 % jitter, failures back off exponentially from 1 s to 5 min, and the loop sleeps until
the next deadline instead of polling. Each store is used by one thread at a time.

In `run_forever` the loop does not wait for a store's group: each group runs in a worker thread
of its own, and the loop goes on with the other stores, lease renewals and reloads. A store that
is slow or never responds delays only its own targets; they are not due again until its worker
finishes. A reload that changes such a store or its targets waits for that worker.

Fetch workers are daemon threads, and nothing joins them at exit: a request that hangs (a store
that accepts the connection and never responds) must not keep a stopping agent alive until the
HTTP client's read timeout. `Syncer.abandon_in_flight` logs the stores whose requests are left
behind.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.declarations import Declarations, ExternalSecretDeclaration
from agent.errors import AgentError, StoreError, StoreUnavailableError
from agent.logs import log_event
from agent.metrics import Metrics
from agent.refs import Refs
from agent.settings import Settings
from agent.snapshot import GeneratedValue, LeaseUse, SnapshotError, build_snapshot, remote_keys
from agent.stores import RemoteKey, RemoteValue, Store, open_store
from agent.writer import ProjectionError, Writer

logger = logging.getLogger("agent.sync")

BACKOFF_MIN_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0
REFRESH_JITTER = 0.10
STORE_RETRY_SECONDS = 10.0
# `once` makes its last attempt at least this long before --timeout ends.
FINAL_ATTEMPT_MARGIN = 0.5
MAX_PARALLEL_STORES = 8

# Steps of a round for one target, kept in TargetState.step.
STEP_WAITING = "waiting"  # queued behind another target of the same store
STEP_FETCH = "fetch"  # waiting for the store's response
STEP_GENERATE = "generate"  # waiting for a generatorRef's dynamic secret (a Vault request)
STEP_BUILD = "build"  # building the snapshot (templates) and writing the files


def backoff_delay(failures: int, *, rng: Callable[[], float] = random.random) -> float:
    """Delay before retry number `failures` (1-based): drawn between half the ceiling and the
    ceiling, which doubles from 2 s up to 5 min, so delays stay between 1 s and 5 min and
    many agents do not retry in step."""
    ceiling = min(BACKOFF_MAX_SECONDS, 2 * BACKOFF_MIN_SECONDS * 2 ** max(0, failures - 1))
    floor = max(BACKOFF_MIN_SECONDS, ceiling / 2)
    return floor + (ceiling - floor) * rng()


@dataclass
class TargetState:
    """The loop's state for one target between rounds."""

    declaration: ExternalSecretDeclaration
    next_due: float = 0.0
    failures: int = 0
    complete: bool = False
    finished: bool = False
    last_error: AgentError | None = None
    last_success: float | None = None
    digests: dict[str, bytes] | None = None
    # What the round in flight is doing for this target (STEP_*), None outside a round. `once`
    # reads it after a timeout to say what was still running.
    step: str | None = None

    @property
    def target(self) -> str:
        return self.declaration.target


@dataclass(frozen=True)
class Change:
    """A target switched to a new generation, with the names (never values) of its secret keys
    that were added, changed or removed. A target's first write lists every key as added.

    `first` is true when the target had no generation before, neither written by this process
    nor adopted from disk, so readers have had no older values from it."""

    target: str
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    first: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(sorted((*self.added, *self.changed, *self.removed)))


@dataclass
class RoundResult:
    """Targets written, unchanged and failed in one round."""

    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, AgentError] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)


# Called in the sync thread after a round that switched at least one target. A listener must
# return quickly (hand the work to its own thread) and must not raise.
ChangeListener = Callable[[list[Change]], None]

# Called in the sync thread when its deadline has come. It returns the seconds until it wants to
# run again, or None when it has nothing scheduled.
PeriodicTask = Callable[[], float | None]


class LeaseSource(Protocol):
    """Supplies the values of `dataFrom[].sourceRef.generatorRef` entries (agent.leases)."""

    def values_for(
        self, declaration: ExternalSecretDeclaration
    ) -> Mapping[int, GeneratedValue | StoreError]:
        """Return each generator entry's response (or failure) by its `dataFrom` index."""

    def committed(self, target: str, leases: tuple[LeaseUse, ...]) -> None:
        """Learn that the target's current generation holds these leases."""

    def declarations_applied(self) -> None:
        """Look at new declarations: a generator may change while its ExternalSecrets do not."""


class StorePool:
    """Opens each declared store once, on first use, and closes them all at the end."""

    def __init__(self, declarations: Declarations, *, refs: Refs, metrics: Metrics) -> None:
        self._declarations = declarations
        self._refs = refs
        self._metrics = metrics
        self._open: dict[tuple[str, str], Store] = {}

    def get(self, ref: tuple[str, str]) -> Store:
        store = self._open.get(ref)
        if store is None:
            store = open_store(
                self._declarations.stores[ref], refs=self._refs, metrics=self._metrics
            )
            self._open[ref] = store
        return store

    def opened(self) -> list[Store]:
        return list(self._open.values())

    def replace(self, declarations: Declarations, *, close: set[tuple[str, str]]) -> None:
        """Use new declarations; close the open stores in `close` (changed or removed) so that
        they are opened again from their new declaration on next use."""
        for ref in close:
            store = self._open.pop(ref, None)
            if store is not None:
                self._close(store)
        self._declarations = declarations

    def close(self) -> None:
        for store in self._open.values():
            self._close(store)
        self._open.clear()

    @staticmethod
    def _close(store: Store) -> None:
        try:
            store.close()
        except AgentError as error:
            log_event(
                logger, logging.WARNING, "store_close_failed", store=store.name, error=str(error)
            )


class Syncer:
    """Keeps every declared target in sync with its store."""

    def __init__(
        self,
        declarations: Declarations,
        *,
        settings: Settings,
        writer: Writer,
        metrics: Metrics,
        stores: StorePool | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.declarations = declarations
        self.settings = settings
        self.writer = writer
        self.metrics = metrics
        self.stores = stores or StorePool(
            declarations,
            refs=Refs(settings.refs_dir, pod_token=settings.pod_token),
            metrics=metrics,
        )
        self.clock = clock
        self.rng = rng
        self.lock = threading.Lock()
        self.states = {d.target: TargetState(d) for d in declarations.external_secrets}
        self._store_due: dict[str, float] = {}
        self._cleanup_due: float | None = None
        self.listeners: list[ChangeListener] = []
        # Set by agent.leases.LeaseManager.attach; without it generatorRef entries fail.
        self.leases: LeaseSource | None = None
        self._tasks: list[tuple[PeriodicTask, list[float]]] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pending_declarations: Declarations | None = None
        # Store name -> the step a round is waiting for there; see `in_flight`.
        self._in_flight: dict[str, str] = {}
        # run_forever: the store groups a worker is syncing, and the results of finished ones
        # (or the defect that stopped one), guarded by `lock`.
        self._busy: set[tuple[str, str] | None] = set()
        self._busy_targets: set[str] = set()
        self._finished: list[RoundResult | BaseException] = []
        self._worker_done = threading.Event()
        # In once mode only transient failures are retried, so only they log a retry delay.
        self.once_mode = False
        # True once every target had a complete generation on disk. The agent then stays ready,
        # because a mistake in a target added by a reload must not remove a running pod from its
        # Service. Such a target is reported in the body only.
        self._was_ready = False

    # --- one round ------------------------------------------------------------------------------

    def sync(self, states: list[TargetState]) -> RoundResult:
        """Fetch, build and write the given targets once; update their state and metrics."""
        groups: dict[tuple[str, str], list[TargetState]] = defaultdict(list)
        for state in states:
            state.step = STEP_WAITING
            groups[state.declaration.store_ref].append(state)
        results = [RoundResult() for _ in groups]
        work = list(zip(groups.items(), results, strict=True))
        if len(work) == 1:
            (ref, group), result = work[0]
            self._sync_store(ref, group, result)
        else:
            self._sync_in_parallel(work)
        merged = RoundResult()
        for result in results:
            merged.changed += result.changed
            merged.unchanged += result.unchanged
            merged.failed.update(result.failed)
            merged.changes += result.changes
        if merged.changes:
            self._announce(merged.changes)
        return merged

    def _sync_in_parallel(
        self, work: list[tuple[tuple[tuple[str, str], list[TargetState]], RoundResult]]
    ) -> None:
        """Sync each store's group in up to MAX_PARALLEL_STORES daemon threads, because stores
        are independent and their requests overlap. Each store and each target is still handled
        by one thread only. Waits for every group, however long a request hangs; a stopping
        agent does not wait for this method (see `abandon_in_flight`)."""
        queue = list(work)
        queue_lock = threading.Lock()
        failures: list[BaseException] = []

        def drain() -> None:
            while True:
                with queue_lock:
                    if not queue:
                        return
                    (ref, group), result = queue.pop(0)
                try:
                    self._sync_store(ref, group, result)
                except BaseException as error:  # re-raised in the calling thread below
                    failures.append(error)

        workers = [
            threading.Thread(target=drain, name=f"sync-fetch-{index}", daemon=True)
            for index in range(min(MAX_PARALLEL_STORES, len(work)))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if failures:
            raise failures[0]

    def in_flight(self) -> dict[str, str]:
        """Return the stores that a round is still using, each with the step it waits for.

        The step is STEP_FETCH, STEP_GENERATE or STEP_BUILD of one of its targets. Safe from any
        thread.
        """
        with self.lock:
            return dict(self._in_flight)

    def abandon_in_flight(self) -> list[str]:
        """Log `fetch_abandoned` for each store that a round is still using, for a stopping
        agent that exits without waiting for it, and return their names. The daemon threads
        doing that work end with the process; an interrupted projection leaves only a temporary
        directory that the next projection removes."""
        abandoned = self.in_flight()
        for store, step in sorted(abandoned.items()):
            log_event(logger, logging.WARNING, "fetch_abandoned", store=store, step=step)
        return sorted(abandoned)

    def _set_in_flight(self, store: str, step: str | None) -> None:
        with self.lock:
            if step is None:
                self._in_flight.pop(store, None)
            else:
                self._in_flight[store] = step

    def _announce(self, changes: list[Change]) -> None:
        for listener in list(self.listeners):
            try:
                listener(changes)
            except Exception as error:  # a listener's defect must not stop syncing
                log_event(
                    logger,
                    logging.ERROR,
                    "change_listener_failed",
                    listener=getattr(listener, "__qualname__", repr(listener)),
                    error=f"{type(error).__name__}: {error}",
                )

    def _sync_store(
        self, ref: tuple[str, str] | None, group: list[TargetState], result: RoundResult
    ) -> None:
        started = time.perf_counter()
        keys = list(dict.fromkeys(k for s in group for k in remote_keys(s.declaration)))
        if ref is None:  # targets filled by generators only: nothing to fetch from a store
            for state in group:
                self._sync_target(state, None, {}, _no_prefixes, result, started)
            return
        name = _store_label(ref)
        self._set_in_flight(name, STEP_FETCH)
        try:
            self._fetch_and_build(ref, group, keys, result, started)
        finally:
            self._set_in_flight(name, None)

    def _fetch_and_build(
        self,
        ref: tuple[str, str],
        group: list[TargetState],
        keys: list[RemoteKey],
        result: RoundResult,
        started: float,
    ) -> None:
        name = _store_label(ref)
        for state in group:
            state.step = STEP_FETCH
        try:
            store = self.stores.get(ref)
            fetched: Mapping[RemoteKey, RemoteValue | Exception] = store.fetch(keys) if keys else {}
        except StoreError as error:
            for state in group:
                self._record_failure(state, error, result)
            return
        for state in group:
            state.step = STEP_WAITING

        prefixes: dict[str, Any] = {}
        building: list[TargetState] = []

        def read_prefix(path: str) -> Mapping[str, RemoteValue]:
            # Several targets may import the same prefix; read it once per round.
            if path not in prefixes:
                building[0].step = STEP_FETCH
                self._set_in_flight(name, STEP_FETCH)
                try:
                    prefixes[path] = store.fetch_prefix(path)
                except StoreError as error:
                    prefixes[path] = error
                building[0].step = STEP_BUILD
                self._set_in_flight(name, f"{STEP_BUILD}:{building[0].target}")
            cached = prefixes[path]
            if isinstance(cached, StoreError):
                raise cached
            return cached

        for state in group:
            building[:] = [state]
            self._set_in_flight(name, f"{STEP_BUILD}:{state.target}")
            self._sync_target(state, store, fetched, read_prefix, result, started)

    def _sync_target(
        self,
        state: TargetState,
        store: Store | None,
        fetched: Mapping[RemoteKey, RemoteValue | Exception],
        read_prefix: Callable[[str], Mapping[str, RemoteValue]],
        result: RoundResult,
        started: float,
    ) -> None:
        declaration = state.declaration
        state.step = STEP_GENERATE
        generated = self.leases.values_for(declaration) if self.leases is not None else None
        state.step = STEP_BUILD
        try:
            snapshot = build_snapshot(
                declaration,
                store_name=store.name if store is not None else "-",
                fetched=fetched,
                read_prefix=read_prefix,
                allow_nested=self.settings.nested_keys,
                generated=generated,
            )
            changed = self.writer.project(
                declaration.target,
                snapshot.data,
                ownership=declaration.ownership(self.settings.ownership),
            )
        except (SnapshotError, ProjectionError) as error:
            self._record_failure(state, error, result)
            return
        finally:
            state.step = None
        if self.leases is not None and snapshot.leases:
            self.leases.committed(declaration.target, snapshot.leases)
        digests = _digests(snapshot.data)
        if changed:
            result.changes.append(_compare(state.target, state.digests, digests))
        state.digests = digests
        self._record_success(
            state,
            changed=changed,
            keys=len(snapshot.data),
            result=result,
            duration=time.perf_counter() - started,
        )

    def _record_success(
        self,
        state: TargetState,
        *,
        changed: bool,
        keys: int,
        result: RoundResult,
        duration: float,
    ) -> None:
        now = self.clock()
        with self.lock:
            state.failures = 0
            state.last_error = None
            state.complete = True
            state.last_success = time.time()
            interval = state.declaration.spec.refresh_interval
            if interval <= 0:
                state.finished = True
            else:
                jitter = 1 + REFRESH_JITTER * (2 * self.rng() - 1)
                state.next_due = now + interval * jitter
        (result.changed if changed else result.unchanged).append(state.target)
        self.metrics.sync_total.labels(state.target, "success" if changed else "unchanged").inc()
        self.metrics.last_success.labels(state.target).set(state.last_success)
        self.metrics.target_ready.labels(state.target).set(1)
        log_event(
            logger,
            logging.INFO,
            "sync_done",
            target=state.target,
            keys=keys,
            changed=int(changed),
            duration_ms=round(duration * 1000),
        )

    def _record_failure(self, state: TargetState, error: AgentError, result: RoundResult) -> None:
        state.step = None
        with self.lock:
            state.failures += 1
            state.last_error = error
            delay = backoff_delay(state.failures, rng=self.rng)
            state.next_due = self.clock() + delay
        result.failed[state.target] = error
        self.metrics.sync_total.labels(state.target, "error").inc()
        transient = _is_transient(error)
        retry = {"retry_in_s": round(delay, 1)} if transient or not self.once_mode else {}
        log_event(
            logger,
            logging.WARNING,
            "sync_failed",
            target=state.target,
            attempt=state.failures,
            **retry,
            transient=int(transient),
            error=str(error),
        )

    # --- modes ----------------------------------------------------------------------------------

    def run_once(self, *, timeout: float) -> RoundResult:
        """Sync every target once, retrying transient failures until `timeout` seconds pass.

        The timeout also bounds a request that hangs: targets still waiting for a store when
        it passes are reported as failed. Returns the outcome of every target: a target is in
        `failed` if it never succeeded.
        """
        self.once_mode = True
        deadline = self.clock() + timeout
        pending = list(self.states.values())
        outcome = RoundResult()
        while pending:
            started = self.clock()
            result = self._sync_before(pending, deadline)
            if result is None:
                for state in pending:
                    outcome.failed[state.target] = _timed_out(state, timeout)
                return outcome  # a round still runs: leave the volume to it
            outcome.changed += result.changed
            outcome.unchanged += result.unchanged
            outcome.changes += result.changes
            retry = [
                s
                for s in pending
                if s.target in result.failed and _is_transient(result.failed[s.target])
            ]
            for state in pending:
                if state.target in result.failed and state not in retry:
                    outcome.failed[state.target] = result.failed[state.target]
            if not retry:
                break
            wake = min(s.next_due for s in retry)
            if wake >= deadline - FINAL_ATTEMPT_MARGIN:
                # The backoff would end past the deadline: make one last attempt shortly before
                # it, leaving about the time the last round took, so that an init container
                # waiting for a restarting store uses its whole timeout.
                margin = max(FINAL_ATTEMPT_MARGIN, 1.5 * (self.clock() - started))
                wake = deadline - margin
            if wake <= self.clock():
                for state in retry:
                    outcome.failed[state.target] = result.failed[state.target]
                break
            time.sleep(max(0.0, wake - self.clock()))
            pending = retry
        self._remove_replaced(deadline)
        return outcome

    def _remove_replaced(self, deadline: float) -> None:
        """Remove the generations `once` replaced, waiting for their grace period if it ends
        before `deadline`, so that old values do not stay on the volume after it exits."""
        delay = self.writer.remove_superseded()
        if delay is None or self.clock() + delay > deadline:
            return
        time.sleep(delay)
        self.writer.remove_superseded()

    def _sync_before(self, states: list[TargetState], deadline: float) -> RoundResult | None:
        """Run one round in a helper thread; return None if it has not ended by `deadline`.

        The thread is a daemon: `once` exits right after a timeout, and an interrupted
        projection leaves only a temporary directory that the next projection removes.
        """
        outcome: list[RoundResult] = []
        failure: list[BaseException] = []

        def round_() -> None:
            try:
                outcome.append(self.sync(states))
            except BaseException as error:
                failure.append(error)

        worker = threading.Thread(target=round_, name="sync-once", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - self.clock()))
        if failure:
            raise failure[0]
        return outcome[0] if outcome else None

    def adopt(self) -> None:
        """Mark targets that already have a complete generation on disk (an init container's
        work) as complete, so readiness is true from the start and nothing is rewritten."""
        for state in self.states.values():
            self._adopt_target(state)

    def _adopt_target(self, state: TargetState) -> None:
        try:
            current = self.writer.read(state.target)
        except ProjectionError as error:
            log_event(
                logger, logging.WARNING, "adopt_failed", target=state.target, error=str(error)
            )
            current = None
        if current is not None:
            state.complete = True
            state.digests = _digests(current)
            self.metrics.target_ready.labels(state.target).set(1)
        else:
            self.metrics.target_ready.labels(state.target).set(0)

    def run_forever(self) -> None:
        """Keep every target in sync until `request_stop` is called; returns within a moment of
        it unless a store's worker is still busy (see the module docstring)."""
        self.adopt()
        while not self._stopping.is_set():
            # Cleared before the work, so a wake-up requested during the work is not lost.
            self._wake.clear()
            self._apply_pending_declarations()
            written = self._collect_finished()
            now = self.clock()
            due = [
                state
                for state in self.states.values()
                if not state.finished and state.next_due <= now and not self._is_busy(state)
            ]
            if due:
                self._dispatch(due)
            self._maintain_stores()
            self._remove_superseded(changed=written)
            self._run_tasks()
            self._wake.wait(self._seconds_until_next())
        while True:
            with self.lock:
                if not self._busy:
                    break
                self._worker_done.clear()
            self._worker_done.wait()
        self._collect_finished()
        # Generations whose grace has passed go now. One replaced less than the grace period ago
        # stays until the next start: waiting for it would use up the stop budget (STOP_SECONDS
        # in agent.cli) that closing the stores, and revoking their Vault tokens, needs.
        self.writer.remove_superseded()

    def _is_busy(self, state: TargetState) -> bool:
        return state.declaration.store_ref in self._busy

    def _busy_stores(self) -> set[str]:
        """Return the names of the stores a worker is using."""
        with self.lock:
            return {_store_label(ref) for ref in self._busy if ref is not None}

    def _dispatch(self, states: list[TargetState]) -> None:
        """Start one worker per store group of `states`; each reports to `_finished`."""
        groups: dict[tuple[str, str] | None, list[TargetState]] = defaultdict(list)
        for state in states:
            state.step = STEP_WAITING
            groups[state.declaration.store_ref].append(state)
        for ref, group in groups.items():
            with self.lock:
                self._busy.add(ref)
                self._busy_targets.update(state.target for state in group)
            worker = threading.Thread(
                target=self._sync_group,
                args=(ref, group),
                name=f"sync-{'generators' if ref is None else _store_label(ref)}",
                daemon=True,
            )
            worker.start()

    def _sync_group(self, ref: tuple[str, str] | None, group: list[TargetState]) -> None:
        result = RoundResult()
        outcome: RoundResult | BaseException = result
        try:
            self._sync_store(ref, group, result)
        except BaseException as error:  # re-raised by the loop in `_collect_finished`
            outcome = error
        finally:
            with self.lock:
                self._busy.discard(ref)
                self._busy_targets.difference_update(state.target for state in group)
                self._finished.append(outcome)
                self._worker_done.set()
            self.wake()

    def _collect_finished(self) -> bool:
        """Announce the changes of the groups that finished; return whether any group ran."""
        with self.lock:
            finished, self._finished = self._finished, []
        if not finished:
            return False
        changes: list[Change] = []
        for outcome in finished:
            if isinstance(outcome, BaseException):
                raise outcome
            changes += outcome.changes
        if changes:
            self._announce(changes)
        return True

    def request_stop(self) -> None:
        """Make `run_forever` return after the current step; safe from any thread."""
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Make the loop look at its deadlines now; safe from any thread."""
        self._wake.set()

    def sync_soon(self, target: str) -> None:
        """Sync `target` at the next turn of the loop (its lease was rotated); safe from any
        thread."""
        with self.lock:
            state = self.states.get(target)
            if state is not None:
                state.next_due = self.clock()
                state.finished = False
        self.wake()

    def add_task(self, task: PeriodicTask) -> None:
        """Run `task` in the sync thread at the next turn of the loop and then on its schedule."""
        self._tasks.append((task, [0.0]))
        self.wake()

    def _run_tasks(self) -> None:
        for task, due in self._tasks:
            if due[0] > self.clock() or due[0] == float("inf"):
                continue
            try:
                delay = task()
            except Exception as error:  # one task's defect must not stop syncing
                log_event(
                    logger,
                    logging.ERROR,
                    "task_failed",
                    task=getattr(task, "__qualname__", repr(task)),
                    error=f"{type(error).__name__}: {error}",
                )
                delay = STORE_RETRY_SECONDS
            due[0] = float("inf") if delay is None else self.clock() + max(0.0, delay)

    def reschedule_task(self, task: PeriodicTask, delay: float = 0.0) -> None:
        """Run a registered task after `delay` seconds; safe from any thread."""
        for registered, due in self._tasks:
            if registered is task:
                due[0] = self.clock() + delay
        self.wake()

    # --- declarations reload ------------------------------------------------------------------

    def replace_declarations(self, declarations: Declarations) -> None:
        """Switch to a new, already validated set of declarations at the next turn of the loop;
        safe from any thread."""
        with self.lock:
            self._pending_declarations = declarations
        self.wake()

    def _apply_pending_declarations(self) -> None:
        with self.lock:
            declarations, self._pending_declarations = self._pending_declarations, None
        if declarations is None:
            return

        changed_stores = _changed_stores(self.declarations, declarations)
        if self._reload_must_wait(declarations, changed_stores):
            with self.lock:
                if self._pending_declarations is None:
                    self._pending_declarations = declarations
            return  # applied when the busy worker finishes (it wakes the loop)
        self.stores.replace(declarations, close=changed_stores)

        added, updated = [], []
        states: dict[str, TargetState] = {}
        for declaration in declarations.external_secrets:
            previous = self.states.get(declaration.target)
            state = self._next_state(previous, declaration, changed_stores)
            if previous is None:
                added.append(declaration.target)
            elif state is not previous:
                updated.append(declaration.target)
            states[declaration.target] = state

        with self.lock:
            self._note_ready()
        removed = [target for target in self.states if target not in states]
        for target in removed:
            # Limitation: the files of a removed target stay on disk (last good wins); only
            # its metrics and readiness entry go.
            self.metrics.forget_target(target)
        with self.lock:
            self.declarations = declarations
            self.states = states
        if self.leases is not None:
            self.leases.declarations_applied()
        log_event(
            logger,
            logging.INFO,
            "declarations_applied",
            added=len(added),
            updated=len(updated),
            removed=len(removed),
            targets=",".join(sorted(added + updated + removed)) or "-",
        )

    def _reload_must_wait(
        self, declarations: Declarations, changed_stores: set[tuple[str, str]]
    ) -> bool:
        """Tell whether `declarations` change a store, or a target, that a worker is using."""
        with self.lock:
            busy, busy_targets = set(self._busy), set(self._busy_targets)
        if not busy:
            return False
        if busy & changed_stores:
            return True
        new = {d.target: d for d in declarations.external_secrets}
        for target in busy_targets:
            state = self.states.get(target)
            declaration = new.get(target)
            if state is None or declaration is None:
                return True
            if self._next_state_changes(state, declaration, changed_stores):
                return True
        return False

    @staticmethod
    def _next_state_changes(
        previous: TargetState,
        declaration: ExternalSecretDeclaration,
        changed_stores: set[tuple[str, str]],
    ) -> bool:
        return (
            previous.declaration.spec != declaration.spec
            or previous.declaration.metadata.annotations != declaration.metadata.annotations
            or declaration.store_ref in changed_stores
        )

    def _next_state(
        self,
        previous: TargetState | None,
        declaration: ExternalSecretDeclaration,
        changed_stores: set[tuple[str, str]],
    ) -> TargetState:
        """Return a target's state under new declarations: new (due now), updated (due now,
        keeping what is on disk) or the previous one when nothing that matters changed."""
        if previous is None:
            state = TargetState(declaration)
            self._adopt_target(state)
            return state
        if self._next_state_changes(previous, declaration, changed_stores):
            return TargetState(
                declaration,
                complete=previous.complete,
                digests=previous.digests,
                last_success=previous.last_success,
            )
        previous.declaration = declaration
        return previous

    def _remove_superseded(self, *, changed: bool) -> None:
        """Remove old generations once their grace period has passed (see Writer)."""
        if not changed and (self._cleanup_due is None or self._cleanup_due > self.clock()):
            return
        delay = self.writer.remove_superseded()
        self._cleanup_due = None if delay is None else self.clock() + delay

    def _maintain_stores(self) -> None:
        """Let stores that keep credentials alive (Vault tokens) renew them when due.

        A store that a worker is using is skipped: each store is used by one thread at a time.
        """
        now = self.clock()
        in_use = self._busy_stores()
        for store in self.stores.opened():
            maintain = getattr(store, "maintain", None)
            if maintain is None or self._store_due.get(store.name, 0.0) > now:
                continue
            if store.name in in_use:
                continue
            try:
                delay = maintain()
            except StoreError as error:
                log_event(
                    logger,
                    logging.WARNING,
                    "store_maintain_failed",
                    store=store.name,
                    retry_in_s=STORE_RETRY_SECONDS,
                    error=str(error),
                )
                delay = STORE_RETRY_SECONDS
            if delay is None:
                self._store_due.pop(store.name, None)
            else:
                self._store_due[store.name] = now + max(0.0, delay)

    def _seconds_until_next(self) -> float | None:
        # A busy group's targets are due again when its worker finishes, which wakes the loop.
        deadlines = [
            s.next_due for s in self.states.values() if not s.finished and not self._is_busy(s)
        ]
        in_use = self._busy_stores()
        deadlines += [due for name, due in self._store_due.items() if name not in in_use]
        if self._cleanup_due is not None:
            deadlines.append(self._cleanup_due)
        deadlines += [due[0] for _, due in self._tasks if due[0] != float("inf")]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self.clock())

    # --- health ---------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Return whether every target has had a complete generation on disk, and a body naming
        targets that are pending, stale (failing after an earlier success) or failing.

        Readiness never goes back to false: targets that a reload added afterwards appear only
        in the body until their first complete write.
        """
        targets: dict[str, Any] = {}
        problems = getattr(self.leases, "problems", dict)()
        with self.lock:
            for state in self.states.values():
                error = state.last_error
                message = str(error) if error is not None else problems.get(state.target)
                if message is not None:
                    status = "stale" if state.complete else "failing"
                else:
                    status = "ok" if state.complete else "pending"
                entry: dict[str, Any] = {"status": status}
                if message is not None:
                    entry["error"] = message
                if state.last_success is not None:
                    entry["last_success"] = round(state.last_success, 3)
                targets[state.target] = entry
            ready = self._note_ready()
        return ready, {"ready": ready, "targets": targets}

    def _note_ready(self) -> bool:
        """Return readiness and remember the first time every target is complete.

        Call it with `self.lock` acquired.
        """
        if not self._was_ready:
            self._was_ready = all(state.complete for state in self.states.values())
        return self._was_ready


def _no_prefixes(path: str) -> Mapping[str, RemoteValue]:
    raise AssertionError("the loader requires a store for dataFrom.find and extract")


def _store_label(ref: tuple[str, str]) -> str:
    kind, name = ref
    return name if kind == "SecretStore" else f"{kind}/{name}"


def _timed_out(state: TargetState, timeout: float) -> AgentError:
    """Return the failure of a target whose round was still running at the deadline, naming
    what it was still doing: waiting for the store, or building the target."""
    store = _store_label(state.declaration.store_ref)
    if state.step == STEP_BUILD:
        return AgentError(
            f"building the target (templates and files) did not finish within the {timeout:g} s "
            f"timeout; store {store} had responded; check the target's templates, or raise "
            "--timeout"
        )
    if state.step == STEP_WAITING:
        return AgentError(
            f"not built within the {timeout:g} s timeout because building the other targets "
            f"of store {store} took that long; store {store} had responded; check those "
            "targets' templates, or raise --timeout"
        )
    if state.last_error is not None:
        # The round in flight hung, but an earlier attempt failed for a reason (throttling,
        # for instance) that is more useful to the reader than the timeout.
        return StoreUnavailableError(
            f"not written within the {timeout:g} s timeout; the last attempt failed: "
            f"{state.last_error}",
            store=store,
            fix="fix that failure, or raise --timeout",
        )
    what = "dynamic secret (generatorRef)" if state.step == STEP_GENERATE else "response"
    return StoreUnavailableError(
        f"no {what} within the {timeout:g} s timeout",
        store=store,
        fix="check that the store is reachable from the pod, or raise --timeout",
    )


def _is_transient(error: AgentError) -> bool:
    if isinstance(error, SnapshotError):
        return error.transient
    return bool(getattr(error, "transient", False))


def _changed_stores(old: Declarations, new: Declarations) -> set[tuple[str, str]]:
    """Return the stores whose declaration changed or was removed."""
    return {
        ref
        for ref, store in old.stores.items()
        if new.stores.get(ref) is None or new.stores[ref].spec != store.spec
    }


def _digests(data: Mapping[str, bytes]) -> dict[str, bytes]:
    """Fingerprints of each value, so the loop can name changed keys without keeping values."""
    return {key: hashlib.sha256(value).digest() for key, value in data.items()}


def _compare(target: str, before: dict[str, bytes] | None, after: dict[str, bytes]) -> Change:
    if before is None:
        return Change(target, added=tuple(sorted(after)), first=True)
    return Change(
        target,
        added=tuple(sorted(set(after) - set(before))),
        changed=tuple(sorted(k for k in after if k in before and before[k] != after[k])),
        removed=tuple(sorted(set(before) - set(after))),
    )
