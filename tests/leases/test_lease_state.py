"""The lease state file: an init container's leases adopted by the sidecar, and the file's
safety (mode 0600, no values, no link followed)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from lease_helpers import (
    CREDS_PATH,
    GENERATOR,
    GENERATOR_ONLY,
    RENEW_PATH,
    SECRET_ID,
    Agent,
    make_agent,
    setup_vault,
    write_declarations,
)

from agent.lease_state import STATE_FILE_NAME, LeaseStateError, read_state

LOGIN_PATH = "auth/approle/login"


def init_then_sidecar(tmp_path: Path, vault, **overrides) -> tuple[Agent, Agent]:
    """Run an init container's `once` and exit, then start a sidecar on the same volume."""
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    init = make_agent(tmp_path, vault, config, **overrides)
    result = init.syncer.run_once(timeout=10)
    assert not result.failed
    init.close(revoke=False)
    sidecar = make_agent(tmp_path, vault, config, **overrides)
    sidecar.syncer.adopt()
    return init, sidecar


def state_path(agent: Agent) -> Path:
    return agent.output / STATE_FILE_NAME


def test_sidecar_adopts_init_lease(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    init, sidecar = init_then_sidecar(tmp_path, vault)
    written = init.files()
    generation = sidecar.syncer.writer.generation("orders-db")

    sidecar.turn()
    sidecar.turn()

    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert sidecar.files() == written
    assert sidecar.syncer.writer.generation("orders-db") == generation
    assert sidecar.changes == []
    # Adoption renews the lease, which also proves that Vault still has it.
    assert vault.count(path_prefix=RENEW_PATH) == 1
    assert vault.database_credentials_valid(written["username"], written["password"])


def test_adopted_lease_keeps_renewing(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000, token_ttl=36000)
    init, sidecar = init_then_sidecar(tmp_path, vault)
    written = init.files()

    sidecar.run_for(3000)

    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert vault.count(path_prefix=RENEW_PATH) >= 6
    assert sidecar.files() == written
    assert vault.database_credentials_valid(written["username"], written["password"])


def test_init_token_left_alive(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    init_then_sidecar(tmp_path, vault)

    assert vault.count(path_prefix="auth/token/revoke-self") == 0
    assert vault.live_tokens() == 1


def test_adopted_lease_rotated_before_init_token_expiry(vault, tmp_path: Path) -> None:
    # The init container's token is not renewed after it exits and expires at 600 s, taking
    # its leases with it: the sidecar moves to new credentials by 600 - 90 s.
    setup_vault(vault, ttl=3600, max_ttl=36000, token_ttl=600)
    init, sidecar = init_then_sidecar(tmp_path, vault, lease_revoke_grace=60)
    written = init.files()

    sidecar.run_for(505)
    assert vault.count(path_prefix=CREDS_PATH) == 1
    sidecar.run_for(10)

    renewed = sidecar.files()
    assert renewed != written
    assert vault.database_credentials_valid(renewed["username"], renewed["password"])
    assert vault.database_credentials_valid(written["username"], written["password"])
    assert len(sidecar.changes) == 1


def test_gone_lease_reissued_at_adoption(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    init = make_agent(tmp_path, vault, config)
    init.syncer.run_once(timeout=10)
    init.close(revoke=False)
    written = init.files()
    for lease_id in vault.live_leases():
        vault.revoke_lease(lease_id)
    sidecar = make_agent(tmp_path, vault, config)
    sidecar.syncer.adopt()

    sidecar.turn()

    fresh = sidecar.files()
    assert fresh != written
    assert vault.count(path_prefix=CREDS_PATH) == 2
    assert vault.database_credentials_valid(fresh["username"], fresh["password"])
    assert [change.changed for change in sidecar.changes] == [("password", "username")]


def test_changed_generator_reissued_at_adoption(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    init = make_agent(tmp_path, vault, config)
    init.syncer.run_once(timeout=10)
    init.close(revoke=False)
    written = init.files()
    # Any change of the generator's spec (here the unused KV version) means new credentials.
    changed = GENERATOR.replace("    auth:", "    version: v1\n    auth:")
    config = write_declarations(tmp_path, vault, changed, GENERATOR_ONLY)
    sidecar = make_agent(tmp_path, vault, config, lease_revoke_grace=60)
    sidecar.syncer.adopt()

    sidecar.run_for(1)
    fresh = sidecar.files()
    assert fresh != written
    assert vault.count(path_prefix=CREDS_PATH) == 2
    assert vault.database_credentials_valid(written["username"], written["password"])
    sidecar.run_for(61)

    assert not vault.database_credentials_valid(written["username"], written["password"])
    assert vault.database_credentials_valid(fresh["username"], fresh["password"])


def test_superseded_lease_revoked_by_next_agent(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=1500)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    first_agent = make_agent(tmp_path, vault, config, lease_revoke_grace=60)
    first_agent.turn()
    old = first_agent.files()
    first_agent.run_for(1401)  # rotated; the old lease waits for its grace
    first_agent.close(revoke=False)
    second_agent = make_agent(tmp_path, vault, config, lease_revoke_grace=60)
    second_agent.syncer.adopt()

    second_agent.run_for(30)
    assert vault.database_credentials_valid(old["username"], old["password"])
    second_agent.run_for(35)

    assert not vault.database_credentials_valid(old["username"], old["password"])
    assert vault.count(path_prefix=CREDS_PATH) == 2


def test_once_with_revoke_on_exit(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    init = make_agent(tmp_path, vault, config)
    init.syncer.run_once(timeout=10)
    written = init.files()

    init.close(revoke=True)

    assert not vault.database_credentials_valid(written["username"], written["password"])
    assert vault.live_leases() == []
    assert vault.live_tokens() == 0
    assert read_state(init.output) == []


def test_state_file_private_and_valueless(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    init, _ = init_then_sidecar(tmp_path, vault)
    path = state_path(init)
    written = init.files()

    status = os.lstat(path)
    text = path.read_text()
    assert stat.S_ISREG(status.st_mode)
    assert stat.S_IMODE(status.st_mode) == 0o600
    assert written["username"] not in text
    assert written["password"] not in text
    assert SECRET_ID not in text
    assert "hvs." not in text  # no token
    document = json.loads(text)
    (record,) = document["leases"]
    assert record["secret_keys"] == {"password": "password", "username": "username"}
    assert record["lease_id"] in vault.live_leases()
    assert record["token_expires_at"] is not None
    assert not [name for name in os.listdir(init.output) if ".tmp." in name]


def test_planted_link_replaced_not_followed(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    init = make_agent(tmp_path, vault, config)
    init.syncer.run_once(timeout=10)
    outside = tmp_path / "outside.json"
    outside.write_text("not the agent's")
    os.symlink(outside, state_path(init))

    init.close(revoke=False)

    assert outside.read_text() == "not the agent's"
    assert not os.path.islink(state_path(init))
    assert len(read_state(init.output)) == 1


def test_planted_link_not_read(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    init = make_agent(tmp_path, vault, config)
    init.syncer.run_once(timeout=10)
    init.close(revoke=False)
    real = tmp_path / "copied-state.json"
    real.write_bytes(state_path(init).read_bytes())
    os.chmod(real, 0o600)
    state_path(init).unlink()
    os.symlink(real, state_path(init))

    with pytest.raises(LeaseStateError):
        read_state(init.output)
    sidecar = make_agent(tmp_path, vault, config)
    sidecar.syncer.adopt()
    sidecar.turn()
    assert vault.count(path_prefix=CREDS_PATH) == 2  # nothing adopted through the link


@pytest.mark.parametrize(
    ("content", "mode"),
    [
        (b'{"version": 1, "written_at": 0, "leases": []}', 0o640),
        (b"{not json", 0o600),
        (b'{"version": 2, "written_at": 0, "leases": []}', 0o600),
        (b'{"version": 1, "written_at": 0, "leases": [{"target": "x"}]}', 0o600),
    ],
    ids=["group-readable", "not-json", "unknown-version", "incomplete-record"],
)
def test_unusable_state_file_rejected(tmp_path: Path, content: bytes, mode: int) -> None:
    path = tmp_path / STATE_FILE_NAME
    path.write_bytes(content)
    os.chmod(path, mode)

    with pytest.raises(LeaseStateError) as raised:
        read_state(tmp_path)
    assert "{" not in str(raised.value)


def test_no_generator_no_state_file(vault, tmp_path: Path) -> None:
    vault.kv_put("secret", "orders/settings", {"api-key": "fake-api-key-1"})
    store = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {{name: vault-kv}}
spec:
  provider:
    vault:
      server: {url}
      path: secret
      auth: {{tokenSecretRef: {{name: vault-token, key: token}}}}
---
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {{name: orders}}
spec:
  secretStoreRef: {{name: vault-kv}}
  data:
    - {{secretKey: api-key, remoteRef: {{key: orders/settings, property: api-key}}}}
"""
    config = write_declarations(tmp_path, vault, store)
    (tmp_path / "refs" / "vault-token").mkdir(parents=True)
    (tmp_path / "refs" / "vault-token" / "token").write_text(vault.root_token)
    agent = make_agent(tmp_path, vault, config)

    agent.syncer.run_once(timeout=10)
    agent.close(revoke=False)

    assert not os.path.lexists(state_path(agent))
