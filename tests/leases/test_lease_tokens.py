"""The token rule: Vault revokes a token's leases with the token, so the generator keeps a
replaced token until its leases are rotated, and rotates a lease before its token expires.

The generator logs in with AppRole; the emulator revokes leases when their token expires or is
revoked, as Vault does.
"""

from __future__ import annotations

from pathlib import Path

from lease_helpers import (
    CREDS_PATH,
    GENERATOR,
    GENERATOR_ONLY,
    Agent,
    make_agent,
    metric_value,
    setup_vault,
    write_declarations,
)

LOGIN_PATH = "auth/approle/login"
TOKEN_RENEW_PATH = "auth/token/renew-self"
TOKEN_REVOKE_PATH = "auth/token/revoke-self"


def generator_agent(tmp_path: Path, vault, **overrides) -> Agent:
    config = write_declarations(tmp_path, vault, GENERATOR, GENERATOR_ONLY)
    return make_agent(tmp_path, vault, config, **overrides)


def always_valid(pairs: list[tuple[str, str]]):
    """Return an `on_turn` check: the pair on disk works in Vault after every turn."""

    def check(agent: Agent) -> None:
        files = agent.files()
        pair = (files["username"], files["password"])
        assert agent.vault.database_credentials_valid(*pair), "the files hold revoked credentials"
        if not pairs or pairs[-1] != pair:
            pairs.append(pair)

    return check


def test_relogin_keeps_lease(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=3600, max_ttl=36000, token_ttl=600)
    agent = generator_agent(tmp_path, vault)
    agent.turn()
    first = agent.files()
    # The token renewal at 400 s is refused, so the connection logs in again.
    vault.fail_next(1, status=400, path_prefix=TOKEN_RENEW_PATH)

    agent.run_for(401)

    assert vault.count(path_prefix=LOGIN_PATH) == 2
    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert agent.files() == first
    assert vault.database_credentials_valid(first["username"], first["password"])
    # The old token parents the lease, so it is kept, not revoked.
    assert vault.live_tokens() == 2
    assert vault.count(path_prefix=TOKEN_REVOKE_PATH) == 0


def test_lease_rotated_before_old_token_expires(vault, tmp_path: Path) -> None:
    setup_vault(vault, ttl=3600, max_ttl=36000, token_ttl=600)
    agent = generator_agent(tmp_path, vault, lease_revoke_grace=60)
    agent.turn()
    first = agent.files()
    vault.fail_next(1, status=400, path_prefix=TOKEN_RENEW_PATH)
    pairs: list[tuple[str, str]] = []

    # The old token expires at 600 s: new credentials by 600 - (60 + 30) s.
    agent.run_for(509, on_turn=always_valid(pairs))
    assert vault.count(path_prefix=CREDS_PATH) == 1
    agent.run_for(2, on_turn=always_valid(pairs))

    second = agent.files()
    assert second != first
    assert vault.count(path_prefix=CREDS_PATH) == 2
    assert vault.database_credentials_valid(first["username"], first["password"])
    assert (
        metric_value(
            agent, "secrets_agent_lease_rotations_total", target="orders-db", reason="parent_token"
        )
        == 1
    )

    # After the grace the old lease is revoked, and with no lease left the old token too.
    agent.run_for(61, on_turn=always_valid(pairs))
    assert not vault.database_credentials_valid(first["username"], first["password"])
    assert vault.count(path_prefix=TOKEN_REVOKE_PATH) == 1
    assert vault.live_tokens() == 1
    assert vault.database_credentials_valid(second["username"], second["password"])


def test_token_max_ttl_without_reissue_at_login(vault, tmp_path: Path) -> None:
    # The token's max TTL is 900 s: renewal at 400 s is capped to 500 s, the connection logs
    # in again at 700 s, and the lease must move to the new token before 900 s.
    setup_vault(vault, ttl=3600, max_ttl=36000, token_ttl=600, token_max_ttl=900)
    agent = generator_agent(tmp_path, vault, lease_revoke_grace=60)
    pairs: list[tuple[str, str]] = []

    agent.run_for(701, on_turn=always_valid(pairs))
    assert vault.count(path_prefix=LOGIN_PATH) == 2
    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert vault.live_tokens() == 2

    agent.run_for(4000, on_turn=always_valid(pairs))

    # One new lease per token, each made well before its token's end.
    logins = vault.count(path_prefix=LOGIN_PATH)
    assert vault.count(path_prefix=CREDS_PATH) == logins
    assert len(pairs) == logins
    assert vault.live_tokens() <= 2


def test_long_lease_outlives_no_token(vault, tmp_path: Path) -> None:
    # A renewable token keeps being renewed: the lease, not the token, sets the schedule.
    setup_vault(vault, ttl=600, max_ttl=36000, token_ttl=300)
    agent = generator_agent(tmp_path, vault)
    pairs: list[tuple[str, str]] = []

    agent.run_for(3000, on_turn=always_valid(pairs))

    assert vault.count(path_prefix=CREDS_PATH) == 1
    assert vault.count(path_prefix=LOGIN_PATH) == 1
    assert vault.count(path_prefix=TOKEN_RENEW_PATH) >= 10
    assert len(pairs) == 1
