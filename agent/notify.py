"""Notify targets: tell the application, once per burst of changes, that a target's content changed.

A `Notifier` listens to the sync loop (`Syncer.listeners`) and hands each round's changes to one
worker thread per notify target, so a slow or failing notify target delays neither writing nor
the other notify targets. A worker delivers every change that reaches it within `delay` seconds
of the first one together: one signal, one HTTP request or one command run. A failed delivery is
retried with exponential backoff and jitter up to the notify target's `retries`. A newer change
supersedes a pending retry, and the next delivery then carries the names of both.

What is not notified: a refresh that found the same content (the sync loop reports no change),
and the initial fill, which is a target's first generation written before the agent was ready
for the first time. No reader can have seen older values of such a target, and a signal to an
application that is still starting may kill it before it installs its handler.

Only names travel: target names and `target/secret key` names, never values. Header values are
never logged. A command's output goes to the agent's stdout and stderr in whole lines (a final
newline is added when missing), never into a log line of the agent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import Counter

from agent.declarations import NotifyTargetDeclaration, Origin
from agent.errors import SettingsError
from agent.logs import log_event
from agent.models import NotifySignal, NotifyTargetSpec
from agent.notify_kinds import Action, Attempt, ChangedNames, build_action
from agent.refs import Refs

if TYPE_CHECKING:
    from agent.metrics import Metrics
    from agent.settings import Settings
    from agent.sync import Change, Syncer

logger = logging.getLogger("agent.notify")

DEFAULT_DELAY_SECONDS = 2.0
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
# Name of the notify target that `--notify-signal` declares.
SETTING_NOTIFY_TARGET = "notify-signal"
# How often the sync loop checks readiness until the agent has been ready once.
READINESS_CHECK_SECONDS = 0.5


def retry_delay(
    failures: int,
    *,
    minimum: float = RETRY_MIN_SECONDS,
    maximum: float = RETRY_MAX_SECONDS,
    rng: Callable[[], float] = random.random,
) -> float:
    """Return the delay before retry number `failures` (1-based).

    The ceiling doubles from 2 × `minimum` up to `maximum`, and the delay is drawn between half
    the ceiling and the ceiling, so many agents do not retry in step.
    """
    ceiling = min(maximum, 2 * minimum * 2 ** max(0, failures - 1))
    floor = max(minimum, ceiling / 2)
    return floor + max(0.0, ceiling - floor) * rng()


def build_notifier(settings: Settings, syncer: Syncer) -> Notifier:
    """Create the notifier of `run` with the settings' delay and `--notify-signal`, and attach
    it to `syncer`. Raises SettingsError when a NotifyTarget uses the setting's name."""
    extra = []
    if settings.notify_signal is not None:
        extra.append(notify_target_from_setting(settings.notify_signal))
        for declared in syncer.declarations.notify_targets:
            if declared.name == SETTING_NOTIFY_TARGET:
                raise SettingsError(
                    f"--notify-signal declares a notify target named {SETTING_NOTIFY_TARGET}, "
                    f"and so does {declared.origin.source} document {declared.origin.document}; "
                    "rename that NotifyTarget"
                )
    notifier = Notifier(
        refs=Refs(settings.refs_dir, pod_token=settings.pod_token),
        metrics=syncer.metrics,
        delay=settings.notify_delay,
        extra=extra,
    )
    notifier.attach(syncer)
    return notifier


def notify_target_from_setting(value: str) -> NotifyTargetDeclaration:
    """Build the notify target that `--notify-signal PROCESS_NAME[:SIGNAL]` declares."""
    process_name, _, signal_name = value.partition(":")
    spec = NotifyTargetSpec(
        signal=NotifySignal(process_name=process_name, signal=signal_name or "SIGHUP")
    )
    return NotifyTargetDeclaration(
        name=SETTING_NOTIFY_TARGET, spec=spec, origin=Origin("--notify-signal", 1)
    )


# --- one worker per notify target -----------------------------------------------------------------


@dataclass
class _Delivery:
    """Changes waiting for one notify target, and when to deliver them."""

    due: float
    failures: int = 0
    keys: dict[str, set[str]] = field(default_factory=dict)

    def add(self, changes: Iterable[Change]) -> None:
        for change in changes:
            self.keys.setdefault(change.target, set()).update(change.keys)

    def merge(self, other: _Delivery) -> None:
        for target, keys in other.keys.items():
            self.keys.setdefault(target, set()).update(keys)

    def names(self) -> ChangedNames:
        return ChangedNames({target: tuple(sorted(keys)) for target, keys in self.keys.items()})


def _retries(spec: NotifyTargetSpec) -> int:
    if spec.http is not None:
        return spec.http.retries
    if spec.command is not None:
        return spec.command.retries
    return 0  # a signal either reaches the process or the process is gone


class _Worker:
    """Delivers the changes of one notify target from a thread of its own."""

    def __init__(
        self,
        declaration: NotifyTargetDeclaration,
        action: Action,
        *,
        delay: float,
        counter: Counter,
        retry_delay: Callable[[int], float],
    ) -> None:
        self.declaration = declaration
        self.name = declaration.name
        self.action = action
        self.delay = delay
        self.retries = _retries(declaration.spec)
        self.counter = counter
        self.retry_delay = retry_delay
        targets = declaration.spec.targets
        self.watched = frozenset(targets) if targets is not None else None
        self._condition = threading.Condition()
        self._pending: _Delivery | None = None
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"notify-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, changes: Sequence[Change]) -> None:
        """Queue the changes of watched targets; never blocks on a delivery in progress."""
        relevant = [c for c in changes if self.watched is None or c.target in self.watched]
        if not relevant:
            return
        with self._condition:
            now = time.monotonic()
            if self._pending is None:
                self._pending = _Delivery(due=now + self.delay)
            elif self._pending.failures:
                self._supersede(self._pending)
                self._pending.failures = 0
                self._pending.due = now + self.delay
            self._pending.add(relevant)
            self._condition.notify()

    def adopt(self, pending: _Delivery | None) -> None:
        """Take over the changes another worker had not delivered yet (after a reload)."""
        if pending is None:
            return
        with self._condition:
            if self._pending is None:
                self._pending = pending
            else:
                self._pending.merge(pending)
            self._condition.notify()

    def stop(self) -> _Delivery | None:
        """Stop the thread after the attempt in progress; return the undelivered changes."""
        with self._condition:
            self._stopping = True
            pending, self._pending = self._pending, None
            self._condition.notify()
        return pending

    def cancel(self) -> None:
        self.stop()
        self.action.cancel()

    def idle(self) -> bool:
        """Return True when nothing is queued or being delivered."""
        with self._condition:
            return self._pending is None and not self._busy

    def _run(self) -> None:
        while True:
            with self._condition:
                delivery = self._next_due()
                if delivery is None:
                    return
                self._pending = None
                self._busy = True
            try:
                attempt = self._attempt(delivery)
                self._record(delivery, attempt)
            finally:
                with self._condition:
                    self._busy = False

    def _next_due(self) -> _Delivery | None:
        """Wait, holding the condition, until the pending delivery is due or the worker stops."""
        while not self._stopping:
            if self._pending is None:
                self._condition.wait()
                continue
            remaining = self._pending.due - time.monotonic()
            if remaining <= 0:
                return self._pending
            self._condition.wait(remaining)
        return None

    def _attempt(self, delivery: _Delivery) -> Attempt:
        try:
            return self.action.deliver(delivery.names())
        except Exception as error:  # a defect in one kind must not stop the worker
            log_event(
                logger,
                logging.ERROR,
                "notify_defect",
                notify_target=self.name,
                error=f"{type(error).__name__}: {error}",
            )
            return Attempt("error", f"internal error: {type(error).__name__}")

    def _record(self, delivery: _Delivery, attempt: Attempt) -> None:
        """Count and log an attempt, and schedule its retry when one is left and can help."""
        if attempt.result == "success":
            self._log(delivery, attempt, "success", logging.INFO, "notify_sent")
        elif attempt.result == "no_process":
            self._log(delivery, attempt, "no_process", logging.WARNING, "notify_no_process")
        elif not attempt.retryable or delivery.failures >= self.retries:
            self._log(delivery, attempt, "failed", logging.ERROR, "notify_failed")
        else:
            delay = self.retry_delay(delivery.failures + 1)
            self._log(
                delivery, attempt, "retry", logging.WARNING, "notify_retrying", retry_in_s=delay
            )
            delivery.failures += 1
            self._schedule_retry(delivery, delay)

    def _log(
        self,
        delivery: _Delivery,
        attempt: Attempt,
        result: str,
        level: int,
        event: str,
        **extra: float,
    ) -> None:
        self.counter.labels(self.name, result).inc()
        names = delivery.names()
        fields: dict[str, object] = {
            "notify_target": self.name,
            "kind": self.action.kind,
            "targets": ",".join(names.targets),
            "keys": len(names.qualified_keys),
            "attempt": delivery.failures + 1,
        }
        fields.update({name: round(value, 2) for name, value in extra.items()})
        if attempt.error:
            fields["error"] = attempt.error
        fields.update(attempt.fields)
        log_event(logger, level, event, **fields)

    def _schedule_retry(self, delivery: _Delivery, delay: float) -> None:
        with self._condition:
            if self._stopping:
                return
            if self._pending is not None:
                # A change arrived during the attempt: its delivery also carries these names.
                self._pending.merge(delivery)
                self._supersede(delivery)
                return
            delivery.due = time.monotonic() + delay
            self._pending = delivery
            self._condition.notify()

    def _supersede(self, delivery: _Delivery) -> None:
        self.counter.labels(self.name, "superseded").inc()
        log_event(
            logger,
            logging.INFO,
            "notify_retry_superseded",
            notify_target=self.name,
            attempt=delivery.failures + 1,
        )


# --- the notifier ---------------------------------------------------------------------------------


class Notifier:
    """Delivers the sync loop's changes to every declared notify target.

    Notify targets come from the declarations the sync loop currently uses, so a reload that
    adds, changes or removes NotifyTarget documents takes effect at the next change. `extra`
    notify targets (from `--notify-signal`) are kept across reloads.
    """

    def __init__(
        self,
        *,
        refs: Refs,
        metrics: Metrics,
        delay: float = DEFAULT_DELAY_SECONDS,
        extra: Sequence[NotifyTargetDeclaration] = (),
        retry_delay: Callable[[int], float] = retry_delay,
    ) -> None:
        self.refs = refs
        self.delay = delay
        self.extra = list(extra)
        self.retry_delay = retry_delay
        self.counter = Counter(
            "secrets_agent_notify_total",
            "Delivery attempts to a notify target by result (success, retry, failed, "
            "no_process), and pending retries that a newer change superseded (superseded).",
            ["target", "result"],
            registry=metrics.registry,
        )
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._declared: list[NotifyTargetDeclaration] | None = None
        self._syncer: Syncer | None = None
        self._ever_ready = False
        self._closed = False

    @property
    def notify_targets(self) -> list[str]:
        with self._lock:
            return sorted(self._workers)

    def attach(self, syncer: Syncer) -> None:
        """Listen to `syncer`'s changes and start a worker per notify target it declares."""
        self._syncer = syncer
        self._reconcile(syncer.declarations.notify_targets)
        syncer.listeners.append(self.notify)
        syncer.add_task(self._check_readiness)

    def notify(self, changes: list[Change]) -> None:
        """Queue `changes` for every notify target that watches their targets.

        The sync loop calls this after a round that switched a generation. It only queues, so
        it returns at once.
        """
        syncer = self._syncer
        if syncer is not None and syncer.declarations.notify_targets is not self._declared:
            self._reconcile(syncer.declarations.notify_targets)
        if not self._ever_ready:
            skipped = [change.target for change in changes if change.first]
            if skipped:
                log_event(
                    logger, logging.DEBUG, "notify_skipped_initial", targets=",".join(skipped)
                )
            changes = [change for change in changes if not change.first]
            self._check_readiness()
        if not changes:
            return
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.submit(changes)

    def idle(self) -> bool:
        """Return True when no notify target has a delivery queued, waiting or in progress."""
        with self._lock:
            workers = list(self._workers.values())
        return all(worker.idle() for worker in workers)

    def close(self) -> None:
        """Stop every worker; undelivered changes are dropped and a running command is killed."""
        with self._lock:
            self._closed = True
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.cancel()

    def _check_readiness(self) -> float | None:
        """Latch `_ever_ready` once every target has a generation (a sync loop task)."""
        if self._syncer is None or self._ever_ready:
            return None
        if self._syncer.readiness()[0]:
            self._ever_ready = True
            return None
        return READINESS_CHECK_SECONDS

    def _reconcile(self, declared: list[NotifyTargetDeclaration]) -> None:
        """Start, replace and stop workers so that they match `declared` plus `extra`."""
        wanted: dict[str, NotifyTargetDeclaration] = {}
        for declaration in self.extra:
            wanted[declaration.name] = declaration
        for declaration in declared:
            if declaration.name in wanted:
                log_event(
                    logger,
                    logging.ERROR,
                    "notify_target_ignored",
                    notify_target=declaration.name,
                    error="the name is taken by --notify-signal; rename the NotifyTarget",
                )
                continue
            wanted[declaration.name] = declaration
        with self._lock:
            if self._closed:
                return
            self._declared = declared
            current = self._workers
            self._workers = {}
            for name, declaration in wanted.items():
                worker = current.pop(name, None)
                if worker is not None and worker.declaration.spec == declaration.spec:
                    self._workers[name] = worker
                    continue
                replacement = self._start_worker(declaration)
                if worker is not None:
                    replacement.adopt(worker.stop())
                self._workers[name] = replacement
            removed = list(current.values())
        for worker in removed:
            worker.stop()
            log_event(logger, logging.INFO, "notify_target_removed", notify_target=worker.name)

    def _start_worker(self, declaration: NotifyTargetDeclaration) -> _Worker:
        worker = _Worker(
            declaration,
            build_action(declaration, refs=self.refs),
            delay=self.delay,
            counter=self.counter,
            retry_delay=self.retry_delay,
        )
        worker.start()
        log_event(
            logger,
            logging.INFO,
            "notify_target_started",
            notify_target=declaration.name,
            kind=worker.action.kind,
            targets=",".join(declaration.spec.targets or ["*"]),
        )
        return worker
