"""Lease logs: stable event names, and never a value or a whole lease id at any level."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from lease_helpers import GENERATOR, GENERATOR_ONLY, make_agent, setup_vault, write_declarations


def test_lease_events_hide_ids_and_values(
    vault, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup_vault(vault, ttl=300, max_ttl=700)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    agent = make_agent(tmp_path, vault, config, lease_revoke_grace=20)
    lease_ids: set[str] = set()
    values: set[str] = set()

    def collect(current) -> None:
        lease_ids.update(vault.live_leases())
        values.update(current.files().values())

    with caplog.at_level(logging.DEBUG, logger="agent"):
        agent.run_for(1500, on_turn=collect)
        agent.close(revoke=True)

    records = [r for r in caplog.records if r.name.startswith("agent")]
    lines = [f"{r.getMessage()} {getattr(r, 'event_fields', {})}" for r in records]
    events = {r.getMessage() for r in records}
    assert {
        "lease_issued",
        "lease_renewed",
        "lease_renewal_capped",
        "lease_rotated",
        "lease_revoke_scheduled",
        "lease_revoked",
    } <= events
    assert len(lease_ids) >= 3
    for line in lines:
        for lease_id in lease_ids:
            assert lease_id not in line, "a whole lease id reached the log"
            assert lease_id.rsplit("/", 1)[1][:-4] not in line
        for value in values:
            assert value not in line, "a secret value reached the log"
    rotated = [r for r in records if r.getMessage() == "lease_rotated"]
    fields = rotated[0].event_fields
    assert fields["path"] == "database/creds/orders"
    assert fields["old_lease"].startswith("...")
    assert len(fields["old_lease"]) == 7
