"""Helpers for the lease tests: declarations, a Vault emulator set-up and an accelerated loop.

`Agent` builds what `secrets-agent run` builds (Syncer, Writer, LeaseManager), with the emulator's
clock as the only clock, and drives the sync loop turn by turn. `run_for` jumps from deadline to
deadline with `emulator.advance()`, so hours of lease lifetime pass in milliseconds and every
step happens at the moment the real loop would take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.declarations import load_declarations
from agent.leases import LeaseManager
from agent.metrics import Metrics
from agent.settings import Settings, load_settings
from agent.sync import Change, Syncer
from agent.writer import Writer

ROLE_ID = "fake-role-id-orders"
SECRET_ID = "fake-secret-id-orders"
CREDS_PATH = "database/creds/orders"
RENEW_PATH = "sys/leases/renew"
REVOKE_PATH = "sys/leases/revoke"
# Enough for a generator: read the credentials and revoke superseded leases. Renewal and
# lookup come with Vault's default policy.
ORDERS_POLICY = {
    "database/creds/orders": ["read"],
    "sys/leases/revoke": ["update"],
    "secret/data/orders/*": ["read"],
}

GENERATOR = """\
apiVersion: generators.external-secrets.io/v1alpha1
kind: VaultDynamicSecret
metadata: {{name: orders-db}}
spec:
  path: /database/creds/orders
  provider:
    server: {url}
    auth:
      appRole:
        roleId: {role_id}
        secretRef: {{name: vault-approle, key: secret-id}}
"""

GENERATOR_ONLY = """\
apiVersion: external-secrets.io/v1beta1
kind: ExternalSecret
metadata: {{name: orders-db}}
spec:
  refreshInterval: {interval}
  target: {{name: orders-db}}
  dataFrom:
    - sourceRef:
        generatorRef:
          apiVersion: generators.external-secrets.io/v1alpha1
          kind: VaultDynamicSecret
          name: orders-db
"""

KV_STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {{name: vault-kv}}
spec:
  provider:
    vault:
      server: {url}
      path: secret
      auth:
        appRole:
          roleId: {role_id}
          secretRef: {{name: vault-approle, key: secret-id}}
"""

GENERATOR_AND_KV = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {{name: orders}}
spec:
  refreshInterval: {interval}
  secretStoreRef: {{name: vault-kv}}
  data:
    - secretKey: api-key
      remoteRef: {{key: orders/settings, property: api-key}}
  dataFrom:
    - sourceRef:
        generatorRef: {{kind: VaultDynamicSecret, name: orders-db}}
      rewrite:
        - regexp: {{source: "^(.*)$", target: "db-$1"}}
"""


def setup_vault(
    vault: Any,
    *,
    ttl: int = 600,
    max_ttl: int = 3600,
    renewable: bool = True,
    token_ttl: int = 36000,
    token_max_ttl: int = 0,
) -> None:
    """Give the emulator a database role, an AppRole and a policy for the orders service."""
    vault.add_database_role("orders", default_ttl=ttl, max_ttl=max_ttl, renewable=renewable)
    vault.set_policy("orders", ORDERS_POLICY)
    vault.add_approle(
        "orders",
        role_id=ROLE_ID,
        secret_id=SECRET_ID,
        policies=["orders"],
        ttl=token_ttl,
        max_ttl=token_max_ttl,
    )
    vault.kv_put("secret", "orders/settings", {"api-key": "fake-api-key-1"})


@dataclass
class Agent:
    """One agent process: its Syncer, Writer, LeaseManager and the changes its listeners saw."""

    syncer: Syncer
    leases: LeaseManager
    vault: Any
    output: Path
    changes: list[Change] = field(default_factory=list)

    def turn(self) -> float | None:
        """Run one turn of the sync loop; return the seconds until its next deadline."""
        syncer = self.syncer
        syncer._apply_pending_declarations()
        now = syncer.clock()
        due = [s for s in syncer.states.values() if not s.finished and s.next_due <= now]
        if due:
            syncer.sync(due)
        syncer._run_tasks()
        return syncer._seconds_until_next()

    def run_for(self, seconds: float, *, on_turn: Any = None) -> None:
        """Run the loop for `seconds` of emulator time, jumping from deadline to deadline.

        `on_turn(agent)` is called after every turn, for checks that must hold at all times.
        """
        end = self.vault.now() + seconds
        for _ in range(100_000):
            delay = self.turn()
            if on_turn is not None:
                on_turn(self)
            remaining = end - self.vault.now()
            if remaining <= 0:
                return
            step = remaining if delay is None else min(max(delay, 0.001), remaining)
            self.vault.advance(step)
        raise AssertionError("the loop did not reach the end time; a deadline keeps recurring")

    def files(self, target: str = "orders-db") -> dict[str, str]:
        """Return the current generation of `target` as text."""
        contents = self.syncer.writer.read(target)
        assert contents is not None, f"target {target} has no generation"
        return {key: value.decode() for key, value in contents.items()}

    def close(self, *, revoke: bool = False) -> None:
        self.leases.close(revoke=revoke)
        self.syncer.stores.close()


def write_declarations(tmp_path: Path, vault: Any, *documents: str, interval: str = "1h") -> Path:
    """Write the declarations file and the AppRole secret ID file; return the file."""
    refs = tmp_path / "refs" / "vault-approle"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "secret-id").write_text(SECRET_ID)
    text = "---\n".join(
        document.format(url=vault.url, role_id=ROLE_ID, interval=interval) for document in documents
    )
    config = tmp_path / "declarations.yaml"
    config.write_text(text)
    return config


def make_settings(tmp_path: Path, config: Path, **overrides: Any) -> Settings:
    return load_settings(
        config=[str(config)],
        output_dir=str(tmp_path / "out"),
        refs_dir=str(tmp_path / "refs"),
        **overrides,
    )


def make_agent(
    tmp_path: Path, vault: Any, config: Path, *, rng: Any = None, **overrides: Any
) -> Agent:
    """Build an agent on the emulator's clock; `rng` defaults to the middle of every jitter."""
    settings = make_settings(tmp_path, config, **overrides)
    declarations = load_declarations(settings.config)
    draw = rng or (lambda: 0.5)
    syncer = Syncer(
        declarations,
        settings=settings,
        writer=Writer(settings.output_dir),
        metrics=Metrics(),
        clock=vault.now,
        rng=draw,
    )
    leases = LeaseManager.attach(syncer, settings=settings, clock=vault.now, rng=draw)
    agent = Agent(syncer=syncer, leases=leases, vault=vault, output=settings.output_dir)
    syncer.listeners.append(agent.changes.extend)
    return agent


def metric_value(agent: Agent, name: str, **labels: str) -> float | None:
    """Return one sample of the agent's metrics, None when it does not exist."""
    return agent.syncer.metrics.registry.get_sample_value(name, labels)
