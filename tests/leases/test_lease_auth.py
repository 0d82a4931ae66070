"""`resultType: Auth` with `method: POST`: a token from `auth/token/create` as a dynamic secret,
renewed with its own renew-self, replaced at its max TTL and revoked after the grace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lease_helpers import ORDERS_POLICY, make_agent, setup_vault, write_declarations

TOKEN_GENERATOR = """\
apiVersion: secrets-agent.io/v1alpha1
kind: VaultDynamicSecret
metadata: {{name: orders-token}}
spec:
  path: auth/token/create
  method: POST
  parameters:
    ttl: 10m
    explicit_max_ttl: 25m
    policies: [orders]
    display_name: orders
  resultType: Auth
  provider:
    server: {url}
    auth:
      appRole:
        roleId: {role_id}
        secretRef: {{name: vault-approle, key: secret-id}}
"""

TOKEN_TARGET = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {{name: orders-token}}
spec:
  dataFrom:
    - sourceRef:
        generatorRef: {{kind: VaultDynamicSecret, name: orders-token}}
"""


@pytest.fixture
def agent(vault, tmp_path: Path):
    setup_vault(vault)
    vault.set_policy("orders", {**ORDERS_POLICY, "auth/token/create": ["update"]})
    config = write_declarations(tmp_path, vault, TOKEN_GENERATOR, TOKEN_TARGET)
    return make_agent(tmp_path, vault, config, lease_revoke_grace=60)


def test_auth_block_becomes_files(vault, agent) -> None:
    agent.turn()

    files = agent.files("orders-token")
    assert {"client_token", "accessor", "policies", "lease_duration", "renewable"} <= set(files)
    assert files["lease_duration"] == "600"
    assert files["renewable"] == "true"
    assert json.loads(files["policies"]) == ["default", "orders"]
    assert vault.token_ttl(files["client_token"]) == pytest.approx(600, abs=2)
    assert vault.count(method="POST", path_prefix="auth/token/create") == 1


def test_token_renewed_with_itself(vault, agent) -> None:
    agent.turn()
    token = agent.files("orders-token")["client_token"]

    agent.run_for(401)

    assert vault.count(path_prefix="auth/token/renew-self") == 1
    assert vault.token_ttl(token) == pytest.approx(600, abs=2)
    assert agent.files("orders-token")["client_token"] == token


def test_token_replaced_at_max_ttl(vault, agent) -> None:
    agent.turn()
    old = agent.files("orders-token")["client_token"]

    agent.run_for(1401)  # renewals at 400 and 800 s; the one at 1200 s is capped at 1500 s
    new = agent.files("orders-token")["client_token"]
    assert new != old
    assert vault.count(path_prefix="auth/token/create") == 2

    agent.run_for(58)
    assert vault.token_ttl(old) > 0  # the grace keeps it valid
    agent.run_for(3)
    with pytest.raises(KeyError):
        vault.token_ttl(old)
    assert vault.token_ttl(new) > 0


def test_token_adopted_by_next_agent(vault, agent, tmp_path: Path) -> None:
    agent.syncer.run_once(timeout=10)
    agent.close(revoke=False)
    token = agent.files("orders-token")["client_token"]
    config = tmp_path / "declarations.yaml"
    sidecar = make_agent(tmp_path, vault, config, lease_revoke_grace=60)
    sidecar.syncer.adopt()

    sidecar.turn()

    assert vault.count(path_prefix="auth/token/create") == 1
    assert vault.count(path_prefix="auth/token/renew-self") == 1  # adoption renews it
    assert sidecar.files("orders-token")["client_token"] == token
    assert sidecar.changes == []
