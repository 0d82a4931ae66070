"""Prometheus metrics of the controller: backend requests, reconciles, readiness and leadership.

Stores count their backend requests in `secrets_agent_backend_requests_total`, as in the agent.
The agent's per-target families (`secrets_agent_sync_total`, `secrets_agent_target_ready`,
`secrets_agent_last_success_timestamp_seconds`) are not exported, because the controller has no
targets on disk and would only export them empty.
Labels are bounded sets: results from a fixed list, and the namespace and name of each
ExternalSecret the controller serves (one series each), never values or secret keys.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.metrics import Metrics

RECONCILE_RESULTS = ("success", "unchanged", "error")


class ControllerMetrics(Metrics):
    """Every metric the controller exports, registered on `self.registry`.

    It is a `Metrics` because stores count their requests through one. The agent's per-target
    families are unregistered and their attributes removed, so a use of them fails loudly.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        for family in (self.sync_total, self.last_success, self.target_ready):
            self.registry.unregister(family)
        del self.sync_total, self.last_success, self.target_ready
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
        self.external_secret_ready = Gauge(
            "secrets_agent_controller_external_secret_ready",
            "1 when the last reconcile of an ExternalSecret set Ready=True, 0 when it set "
            "Ready=False or failed; only for ExternalSecrets this replica serves.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "secrets_agent_controller_leader",
            "1 while this replica runs its handlers (it leads, or runs standalone), 0 while "
            "leader election pauses it.",
            registry=self.registry,
        )
        for result in RECONCILE_RESULTS:
            self.reconcile_total.labels(result)

    def set_ready(self, namespace: str, name: str, *, ready: bool) -> None:
        """Record the Ready condition the last reconcile of an ExternalSecret left."""
        self.external_secret_ready.labels(namespace, name).set(1 if ready else 0)

    def forget_external_secret(self, namespace: str, name: str) -> None:
        """Drop the series of an ExternalSecret that is deleted or no longer served here."""
        try:
            self.external_secret_ready.remove(namespace, name)
        except KeyError:
            pass
