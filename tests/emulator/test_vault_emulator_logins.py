"""Kubernetes, AppRole and JWT logins: tokens issued, role checks and Vault's error bodies."""

from __future__ import annotations

import hvac
import pytest
from conftest import ROOT_TOKEN, RawClient, client_for, service_account_jwt

from agent.testing.jwt import fake_jwt
from agent.testing.vault_emulator import VaultEmulator


@pytest.fixture
def kubernetes_role(emulator: VaultEmulator) -> str:
    emulator.set_policy("app-read", {"secret/data/app/*": ["read"]})
    emulator.add_kubernetes_role(
        "app",
        bound_service_account_names=["app-sa"],
        bound_service_account_namespaces=["prod"],
        policies=["app-read"],
        ttl=600,
        max_ttl=1800,
    )
    return "app"


# -- Kubernetes ------------------------------------------------------------------------------------


def test_kubernetes_login(emulator: VaultEmulator, kubernetes_role: str) -> None:
    emulator.kv_put("secret", "app/db", {"password": "fake-db-password-1"})
    client = client_for(emulator, None)
    jwt = service_account_jwt(
        "prod", "app-sa", **{"kubernetes.io": {"serviceaccount": {"uid": "uid-1"}}}
    )

    response = client.auth.kubernetes.login(kubernetes_role, jwt)

    assert response["data"] is None
    assert response["lease_id"] == ""
    assert response["lease_duration"] == 0
    auth = response["auth"]
    assert auth["policies"] == ["app-read", "default"]
    assert auth["lease_duration"] == 600
    assert auth["renewable"] is True
    assert auth["orphan"] is True
    assert auth["metadata"] == {
        "role": "app",
        "service_account_name": "app-sa",
        "service_account_namespace": "prod",
        "service_account_secret_name": "",
        "service_account_uid": "uid-1",
    }
    assert client.token == auth["client_token"]
    lookup = client.auth.token.lookup_self()["data"]
    assert lookup["display_name"] == "kubernetes-prod-app-sa"
    assert lookup["path"] == "auth/kubernetes/login"
    value = client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    assert value["data"]["data"] == {"password": "fake-db-password-1"}
    assert emulator.received_jwts() == [jwt]
    assert emulator.live_tokens() == 1


def test_kubernetes_records_each_jwt(emulator: VaultEmulator, kubernetes_role: str) -> None:
    first = service_account_jwt("prod", "app-sa", jti="first")
    second = service_account_jwt("prod", "app-sa", jti="second")
    client = client_for(emulator, None)
    client.auth.kubernetes.login(kubernetes_role, first)
    client.auth.kubernetes.login(kubernetes_role, second)
    assert emulator.received_jwts() == [first, second]
    assert emulator.received_jwts(mount="other") == []


@pytest.mark.parametrize(
    ("body", "status", "errors"),
    [
        ({"jwt": "x.y.z"}, 400, ["missing role"]),
        ({"role": "app"}, 400, ["missing jwt"]),
        ({"role": "nope", "jwt": "x.y.z"}, 400, ['invalid role name "nope"']),
    ],
)
def test_kubernetes_request_errors(
    kubernetes_role: str, raw: RawClient, body: dict, status: int, errors: list[str]
) -> None:
    response = raw.request("POST", "/v1/auth/kubernetes/login", body=body)
    assert response.status == status
    assert response.json == {"errors": errors}


def test_kubernetes_wrong_service_account(emulator: VaultEmulator, kubernetes_role: str) -> None:
    client = client_for(emulator, None)
    with pytest.raises(hvac.exceptions.Forbidden) as caught:
        client.auth.kubernetes.login(kubernetes_role, service_account_jwt("prod", "other-sa"))
    assert caught.value.errors == ["service account name not authorized"]
    assert client.token is None


def test_kubernetes_wrong_namespace(emulator: VaultEmulator, kubernetes_role: str) -> None:
    client = client_for(emulator, None)
    with pytest.raises(hvac.exceptions.Forbidden) as caught:
        client.auth.kubernetes.login(kubernetes_role, service_account_jwt("dev", "app-sa"))
    assert caught.value.errors == ["namespace not authorized"]


def test_kubernetes_malformed_jwt(emulator: VaultEmulator, kubernetes_role: str) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        client_for(emulator, None).auth.kubernetes.login(kubernetes_role, "not-a-jwt")


def test_kubernetes_subject_not_service_account(
    emulator: VaultEmulator, kubernetes_role: str
) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        client_for(emulator, None).auth.kubernetes.login(kubernetes_role, fake_jwt("alice"))


def test_kubernetes_expired_jwt(emulator: VaultEmulator, kubernetes_role: str) -> None:
    jwt = service_account_jwt("prod", "app-sa", exp=int(emulator.now()) + 60)
    client = client_for(emulator, None)
    client.auth.kubernetes.login(kubernetes_role, jwt)
    emulator.advance(61)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.kubernetes.login(kubernetes_role, jwt)
    emulator.check_jwt_expiry = False
    client.auth.kubernetes.login(kubernetes_role, jwt)


def test_kubernetes_rejected_jwt(emulator: VaultEmulator, kubernetes_role: str) -> None:
    jwt = service_account_jwt("prod", "app-sa")
    emulator.reject_jwt(jwt)
    with pytest.raises(hvac.exceptions.Forbidden) as caught:
        client_for(emulator, None).auth.kubernetes.login(kubernetes_role, jwt)
    assert caught.value.errors == ["permission denied"]


def test_kubernetes_globs_and_custom_mount(emulator: VaultEmulator) -> None:
    emulator.add_kubernetes_role(
        "any",
        bound_service_account_names=["app-*"],
        bound_service_account_namespaces=["*"],
        policies=[],
        mount="k8s-cluster-b",
    )
    client = client_for(emulator, None)
    jwt = service_account_jwt("anything", "app-worker")
    response = client.auth.kubernetes.login("any", jwt, mount_point="k8s-cluster-b")
    assert response["auth"]["policies"] == ["default"]
    assert emulator.received_jwts(mount="k8s-cluster-b") == [jwt]
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.kubernetes.login("any", jwt)
    root = client_for(emulator, ROOT_TOKEN)
    with pytest.raises(hvac.exceptions.InvalidPath) as caught:
        root.auth.kubernetes.login("any", jwt, use_token=False)
    assert caught.value.errors == [
        'no handler for route "auth/kubernetes/login". route entry not found.'
    ]


def test_kubernetes_audience(emulator: VaultEmulator) -> None:
    emulator.add_kubernetes_role(
        "aud",
        bound_service_account_names=["sa"],
        bound_service_account_namespaces=["ns"],
        policies=[],
        audience="vault",
    )
    client = client_for(emulator, None)
    client.auth.kubernetes.login("aud", service_account_jwt("ns", "sa", aud=["vault"]))
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.kubernetes.login("aud", service_account_jwt("ns", "sa", aud=["other"]))


def test_kubernetes_login_ttl_capped(emulator: VaultEmulator) -> None:
    emulator.add_kubernetes_role(
        "short",
        bound_service_account_names=["sa"],
        bound_service_account_namespaces=["ns"],
        policies=[],
        ttl=7200,
        max_ttl=3600,
    )
    response = client_for(emulator, None).auth.kubernetes.login(
        "short", service_account_jwt("ns", "sa")
    )
    assert response["auth"]["lease_duration"] == 3600
    assert response["warnings"] == [
        'TTL of "2h" exceeded the effective max_ttl of "1h"; TTL value is capped accordingly'
    ]


def test_kubernetes_role_api(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    root_client.sys.enable_auth_method("kubernetes", path="k8s")
    root_client.auth.kubernetes.create_role(
        "api-role",
        bound_service_account_names=["sa"],
        bound_service_account_namespaces=["ns"],
        policies=["p"],
        ttl="5m",
        mount_point="k8s",
    )
    role = root_client.auth.kubernetes.read_role("api-role", mount_point="k8s")
    assert role["bound_service_account_names"] == ["sa"]
    assert role["token_ttl"] == 300
    response = client_for(emulator, None).auth.kubernetes.login(
        "api-role", service_account_jwt("ns", "sa"), mount_point="k8s"
    )
    assert response["auth"]["lease_duration"] == 300
    assert root_client.auth.kubernetes.list_roles(mount_point="k8s")["keys"] == ["api-role"]


def test_login_in_namespace(emulator: VaultEmulator) -> None:
    emulator.add_kubernetes_role(
        "app",
        bound_service_account_names=["sa"],
        bound_service_account_namespaces=["ns"],
        policies=[],
        namespace="team-a",
    )
    client = client_for(emulator, None, namespace="team-a")
    client.auth.kubernetes.login("app", service_account_jwt("ns", "sa"))
    assert emulator.live_tokens(namespace="team-a") == 1
    assert emulator.live_tokens() == 0
    assert client.auth.token.lookup_self()["data"]["namespace_path"] == "team-a/"
    root_namespace = client_for(emulator, client.token)
    with pytest.raises(hvac.exceptions.Forbidden):
        root_namespace.auth.token.lookup_self()


# -- AppRole ---------------------------------------------------------------------------------------


@pytest.fixture
def approle(emulator: VaultEmulator) -> str:
    emulator.add_approle(
        "worker", role_id="role-id-1", secret_id="fake-secret-id-1", policies=["p"], ttl=1200
    )
    return "role-id-1"


def test_approle_login(emulator: VaultEmulator, approle: str) -> None:
    client = client_for(emulator, None)
    response = client.auth.approle.login(approle, "fake-secret-id-1")
    auth = response["auth"]
    assert auth["lease_duration"] == 1200
    assert auth["metadata"] == {"role_name": "worker"}
    assert auth["policies"] == ["default", "p"]
    lookup = client.auth.token.lookup_self()["data"]
    assert lookup["display_name"] == "approle"
    assert lookup["path"] == "auth/approle/login"


@pytest.mark.parametrize(
    ("body", "status", "errors"),
    [
        ({"role_id": "role-id-1", "secret_id": "wrong"}, 400, ["invalid role or secret ID"]),
        ({"role_id": "unknown", "secret_id": "x"}, 400, ["invalid role or secret ID"]),
        ({"role_id": "role-id-1", "secret_id": None}, 400, ["missing secret_id"]),
        ({"role_id": "role-id-1"}, 400, ["missing secret_id"]),
        ({"secret_id": "fake-secret-id-1"}, 500, ["missing role_id"]),
    ],
)
def test_approle_errors(
    approle: str, raw: RawClient, body: dict, status: int, errors: list[str]
) -> None:
    response = raw.request("POST", "/v1/auth/approle/login", body=body)
    assert response.status == status
    assert response.json == {"errors": errors}


def test_approle_hvac_exception(emulator: VaultEmulator, approle: str) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client_for(emulator, None).auth.approle.login(approle, "wrong")


def test_approle_secret_id_api(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    root_client.sys.enable_auth_method("approle", path="ar")
    root_client.auth.approle.create_or_update_approle(
        "api", token_policies=["p1", "p2"], token_ttl="10m", mount_point="ar"
    )
    role_id = root_client.auth.approle.read_role_id("api", mount_point="ar")["data"]["role_id"]
    secret = root_client.auth.approle.generate_secret_id("api", mount_point="ar")["data"]

    response = client_for(emulator, None).auth.approle.login(
        role_id, secret["secret_id"], mount_point="ar"
    )

    assert response["auth"]["policies"] == ["default", "p1", "p2"]
    assert response["auth"]["lease_duration"] == 600


# -- JWT -------------------------------------------------------------------------------------------


@pytest.fixture
def jwt_role(emulator: VaultEmulator) -> str:
    emulator.add_jwt_role(
        "ci",
        policies=["deploy"],
        bound_audiences=["vault"],
        bound_claims={"repo": ["org/app"]},
        ttl=300,
    )
    return "ci"


def test_jwt_login(emulator: VaultEmulator, jwt_role: str) -> None:
    client = client_for(emulator, None)
    token = fake_jwt("ci-runner", aud="vault", repo="org/app")
    response = client.auth.jwt.jwt_login(jwt_role, token)
    assert response["auth"]["lease_duration"] == 300
    assert response["auth"]["metadata"] == {"role": "ci"}
    assert client.auth.token.lookup_self()["data"]["display_name"] == "ci-runner"


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"aud": "other", "repo": "org/app"}, "invalid audience"),
        ({"aud": "vault", "repo": "org/other"}, 'claim "repo" does not match'),
    ],
)
def test_jwt_claim_checks(emulator: VaultEmulator, jwt_role: str, claims: dict, error: str) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        client_for(emulator, None).auth.jwt.jwt_login(jwt_role, fake_jwt("x", **claims))
    assert error in caught.value.errors[0]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"jwt": "a.b.c"}, ["missing role"]),
        ({"role": "nope", "jwt": "a.b.c"}, ['role "nope" could not be found']),
        ({"role": "ci"}, ["missing token"]),
    ],
)
def test_jwt_request_errors(jwt_role: str, raw: RawClient, body: dict, errors: list[str]) -> None:
    response = raw.request("POST", "/v1/auth/jwt/login", body=body)
    assert response.status == 400
    assert response.json == {"errors": errors}


def test_jwt_audience_without_bound_audiences(emulator: VaultEmulator) -> None:
    emulator.add_jwt_role("open", policies=[])
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        client_for(emulator, None).auth.jwt.jwt_login("open", fake_jwt("x", aud="vault"))
    assert caught.value.errors == ["audience claim found in JWT but no audiences bound to the role"]


def test_login_helpers_reject_wrong_mount_type(emulator: VaultEmulator) -> None:
    emulator.add_approle("r", role_id="a", secret_id="b", policies=[], mount="shared")
    with pytest.raises(ValueError, match="approle"):
        emulator.add_kubernetes_role(
            "r",
            bound_service_account_names=["sa"],
            bound_service_account_namespaces=["ns"],
            policies=[],
            mount="shared",
        )


def test_auth_listing(emulator: VaultEmulator, approle: str, root_client: hvac.Client) -> None:
    listing = root_client.sys.list_auth_methods()
    assert sorted(listing["data"]) == ["approle/", "token/"]
    assert listing["approle/"]["type"] == "approle"
    assert ROOT_TOKEN not in str(listing)
