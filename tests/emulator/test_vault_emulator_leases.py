"""The database engine and sys/leases: issue, renew arithmetic, revoke, expiry and cascades."""

from __future__ import annotations

import re
from collections.abc import Iterator

import hvac
import pytest
from conftest import ROOT_TOKEN, RawClient, client_for

from agent.testing.vault_emulator import VaultEmulator

LEASE_ID = re.compile(r"^database/creds/readonly/[0-9A-Za-z]{24}$")


@pytest.fixture
def emulator() -> Iterator[VaultEmulator]:
    """An emulator whose clock moves only by `advance()`, so TTL arithmetic is exact however
    long a request takes on a busy machine."""
    with VaultEmulator(root_token=ROOT_TOKEN, clock=lambda: 1_800_000_000.0) as started:
        yield started


@pytest.fixture
def database(emulator: VaultEmulator) -> str:
    emulator.add_database_role("readonly", default_ttl=60, max_ttl=180)
    emulator.set_policy("db", {"database/creds/readonly": ["read"]})
    return "readonly"


@pytest.fixture
def db_client(emulator: VaultEmulator, database: str) -> hvac.Client:
    return client_for(emulator, emulator.create_token(policies=["db"], ttl=3600))


def issue(client: hvac.Client) -> dict:
    return client.secrets.database.generate_credentials("readonly")


# -- issuing ---------------------------------------------------------------------------------------


def test_credentials_shape(emulator: VaultEmulator, db_client: hvac.Client) -> None:
    response = issue(db_client)

    assert LEASE_ID.match(response["lease_id"])
    assert response["renewable"] is True
    assert response["lease_duration"] == 60
    assert response["mount_type"] == "database"
    assert sorted(response["data"]) == ["password", "username"]
    assert response["data"]["password"].startswith("A1a-")
    assert len(response["data"]["password"]) == 20
    assert response["data"]["username"].startswith("v-token-readonly-")
    assert emulator.live_leases() == [response["lease_id"]]
    assert emulator.database_credentials_valid(
        response["data"]["username"], response["data"]["password"]
    )


def test_each_read_is_a_new_credential(emulator: VaultEmulator, db_client: hvac.Client) -> None:
    first = issue(db_client)
    second = issue(db_client)
    assert first["lease_id"] != second["lease_id"]
    assert first["data"]["username"] != second["data"]["username"]
    assert len(emulator.live_leases()) == 2


def test_non_renewable_role(emulator: VaultEmulator) -> None:
    emulator.add_database_role("sts-like", default_ttl=60, max_ttl=60, renewable=False)
    client = client_for(emulator, ROOT_TOKEN)
    response = client.secrets.database.generate_credentials("sts-like")

    assert response["renewable"] is False
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        client.sys.renew_lease(response["lease_id"])
    assert caught.value.errors == ["lease is not renewable"]


def test_unknown_role(database: str, root_client: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        root_client.secrets.database.generate_credentials("nope")
    assert caught.value.errors == ["unknown role: nope"]


def test_default_ttl_capped_at_max(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.add_database_role("capped", default_ttl=7200, max_ttl=3600)
    response = root_client.secrets.database.generate_credentials("capped")
    assert response["lease_duration"] == 3600
    assert response["warnings"] == [
        'TTL of "2h" exceeded the effective max_ttl of "1h"; TTL value is capped accordingly'
    ]


def test_role_api(emulator: VaultEmulator, raw: RawClient, root_client: hvac.Client) -> None:
    emulator.enable_database()
    response = raw.request(
        "POST",
        "/v1/database/roles/api-role",
        token=ROOT_TOKEN,
        body={"db_name": "pg", "default_ttl": "5m", "max_ttl": "1h", "creation_statements": []},
    )
    assert response.status == 204
    role = root_client.secrets.database.read_role("api-role")["data"]
    assert role["default_ttl"] == 300
    assert role["max_ttl"] == 3600
    assert root_client.secrets.database.generate_credentials("api-role")["lease_duration"] == 300


def test_creds_need_read_capability(emulator: VaultEmulator, database: str) -> None:
    client = client_for(emulator, emulator.create_token())
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.database.generate_credentials("readonly")


# -- renewing --------------------------------------------------------------------------------------


def test_renew_counts_from_now(emulator: VaultEmulator, db_client: hvac.Client) -> None:
    lease_id = issue(db_client)["lease_id"]
    emulator.advance(50)

    response = db_client.sys.renew_lease(lease_id)

    assert response["lease_id"] == lease_id
    assert response["renewable"] is True
    assert response["lease_duration"] == 60
    assert response["data"] is None
    assert response["warnings"] is None
    assert emulator.lease_ttl(lease_id) == pytest.approx(60, abs=1)


def test_renew_with_increment(emulator: VaultEmulator, db_client: hvac.Client) -> None:
    lease_id = issue(db_client)["lease_id"]
    assert db_client.sys.renew_lease(lease_id, increment=100)["lease_duration"] == 100
    assert db_client.sys.renew_lease(lease_id, increment="90s")["lease_duration"] == 90
    assert db_client.sys.renew_lease(lease_id, increment=10)["lease_duration"] == 10


def test_renew_capped_at_max_from_issue(emulator: VaultEmulator, db_client: hvac.Client) -> None:
    lease_id = issue(db_client)["lease_id"]
    emulator.advance(50)
    db_client.sys.renew_lease(lease_id)
    emulator.advance(50)
    db_client.sys.renew_lease(lease_id)
    emulator.advance(50)

    response = db_client.sys.renew_lease(lease_id)

    assert response["lease_duration"] == 30
    assert response["renewable"] is True
    assert response["warnings"] == [
        'TTL of "1m" exceeded the effective max_ttl of "30s"; TTL value is capped accordingly'
    ]
    emulator.advance(20)
    assert db_client.sys.renew_lease(lease_id)["lease_duration"] == 10
    emulator.advance(10)
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        db_client.sys.renew_lease(lease_id)
    assert caught.value.errors == ["lease not found"]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"lease_id": "database/creds/readonly/unknown"}, ["lease not found"]),
        ({"increment": 10}, ["lease_id must be specified"]),
        (
            {"lease_id": "auth/kubernetes/login/abc"},
            ["tokens cannot be renewed through this endpoint"],
        ),
    ],
)
def test_renew_errors(database: str, raw: RawClient, body: dict, errors: list[str]) -> None:
    response = raw.request("PUT", "/v1/sys/leases/renew", token=ROOT_TOKEN, body=body)
    assert response.status == 400
    assert response.json == {"errors": errors}


def test_renew_lease_id_in_url(db_client: hvac.Client, raw: RawClient) -> None:
    lease_id = issue(db_client)["lease_id"]
    response = raw.request("PUT", f"/v1/sys/leases/renew/{lease_id}", token=ROOT_TOKEN)
    assert response.status == 200
    assert response.json["lease_id"] == lease_id
    legacy = raw.request("PUT", f"/v1/sys/renew/{lease_id}", token=ROOT_TOKEN)
    assert legacy.status == 200


# -- lookup, revoke, list --------------------------------------------------------------------------


def test_lookup(emulator: VaultEmulator, db_client: hvac.Client) -> None:
    lease_id = issue(db_client)["lease_id"]
    data = db_client.sys.read_lease(lease_id)["data"]
    assert data["id"] == lease_id
    assert data["renewable"] is True
    assert data["ttl"] == 60
    assert data["last_renewal"] is None
    assert data["expire_time"].endswith("Z")
    assert data["issue_time"].endswith("Z")
    emulator.advance(10)
    db_client.sys.renew_lease(lease_id)
    assert db_client.sys.read_lease(lease_id)["data"]["last_renewal"].endswith("Z")


def test_lookup_unknown(root_client: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        root_client.sys.read_lease("database/creds/readonly/unknown")
    assert caught.value.errors == ["invalid lease"]


def test_revoke(emulator: VaultEmulator, db_client: hvac.Client, root_client: hvac.Client) -> None:
    credentials = issue(db_client)
    lease_id = credentials["lease_id"]

    response = root_client.sys.revoke_lease(lease_id)

    assert response.status_code == 204
    assert emulator.live_leases() == []
    assert not emulator.database_credentials_valid(
        credentials["data"]["username"], credentials["data"]["password"]
    )
    assert root_client.sys.revoke_lease(lease_id).status_code == 204
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.sys.renew_lease(lease_id)


def test_revoke_async_and_missing_id(db_client: hvac.Client, raw: RawClient) -> None:
    lease_id = issue(db_client)["lease_id"]
    response = raw.request(
        "PUT", "/v1/sys/leases/revoke", token=ROOT_TOKEN, body={"lease_id": lease_id, "sync": False}
    )
    assert response.status == 202
    assert response.body == b""
    missing = raw.request("PUT", "/v1/sys/leases/revoke", token=ROOT_TOKEN, body={})
    assert missing.status == 400
    assert missing.json == {"errors": ["lease_id must be specified"]}


def test_revoke_needs_capability(db_client: hvac.Client) -> None:
    lease_id = issue(db_client)["lease_id"]
    with pytest.raises(hvac.exceptions.Forbidden):
        db_client.sys.revoke_lease(lease_id)


def test_list_and_revoke_prefix(
    emulator: VaultEmulator, db_client: hvac.Client, root_client: hvac.Client
) -> None:
    first = issue(db_client)["lease_id"]
    second = issue(db_client)["lease_id"]

    keys = root_client.sys.list_leases("database/creds/readonly")["data"]["keys"]
    assert sorted(keys) == sorted([first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]])
    assert root_client.sys.list_leases("database/")["data"]["keys"] == ["creds/"]
    with pytest.raises(hvac.exceptions.Forbidden):
        db_client.sys.list_leases("database/creds/readonly")

    root_client.sys.revoke_prefix("database/creds/readonly")
    assert emulator.live_leases() == []
    with pytest.raises(hvac.exceptions.InvalidPath):
        root_client.sys.list_leases("database/creds/readonly")


# -- expiry and cascades ---------------------------------------------------------------------------


def test_lease_expires(emulator: VaultEmulator, db_client: hvac.Client) -> None:
    revoked: list[str] = []
    emulator.on_credentials_revoked = revoked.append
    credentials = issue(db_client)

    emulator.advance(59)
    assert emulator.live_leases() == [credentials["lease_id"]]
    emulator.advance(1)

    assert emulator.live_leases() == []
    assert revoked == [credentials["data"]["username"]]
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        db_client.sys.renew_lease(credentials["lease_id"])
    assert caught.value.errors == ["lease not found"]


def test_revoke_self_revokes_leases(emulator: VaultEmulator, database: str) -> None:
    revoked: list[str] = []
    emulator.on_credentials_revoked = revoked.append
    emulator.add_approle("app", role_id="r", secret_id="fake-secret-id-1", policies=["db"])
    client = client_for(emulator, None)
    client.auth.approle.login("r", "fake-secret-id-1")
    mine = issue(client)
    other = issue(client_for(emulator, ROOT_TOKEN))

    client.auth.token.revoke_self()

    assert emulator.live_leases() == [other["lease_id"]]
    assert revoked == [mine["data"]["username"]]
    assert emulator.live_tokens() == 0


def test_token_expiry_revokes_leases(emulator: VaultEmulator, database: str) -> None:
    emulator.add_database_role("long", default_ttl=3600, max_ttl=7200)
    emulator.set_policy("long", {"database/creds/long": ["read"]})
    client = client_for(emulator, emulator.create_token(policies=["long"], ttl=100))
    client.secrets.database.generate_credentials("long")
    emulator.advance(100)
    assert emulator.live_leases() == []


def test_disabling_mount_revokes_leases(
    emulator: VaultEmulator, db_client: hvac.Client, root_client: hvac.Client
) -> None:
    issue(db_client)
    root_client.sys.disable_secrets_engine("database")
    assert emulator.live_leases() == []


# -- hooks -----------------------------------------------------------------------------------------


def test_created_hook_arguments(emulator: VaultEmulator, db_client: hvac.Client) -> None:
    calls: list[tuple] = []
    emulator.on_credentials_created = lambda *arguments: calls.append(arguments)
    credentials = issue(db_client)
    assert calls == [
        ("readonly", credentials["data"]["username"], credentials["data"]["password"], 60)
    ]


def test_failing_created_hook(emulator: VaultEmulator, db_client: hvac.Client) -> None:
    def fail(role: str, username: str, password: str, ttl: int) -> None:
        raise RuntimeError(f"could not create {username} with {password}")

    emulator.on_credentials_created = fail
    with pytest.raises(hvac.exceptions.InternalServerError) as caught:
        issue(db_client)
    assert caught.value.errors == ["failed to create credentials: RuntimeError"]
    assert emulator.live_leases() == []


def test_failing_revoked_hook_still_drops_lease(
    emulator: VaultEmulator, db_client: hvac.Client
) -> None:
    def fail(username: str) -> None:
        raise RuntimeError("database unreachable")

    emulator.on_credentials_revoked = fail
    issue(db_client)
    emulator.advance(60)
    assert emulator.live_leases() == []


# -- namespaces ------------------------------------------------------------------------------------


def test_lease_in_namespace(emulator: VaultEmulator) -> None:
    emulator.add_database_role("ro", default_ttl=60, max_ttl=120, namespace="team-a")
    in_a = client_for(emulator, ROOT_TOKEN, namespace="team-a")
    lease_id = in_a.secrets.database.generate_credentials("ro")["lease_id"]

    assert re.match(r"^database/creds/ro/[0-9A-Za-z]{24}\.[0-9A-Za-z]{5}$", lease_id)
    assert in_a.sys.renew_lease(lease_id)["lease_duration"] == 60
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        client_for(emulator, ROOT_TOKEN).sys.renew_lease(lease_id)
    assert caught.value.errors == ["cannot renew a lease across namespaces"]
