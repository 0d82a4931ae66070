"""Prometheus metrics of the controller: the agent's metrics plus reconcile counts and durations.

Stores count their backend requests in `secrets_agent_backend_requests_total`, as in the agent.
Labels are bounded sets (results from a fixed list), never names chosen by users or values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.metrics import Metrics

RECONCILE_RESULTS = ("success", "unchanged", "error")


class ControllerMetrics(Metrics):
    """Every metric the controller exports, registered on `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.reconcile_total = Counter(
            "secrets_agent_controller_reconcile_total",
            "Reconciles of ExternalSecrets, by result (success: the Secret was written or "
            "deleted, unchanged: nothing to write, error).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "secrets_agent_controller_reconcile_duration_seconds",
            "Duration of one reconcile of an ExternalSecret.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.external_secrets = Gauge(
            "secrets_agent_controller_external_secrets",
            "ExternalSecrets the controller currently keeps in sync.",
            registry=self.registry,
        )
        self.store_connections = Gauge(
            "secrets_agent_controller_store_connections",
            "Open store connections (one AWS session or Vault token each).",
            registry=self.registry,
        )
        for result in RECONCILE_RESULTS:
            self.reconcile_total.labels(result)
