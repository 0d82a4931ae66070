"""Prometheus metrics of the agent, on a registry of their own.

Labels are bounded sets chosen by the operator (store and target names from the declarations,
operation names from the code, results from a fixed list); never values or secret keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# The `_created` series double the exported lines and no dashboard of ours reads them.
disable_created_metrics()

RESULTS = ("success", "error", "not_found", "denied", "throttled", "unavailable")


@dataclass
class BackendCall:
    """The outcome of one backend request; the caller may set `result` before the block ends."""

    result: str = "success"


class Metrics:
    """Every metric the agent exports, registered on `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.sync_total = Counter(
            "secrets_agent_sync_total",
            "Syncs of a target, by result (success, unchanged, error).",
            ["target", "result"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "secrets_agent_last_success_timestamp_seconds",
            "Unix time of the last sync of a target that completed without error.",
            ["target"],
            registry=self.registry,
        )
        self.backend_requests = Counter(
            "secrets_agent_backend_requests_total",
            "Requests sent to a store's backend, by operation and result.",
            ["store", "operation", "result"],
            registry=self.registry,
        )
        self.backend_duration = Histogram(
            "secrets_agent_backend_request_duration_seconds",
            "Duration of requests sent to a store's backend.",
            ["store", "operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.target_ready = Gauge(
            "secrets_agent_target_ready",
            "1 when a target has a complete generation on disk, else 0.",
            ["target"],
            registry=self.registry,
        )

    def forget_target(self, target: str) -> None:
        """Drop every series of a target that is no longer declared."""
        for metric in (self.last_success, self.target_ready):
            try:
                metric.remove(target)
            except KeyError:
                pass
        for result in ("success", "unchanged", "error"):
            try:
                self.sync_total.remove(target, result)
            except KeyError:
                pass

    @contextmanager
    def backend_request(self, store: str, operation: str) -> Iterator[BackendCall]:
        """Time one backend request and count it; an exception counts as `error`
        unless the caller already set a more precise result."""
        call = BackendCall()
        started = time.perf_counter()
        try:
            yield call
        except BaseException:
            if call.result == "success":
                call.result = "error"
            raise
        finally:
            self.backend_duration.labels(store, operation).observe(time.perf_counter() - started)
            self.backend_requests.labels(store, operation, call.result).inc()
