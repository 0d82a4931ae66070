"""Declarations reloaded while leases are held: a changed generator means new credentials, a
removed entry means revocation after the grace."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from lease_helpers import (
    CREDS_PATH,
    GENERATOR,
    GENERATOR_ONLY,
    REVOKE_PATH,
    make_agent,
    metric_value,
    setup_vault,
    write_declarations,
)

from agent.declarations import load_declarations

OTHER_TARGET = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {{name: other}}
spec:
  dataFrom:
    - sourceRef:
        generatorRef: {{kind: VaultDynamicSecret, name: orders-db}}
"""


def test_changed_generator_rotates(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=3600, max_ttl=36000)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    agent = make_agent(tmp_path, vault, config, lease_revoke_grace=60)
    agent.turn()
    first = agent.files()

    changed = GENERATOR.replace("    auth:", "    version: v1\n    auth:")
    write_declarations(tmp_path, vault, changed, GENERATOR_ONLY)
    agent.syncer.replace_declarations(load_declarations([config]))
    agent.run_for(1)

    second = agent.files()
    assert second != first
    assert vault.count(path_prefix=CREDS_PATH) == 2
    assert vault.database_credentials_valid(first["username"], first["password"])
    assert (
        metric_value(
            agent,
            "secrets_agent_lease_rotations_total",
            target="orders-db",
            reason="declaration_changed",
        )
        == 1
    )
    agent.run_for(61)
    assert not vault.database_credentials_valid(first["username"], first["password"])
    assert vault.database_credentials_valid(second["username"], second["password"])


def test_removed_target_lease_revoked(
    vault, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup_vault(vault, ttl=3600, max_ttl=36000)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY, OTHER_TARGET)
    agent = make_agent(tmp_path, vault, config, lease_revoke_grace=60)
    agent.turn()
    kept = agent.files()
    removed = agent.files("other")
    assert kept != removed  # each target has its own lease

    write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    agent.syncer.replace_declarations(load_declarations([config]))
    agent.run_for(59)
    assert vault.database_credentials_valid(removed["username"], removed["password"])
    with caplog.at_level(logging.INFO, logger="agent"):
        agent.run_for(2)

    assert not vault.database_credentials_valid(removed["username"], removed["password"])
    assert vault.database_credentials_valid(kept["username"], kept["password"])
    assert vault.count(path_prefix=CREDS_PATH) == 2
    revoked = [r.event_fields for r in caplog.records if r.getMessage() == "lease_revoked"]
    assert [fields["reason"] for fields in revoked] == ["released"]


def test_removed_target_revocation_retried(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=3600, max_ttl=36000)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY, OTHER_TARGET)
    agent = make_agent(tmp_path, vault, config, lease_revoke_grace=60)
    agent.turn()
    removed = agent.files("other")

    write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    agent.syncer.replace_declarations(load_declarations([config]))
    vault.fail_next(1, status=503, path_prefix=REVOKE_PATH)
    agent.run_for(61)
    assert vault.database_credentials_valid(removed["username"], removed["password"])

    agent.run_for(60)  # the retry after a transient failure
    assert not vault.database_credentials_valid(removed["username"], removed["password"])
