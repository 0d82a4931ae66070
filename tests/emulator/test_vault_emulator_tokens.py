"""Token auth and ACL policies: lookup, renew arithmetic, revoke, create, expiry, counting."""

from __future__ import annotations

import hvac
import pytest
from conftest import ROOT_TOKEN, RawClient, client_for

from agent.testing.vault_emulator import VaultEmulator

ACL_DENIED = ["1 error occurred:\n\t* permission denied\n\n"]


# -- lookup ----------------------------------------------------------------------------------------


def test_lookup_self_root(root_client: hvac.Client) -> None:
    data = root_client.auth.token.lookup_self()["data"]
    assert data["policies"] == ["root"]
    assert data["ttl"] == 0
    assert data["creation_ttl"] == 0
    assert data["expire_time"] is None
    assert data["renewable"] is False
    assert data["path"] == "auth/token/root"
    assert data["display_name"] == "root"
    assert data["orphan"] is True
    assert data["type"] == "service"


def test_lookup_self_created_token(emulator: VaultEmulator) -> None:
    token = emulator.create_token(policies=["app"], ttl=600)
    response = client_for(emulator, token).auth.token.lookup_self()
    data = response["data"]
    assert response["auth"] is None
    assert response["lease_duration"] == 0
    assert data["policies"] == ["app", "default"]
    assert data["ttl"] == 600
    assert data["creation_ttl"] == 600
    assert isinstance(data["creation_time"], int)
    assert data["expire_time"].endswith("Z")
    assert data["issue_time"].endswith("Z")
    assert data["renewable"] is True
    assert data["num_uses"] == 0
    assert data["meta"] is None
    assert len(data["accessor"]) == 24
    assert "last_renewal" not in data


def test_is_authenticated(emulator: VaultEmulator) -> None:
    assert client_for(emulator, ROOT_TOKEN).is_authenticated() is True
    assert client_for(emulator, "hvs.notatokennotatokennota").is_authenticated() is False


def test_lookup_other_token_needs_policy(emulator: VaultEmulator) -> None:
    token = emulator.create_token(policies=["default"])
    other = emulator.create_token(policies=["default"], ttl=99)

    assert client_for(emulator, ROOT_TOKEN).auth.token.lookup(other)["data"]["ttl"] == 99
    with pytest.raises(hvac.exceptions.Forbidden) as caught:
        client_for(emulator, token).auth.token.lookup(other)
    assert caught.value.errors == ACL_DENIED


def test_lookup_unknown_token(root_client: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.Forbidden) as caught:
        root_client.auth.token.lookup("hvs.notatokennotatokennota")
    assert caught.value.errors == ["bad token"]


# -- renew -----------------------------------------------------------------------------------------


def test_renew_self_counts_from_now(emulator: VaultEmulator) -> None:
    token = emulator.create_token(ttl=100)
    client = client_for(emulator, token)
    emulator.advance(40)

    response = client.auth.token.renew_self()

    assert response["lease_duration"] == 0
    assert response["renewable"] is False
    assert response["data"] is None
    assert response["auth"]["client_token"] == token
    assert response["auth"]["lease_duration"] == 100
    assert response["auth"]["renewable"] is True
    assert emulator.token_ttl(token) == pytest.approx(100, abs=1)
    data = client.auth.token.lookup_self()["data"]
    assert data["creation_ttl"] == 100
    assert isinstance(data["last_renewal_time"], int)
    assert data["last_renewal"].endswith("Z")


def test_renew_self_increment_can_shorten(emulator: VaultEmulator) -> None:
    token = emulator.create_token(ttl=100)
    response = client_for(emulator, token).auth.token.renew_self(increment=10)
    assert response["auth"]["lease_duration"] == 10
    assert emulator.token_ttl(token) == pytest.approx(10, abs=1)


def test_renew_self_duration_string(emulator: VaultEmulator) -> None:
    token = emulator.create_token(ttl=100)
    response = client_for(emulator, token).auth.token.renew_self(increment="2m")
    assert response["auth"]["lease_duration"] == 120


def test_renew_self_capped_by_explicit_max(emulator: VaultEmulator) -> None:
    token = emulator.create_token(ttl=100, max_ttl=150)
    client = client_for(emulator, token)
    emulator.advance(90)

    response = client.auth.token.renew_self(increment=3600)

    assert response["auth"]["lease_duration"] == 60
    assert response["warnings"] == [
        'TTL of "1h" exceeded the effective max_ttl of "1m"; TTL value is capped accordingly'
    ]
    emulator.advance(61)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.token.lookup_self()


def test_renew_not_renewable(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    token = emulator.create_token(renewable=False)
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        client_for(emulator, token).auth.token.renew_self()
    assert caught.value.errors == ["lease is not renewable"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.auth.token.renew_self()


def test_renew_other_token(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    token = emulator.create_token(ttl=100)
    response = root_client.auth.token.renew(token, increment=500)
    assert response["auth"]["lease_duration"] == 500


def test_renew_login_token_rereads_role() -> None:
    # A frozen base clock: with real time underneath, a loaded machine shortens the last
    # capped TTL by a second.
    with VaultEmulator(root_token=ROOT_TOKEN, clock=lambda: 1_700_000_000.0) as emulator:
        _check_renewal_rereads_role(emulator)


def _check_renewal_rereads_role(emulator: VaultEmulator) -> None:
    emulator.add_approle(
        "app", role_id="role-1", secret_id="fake-secret-id-1", policies=["p"], ttl=100, max_ttl=300
    )
    client = client_for(emulator, None)
    client.auth.approle.login("role-1", "fake-secret-id-1")
    emulator.add_approle(
        "app", role_id="role-1", secret_id="fake-secret-id-1", policies=["p"], ttl=50, max_ttl=300
    )

    assert client.auth.token.renew_self()["auth"]["lease_duration"] == 50
    for _ in range(5):
        emulator.advance(45)
        assert client.auth.token.renew_self()["auth"]["lease_duration"] == 50
    emulator.advance(45)
    response = client.auth.token.renew_self()
    assert response["auth"]["lease_duration"] == 30
    assert response["warnings"] == [
        'TTL of "50s" exceeded the effective max_ttl of "30s"; TTL value is capped accordingly'
    ]
    emulator.advance(30)
    assert not client.is_authenticated()


# -- expiry, revoke, counting ----------------------------------------------------------------------


def test_expired_token_is_denied(emulator: VaultEmulator) -> None:
    token = emulator.create_token(ttl=30)
    client = client_for(emulator, token)
    client.auth.token.lookup_self()
    emulator.advance(30)
    with pytest.raises(hvac.exceptions.Forbidden) as caught:
        client.auth.token.lookup_self()
    assert caught.value.errors == ["permission denied"]
    assert emulator.live_tokens() == 0


def test_revoke_self(emulator: VaultEmulator) -> None:
    token = emulator.create_token()
    client = client_for(emulator, token)
    assert emulator.live_tokens() == 1

    response = client.auth.token.revoke_self()

    assert response.status_code == 204
    assert emulator.live_tokens() == 0
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.token.lookup_self()


def test_revoke_other_token(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    token = emulator.create_token()
    assert root_client.auth.token.revoke(token).status_code == 204
    assert root_client.auth.token.revoke(token).status_code == 204
    assert emulator.live_tokens() == 0


def test_live_tokens_counts_logins(emulator: VaultEmulator) -> None:
    emulator.add_approle("app", role_id="role-1", secret_id="fake-secret-id-1", policies=[])
    assert emulator.live_tokens() == 0
    clients = [client_for(emulator, None) for _ in range(3)]
    for client in clients:
        client.auth.approle.login("role-1", "fake-secret-id-1")
    assert emulator.live_tokens() == 3
    clients[0].auth.token.revoke_self()
    assert emulator.live_tokens() == 2


def test_num_uses(emulator: VaultEmulator) -> None:
    token = emulator.create_token(num_uses=2)
    client = client_for(emulator, token)
    assert client.auth.token.lookup_self()["data"]["num_uses"] == 1
    client.auth.token.lookup_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.token.lookup_self()


# -- create ----------------------------------------------------------------------------------------


def test_create_from_root(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.set_policy("app", {"secret/data/app": ["read"]})
    response = root_client.auth.token.create(policies=["app"], ttl="1h", meta={"team": "a"})
    auth = response["auth"]
    assert response["data"] is None
    assert auth["policies"] == ["app", "default"]
    assert auth["token_policies"] == ["app", "default"]
    assert auth["lease_duration"] == 3600
    assert auth["renewable"] is True
    assert auth["orphan"] is False
    assert auth["metadata"] == {"team": "a"}
    assert auth["token_type"] == "service"
    assert auth["entity_id"] == ""
    assert auth["mfa_requirement"] is None
    assert auth["client_token"].startswith("hvs.")
    looked_up = client_for(emulator, auth["client_token"]).auth.token.lookup_self()["data"]
    assert looked_up["path"] == "auth/token/create"
    assert looked_up["display_name"] == "token-token"


def test_create_warns_for_unknown_policies(root_client: hvac.Client) -> None:
    response = root_client.auth.token.create(policies=["stage", "web"])
    assert response["warnings"] == [
        'Policy "stage" does not exist',
        'Policy "web" does not exist',
    ]


def test_create_caps_ttl_at_explicit_max(root_client: hvac.Client) -> None:
    response = root_client.auth.token.create(ttl="2h", explicit_max_ttl="1h")
    assert response["auth"]["lease_duration"] == 3600
    assert response["warnings"] == [
        'TTL of "2h" exceeded the effective max_ttl of "1h"; TTL value is capped accordingly'
    ]


def test_create_without_ttl_uses_system_default(root_client: hvac.Client) -> None:
    response = root_client.auth.token.create(policies=["default"])
    assert response["auth"]["lease_duration"] == 768 * 3600


def test_child_token_revoked_with_parent(emulator: VaultEmulator) -> None:
    emulator.set_policy(
        "maker", {"auth/token/create": ["update"], "auth/token/create-orphan": ["update"]}
    )
    parent = emulator.create_token(policies=["maker"])
    child = client_for(emulator, parent).auth.token.create(policies=["maker"])
    child_token = child["auth"]["client_token"]
    orphan = client_for(emulator, parent).auth.token.create_orphan(policies=["maker"])
    assert orphan["auth"]["orphan"] is True
    assert emulator.live_tokens() == 3

    client_for(emulator, parent).auth.token.revoke_self()

    assert not client_for(emulator, child_token).is_authenticated()
    assert client_for(emulator, orphan["auth"]["client_token"]).is_authenticated()
    assert emulator.live_tokens() == 1


def test_create_policies_must_be_subset(emulator: VaultEmulator) -> None:
    emulator.set_policy("maker", {"auth/token/create": ["update"]})
    parent = emulator.create_token(policies=["maker"])
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        client_for(emulator, parent).auth.token.create(policies=["admin"])
    assert caught.value.errors == ["child policies must be subset of parent"]


def test_create_needs_capability(emulator: VaultEmulator) -> None:
    token = emulator.create_token(policies=["default"])
    with pytest.raises(hvac.exceptions.Forbidden):
        client_for(emulator, token).auth.token.create(policies=["default"])


def test_create_with_fixed_id(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    root_client.auth.token.create(id="fixed-token-id", policies=["default"])
    assert client_for(emulator, "fixed-token-id").is_authenticated()


def test_create_batch_token_rejected(root_client: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.auth.token.create(type="batch")


# -- policies --------------------------------------------------------------------------------------


def test_policy_glob_and_deny(emulator: VaultEmulator) -> None:
    emulator.kv_put("secret", "app/db", {"k": "v"})
    emulator.kv_put("secret", "app/admin", {"k": "v"})
    emulator.set_policy(
        "app",
        {"secret/data/app/*": ["read"], "secret/data/app/admin": ["deny"]},
    )
    client = client_for(emulator, emulator.create_token(policies=["app"]))

    value = client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    assert value["data"]["data"] == {"k": "v"}
    with pytest.raises(hvac.exceptions.Forbidden) as caught:
        client.secrets.kv.v2.read_secret_version("app/admin", raise_on_deleted_version=True)
    assert caught.value.errors == ACL_DENIED
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.create_or_update_secret("app/db", secret={"k": "x"})


def test_policy_plus_segment(emulator: VaultEmulator) -> None:
    emulator.kv_put("secret", "team-a/app", {"k": "v"})
    emulator.kv_put("secret", "team-a/deeper/app", {"k": "v"})
    emulator.set_policy("teams", {"secret/data/+/app": ["read"]})
    client = client_for(emulator, emulator.create_token(policies=["teams"]))

    client.secrets.kv.v2.read_secret_version("team-a/app", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version("team-a/deeper/app", raise_on_deleted_version=True)


def test_policy_create_versus_update(emulator: VaultEmulator) -> None:
    emulator.kv_put("secret", "existing", {"k": "v"})
    emulator.set_policy("creator", {"secret/data/*": ["create"]})
    client = client_for(emulator, emulator.create_token(policies=["creator"]))

    client.secrets.kv.v2.create_or_update_secret("new", secret={"k": "v"})
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.create_or_update_secret("existing", secret={"k": "x"})


def test_policy_list_needs_trailing_slash_match(emulator: VaultEmulator) -> None:
    emulator.kv_put("secret", "app/db", {"k": "v"})
    emulator.set_policy("lister", {"secret/metadata/app/*": ["list"]})
    client = client_for(emulator, emulator.create_token(policies=["lister"]))
    assert client.secrets.kv.v2.list_secrets("app")["data"]["keys"] == ["db"]


def test_default_policy_denies_secrets(emulator: VaultEmulator) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    client = client_for(emulator, emulator.create_token())
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
    client.auth.token.lookup_self()


def test_policy_api_round_trip(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    hcl = 'path "secret/data/app" {\n  capabilities = ["read"]\n}\n'
    root_client.sys.create_or_update_policy("reader", hcl)
    json_rules = {"path": {"secret/metadata/*": {"capabilities": ["list"]}}}
    root_client.sys.create_or_update_policy("lister", json_rules)

    assert "reader" in root_client.sys.list_policies()["data"]["policies"]
    assert root_client.sys.read_policy("reader")["data"]["rules"] == hcl
    client = client_for(emulator, emulator.create_token(policies=["reader", "lister"]))
    client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
    assert client.secrets.kv.v2.list_secrets("")["data"]["keys"] == ["app"]

    root_client.sys.delete_policy("reader")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)


def test_capabilities_self(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.set_policy("app", {"secret/data/app": ["read", "list"]})
    token = emulator.create_token(policies=["app"])
    response = raw.request(
        "POST", "/v1/sys/capabilities-self", token=token, body={"paths": ["secret/data/app"]}
    )
    assert response.status == 200
    assert response.json["capabilities"] == ["list", "read"]
    assert response.json["data"]["secret/data/app"] == ["list", "read"]


def test_set_policy_validation(emulator: VaultEmulator) -> None:
    with pytest.raises(ValueError, match="unknown capabilities"):
        emulator.set_policy("bad", {"secret/*": ["reed"]})
    with pytest.raises(ValueError):
        emulator.set_policy("root", {"secret/*": ["read"]})
