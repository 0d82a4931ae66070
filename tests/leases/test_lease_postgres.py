"""A real PostgreSQL behind the emulator's database engine: the application's logins keep
working through three rotations, and a replaced user is dropped after the grace.

The emulator's credential hooks create and drop PostgreSQL roles, as Vault's database plugin
does, so a login over TCP with the pair in the files is the application's view.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lease_helpers import (
    CREDS_PATH,
    GENERATOR,
    GENERATOR_ONLY,
    Agent,
    make_agent,
    setup_vault,
    write_declarations,
)
from postgres_helpers import ThrowawayPostgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def database_vault(vault, postgres: ThrowawayPostgres):
    """The emulator with hooks that create and drop real roles."""

    def create(role: str, username: str, password: str, ttl: int) -> None:
        postgres.admin(f"CREATE ROLE \"{username}\" LOGIN PASSWORD '{password}';")

    def revoke(username: str) -> None:
        postgres.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE usename = '{username}';\n"
            f'DROP ROLE IF EXISTS "{username}";'
        )

    vault.on_credentials_created = create
    vault.on_credentials_revoked = revoke
    yield vault
    vault.on_credentials_created = None
    vault.on_credentials_revoked = None


def test_logins_survive_three_rotations(
    database_vault, postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    setup_vault(database_vault, ttl=300, max_ttl=700)
    config = write_declarations(tmp_path, database_vault, GENERATOR, GENERATOR_ONLY)
    agent = make_agent(tmp_path, database_vault, config, lease_revoke_grace=20)
    users: list[str] = []
    failed: list[str] = []

    def application_logs_in(current: Agent) -> None:
        files = current.files()
        result = postgres.login(files["username"], files["password"])
        if result.returncode != 0 or result.stdout.strip() != files["username"]:
            failed.append(files["username"])
        if not users or users[-1] != files["username"]:
            users.append(files["username"])

    agent.run_for(2300, on_turn=application_logs_in)

    assert failed == []
    assert len(users) >= 4  # the first user and three rotations
    assert database_vault.count(path_prefix=CREDS_PATH) == len(users)
    roles = postgres.admin("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'").split()
    assert set(roles) & set(users) == {users[-1]}  # every replaced user was dropped
    agent.close(revoke=True)


def test_replaced_user_dropped_after_grace(
    database_vault, postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    setup_vault(database_vault, ttl=600, max_ttl=1500)
    config = write_declarations(tmp_path, database_vault, GENERATOR, GENERATOR_ONLY)
    agent = make_agent(tmp_path, database_vault, config, lease_revoke_grace=60)
    agent.turn()
    old = agent.files()
    agent.run_for(1401)
    new = agent.files()

    assert postgres.login(old["username"], old["password"]).returncode == 0
    agent.run_for(61)

    assert postgres.login(old["username"], old["password"]).returncode != 0
    assert postgres.login(new["username"], new["password"]).returncode == 0
    agent.close(revoke=True)
    assert postgres.login(new["username"], new["password"]).returncode != 0
