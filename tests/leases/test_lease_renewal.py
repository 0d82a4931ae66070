"""Renewal, rotation and revocation of a dynamic secret's lease, in accelerated time.

Every test drives the real sync loop, LeaseManager and hvac against the Vault emulator over HTTP;
the emulator's clock is the agent's clock, and `emulator.advance()` moves both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lease_helpers import (
    CREDS_PATH,
    GENERATOR,
    GENERATOR_AND_KV,
    GENERATOR_ONLY,
    KV_STORE,
    RENEW_PATH,
    REVOKE_PATH,
    Agent,
    make_agent,
    metric_value,
    setup_vault,
    write_declarations,
)


def generator_agent(tmp_path: Path, vault, *, interval: str = "1h", **overrides) -> Agent:
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY, interval=interval)
    return make_agent(tmp_path, vault, config, **overrides)


def test_first_sync_writes_both_fields(vault, tmp_path: Path) -> None:
    setup_vault(vault)
    agent = generator_agent(tmp_path, vault)

    agent.turn()

    files = agent.files()
    assert sorted(files) == ["password", "username"]
    assert vault.database_credentials_valid(files["username"], files["password"])
    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert len(agent.changes) == 1


@pytest.mark.parametrize(
    ("draw", "fraction"), [(0.5, 2 / 3), (0.0, 2 / 3 - 0.05), (1.0, 2 / 3 + 0.05)]
)
def test_renewal_at_two_thirds(vault, tmp_path: Path, draw: float, fraction: float) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    agent = generator_agent(tmp_path, vault, rng=lambda: draw)
    agent.turn()
    due = 600 * fraction

    agent.run_for(due - 2)
    assert vault.count(path_prefix=RENEW_PATH) == 0
    agent.run_for(4)
    assert vault.count(path_prefix=RENEW_PATH) == 1

    # The next renewal comes 2/3 of the renewed TTL later, counted from the renewal.
    agent.run_for(due - 4)
    assert vault.count(path_prefix=RENEW_PATH) == 1
    agent.run_for(4)
    assert vault.count(path_prefix=RENEW_PATH) == 2
    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert (
        metric_value(
            agent, "secrets_agent_lease_renewals_total", target="orders-db", result="success"
        )
        == 2
    )


def test_max_ttl_rotates_before_expiry(vault, tmp_path: Path) -> None:
    # Renewals come at 400 and 800 s. The one at 1200 s is capped to 300 s (max TTL 1500 s), so
    # new credentials come at 1400 s: 2/3 of the capped remainder, before the 1410 s margin.
    setup_vault(vault, ttl=600, max_ttl=1500)
    agent = generator_agent(tmp_path, vault)
    start = vault.now()
    agent.turn()
    first = agent.files()

    agent.run_for(1399)
    assert agent.files() == first
    assert vault.count(path_prefix=CREDS_PATH) == 1
    agent.run_for(2)

    second = agent.files()
    assert second["username"] != first["username"]
    assert vault.now() - start < 1500 - 60
    assert vault.count(path_prefix=CREDS_PATH) == 2
    assert vault.database_credentials_valid(second["username"], second["password"])
    assert (
        metric_value(
            agent, "secrets_agent_lease_renewals_total", target="orders-db", result="capped"
        )
        == 1
    )
    assert (
        metric_value(
            agent, "secrets_agent_lease_rotations_total", target="orders-db", reason="max_ttl"
        )
        == 1
    )


def test_old_lease_revoked_after_grace(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=1500)
    agent = generator_agent(tmp_path, vault, lease_revoke_grace=60)
    agent.turn()
    first = agent.files()
    agent.run_for(1401)  # the rotation at 1400 s has written new credentials
    assert agent.files() != first
    rotated_at = vault.now()

    agent.run_for(58)
    assert vault.database_credentials_valid(first["username"], first["password"])
    assert vault.count(path_prefix=REVOKE_PATH) == 0
    agent.run_for(3)
    assert not vault.database_credentials_valid(first["username"], first["password"])
    assert vault.count(path_prefix=REVOKE_PATH) == 1
    assert vault.now() - rotated_at < 1500 - 1400


def test_one_read_per_lease_across_refreshes(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=3600, max_ttl=3600)
    config = write_declarations(
        tmp_path, vault, KV_STORE, GENERATOR, GENERATOR_AND_KV, interval="30s"
    )
    agent = make_agent(tmp_path, vault, config)

    agent.run_for(1800)

    files = agent.files("orders")
    assert sorted(files) == ["api-key", "db-password", "db-username"]
    assert vault.count(path_prefix=CREDS_PATH) == 1
    # The KV key is read at every refresh: 60 intervals of 30 s, plus the first read.
    assert vault.count(path_prefix="secret/data/orders/settings") >= 60
    assert vault.database_credentials_valid(files["db-username"], files["db-password"])


def test_other_keys_refresh_with_cached_lease(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=3600, max_ttl=3600)
    config = write_declarations(
        tmp_path, vault, KV_STORE, GENERATOR, GENERATOR_AND_KV, interval="30s"
    )
    agent = make_agent(tmp_path, vault, config)
    agent.turn()
    before = agent.files("orders")

    vault.kv_put("secret", "orders/settings", {"api-key": "fake-api-key-2"})
    agent.run_for(31)

    after = agent.files("orders")
    assert after["api-key"] == "fake-api-key-2"
    assert after["db-username"] == before["db-username"]
    assert after["db-password"] == before["db-password"]
    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert agent.changes[-1].changed == ("api-key",)


def test_non_renewable_refetched_at_threshold(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=3600, max_ttl=3600, renewable=False)
    agent = generator_agent(tmp_path, vault)
    agent.turn()
    first = agent.files()

    agent.run_for(0.9 * 3600 - 2)
    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert vault.count(path_prefix=RENEW_PATH) == 0
    agent.run_for(4)

    assert vault.count(path_prefix=CREDS_PATH) == 2
    assert agent.files() != first
    assert vault.count(path_prefix=RENEW_PATH) == 0
    assert (
        metric_value(
            agent, "secrets_agent_lease_rotations_total", target="orders-db", reason="threshold"
        )
        == 1
    )


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 0.85), (1.0, 0.95)])
def test_threshold_jitter_bounds(vault, tmp_path: Path, draw: float, expected: float) -> None:
    setup_vault(vault, ttl=3600, max_ttl=3600, renewable=False)
    agent = generator_agent(tmp_path, vault, rng=lambda: draw)
    agent.turn()

    agent.run_for(expected * 3600 - 2)
    assert vault.count(path_prefix=CREDS_PATH) == 1
    agent.run_for(4)
    assert vault.count(path_prefix=CREDS_PATH) == 2


def test_threshold_setting_used(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=3600, max_ttl=3600, renewable=False)
    agent = generator_agent(tmp_path, vault, lease_renewal_threshold=0.5)
    agent.turn()

    agent.run_for(1798)
    assert vault.count(path_prefix=CREDS_PATH) == 1
    agent.run_for(4)
    assert vault.count(path_prefix=CREDS_PATH) == 2


def test_every_generation_holds_one_lease(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=300, max_ttl=700)
    agent = generator_agent(tmp_path, vault, lease_revoke_grace=20)
    pairs: list[tuple[str, str]] = []

    def check_pair(current: Agent) -> None:
        files = current.files()
        pair = (files["username"], files["password"])
        # The application may read the files at any moment: the pair on disk always works.
        assert vault.database_credentials_valid(*pair)
        if not pairs or pairs[-1] != pair:
            pairs.append(pair)

    agent.run_for(4000, on_turn=check_pair)

    assert len(pairs) >= 5
    assert len({username for username, _ in pairs}) == len(pairs)
    assert vault.count(path_prefix=CREDS_PATH) == len(pairs)


def test_one_change_per_rotation(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=300, max_ttl=700)
    agent = generator_agent(tmp_path, vault, lease_revoke_grace=20)

    agent.run_for(2000)

    reads = vault.count(path_prefix=CREDS_PATH)
    assert reads >= 3
    assert len(agent.changes) == reads
    assert agent.changes[0].added == ("password", "username")
    for change in agent.changes[1:]:
        assert change.target == "orders-db"
        assert change.changed == ("password", "username")
        assert change.added == ()
        assert change.removed == ()


def test_refused_renewal_rotates_at_once(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    agent = generator_agent(tmp_path, vault)
    agent.turn()
    first = agent.files()
    # Someone revokes the lease behind the agent's back: the next renewal is refused.
    for lease_id in vault.live_leases():
        vault.revoke_lease(lease_id)

    agent.run_for(401)

    second = agent.files()
    assert second != first
    assert vault.database_credentials_valid(second["username"], second["password"])
    assert (
        metric_value(
            agent, "secrets_agent_lease_renewals_total", target="orders-db", result="refused"
        )
        == 1
    )
    assert (
        metric_value(
            agent,
            "secrets_agent_lease_rotations_total",
            target="orders-db",
            reason="renewal_refused",
        )
        == 1
    )


def test_transient_renewal_failure_retried(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    agent = generator_agent(tmp_path, vault)
    agent.turn()
    first = agent.files()
    vault.fail_next(1, status=503, path_prefix=RENEW_PATH)

    agent.run_for(401)  # the renewal at 400 s fails
    assert vault.count(path_prefix=RENEW_PATH) == 1
    agent.run_for(10)  # and is retried 10 s later

    assert vault.count(path_prefix=RENEW_PATH) == 2
    assert agent.files() == first
    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert (
        metric_value(
            agent, "secrets_agent_lease_renewals_total", target="orders-db", result="error"
        )
        == 1
    )


def test_failing_renewals_rotate_at_margin(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    agent = generator_agent(tmp_path, vault, lease_revoke_grace=60)
    agent.turn()
    first = agent.files()
    vault.fail_next(1000, status=503, path_prefix=RENEW_PATH)

    agent.run_for(600 - 90 + 1)  # margin: 60 s grace + 30 s

    second = agent.files()
    assert second != first
    assert vault.database_credentials_valid(first["username"], first["password"])
    assert (
        metric_value(
            agent,
            "secrets_agent_lease_rotations_total",
            target="orders-db",
            reason="renewal_failed",
        )
        == 1
    )


def test_failed_rotation_keeps_old_lease(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=1500)
    agent = generator_agent(tmp_path, vault)
    agent.turn()
    first = agent.files()
    agent.run_for(1300)
    vault.fail_next(1, status=500, path_prefix=CREDS_PATH)

    agent.run_for(101)  # the rotation at 1400 s fails and is retried 10 s later
    assert agent.files() == first
    assert vault.database_credentials_valid(first["username"], first["password"])
    agent.run_for(10)

    second = agent.files()
    assert second != first
    assert vault.database_credentials_valid(second["username"], second["password"])


def test_expiry_gauge_tracks_lease(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=600, max_ttl=36000)
    agent = generator_agent(tmp_path, vault)
    agent.turn()
    agent.turn()  # the tick after the first write publishes the gauge
    issued = vault.now()

    expiry = metric_value(agent, "secrets_agent_lease_expiry_timestamp_seconds", target="orders-db")
    assert expiry == pytest.approx(issued + 600, abs=2)
    agent.run_for(401)
    renewed = metric_value(
        agent, "secrets_agent_lease_expiry_timestamp_seconds", target="orders-db"
    )
    assert renewed == pytest.approx(issued + 400 + 600, abs=2)
