"""Dynamic credentials that expired without a replacement show in /readyz and the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from lease_helpers import (
    CREDS_PATH,
    GENERATOR,
    GENERATOR_ONLY,
    ORDERS_POLICY,
    make_agent,
    setup_vault,
    write_declarations,
)


def test_expired_lease_reported_stale(
    vault, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup_vault(vault, ttl=60, max_ttl=60)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    agent = make_agent(tmp_path, vault, config)
    agent.turn()
    ready, body = agent.syncer.readiness()
    assert ready and body["targets"]["orders-db"]["status"] == "ok"

    denied = {path: rights for path, rights in ORDERS_POLICY.items() if path != CREDS_PATH}
    vault.set_policy("orders", denied)
    with caplog.at_level(logging.INFO, logger="agent"):
        agent.run_for(50)  # rotations before the end fail
        assert agent.syncer.readiness()[1]["targets"]["orders-db"]["status"] == "ok"
        agent.run_for(30)  # past the max TTL

    entry = agent.syncer.readiness()[1]["targets"]["orders-db"]
    assert entry["status"] == "stale"
    assert "database/creds/orders" in entry["error"]
    assert "expired" in entry["error"]
    assert "permission denied" in entry["error"]  # the cause, from Vault's response
    expired = [r for r in caplog.records if r.getMessage() == "lease_expired"]
    assert len(expired) == 1
    assert expired[0].event_fields["target"] == "orders-db"

    vault.set_policy("orders", ORDERS_POLICY)
    agent.run_for(120)  # the next retry fetches new credentials
    assert agent.syncer.readiness()[1]["targets"]["orders-db"]["status"] == "ok"
