"""sys/ routes, TLS, the clock, the seed document and the command line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import hvac
import pytest
import requests
from conftest import ROOT_TOKEN, RawClient, client_for, service_account_jwt

from agent.testing.vault_emulator import VaultEmulator, write_test_certificates
from agent.testing.vault_emulator.__main__ import main as cli_main

REPOSITORY = Path(__file__).resolve().parents[2]
HEALTH_KEYS = [
    "initialized",
    "sealed",
    "standby",
    "performance_standby",
    "replication_performance_mode",
    "replication_dr_mode",
    "server_time_utc",
    "version",
    "cluster_name",
    "cluster_id",
]


# -- health and seal status ------------------------------------------------------------------------


def test_health_active(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    body = root_client.sys.read_health_status(method="GET")
    assert list(body) == HEALTH_KEYS
    assert body["sealed"] is False
    assert body["server_time_utc"] == int(emulator.now())
    head = root_client.sys.read_health_status()
    assert head.status_code == 200
    assert head.content == b""


def test_health_sealed(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.seal()
    response = raw.request("GET", "/v1/sys/health")
    assert response.status == 503
    assert response.json["sealed"] is True
    assert "cluster_name" not in response.json
    assert "cluster_id" not in response.json
    assert raw.request("GET", "/v1/sys/health?sealedcode=200").status == 200
    assert raw.request("HEAD", "/v1/sys/health").status == 503


def test_health_never_raises_in_hvac(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.seal()
    response = root_client.sys.read_health_status(method="GET")
    assert response.status_code == 503


def test_health_standby(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.set_standby(True)
    assert raw.request("GET", "/v1/sys/health").status == 429
    assert raw.request("GET", "/v1/sys/health?standbyok=true").status == 200
    assert raw.request("GET", "/v1/sys/health?standbycode=200").status == 200
    assert raw.request("GET", "/v1/sys/health").json["standby"] is True


def test_health_code_override_and_bad_code(raw: RawClient) -> None:
    assert raw.request("GET", "/v1/sys/health?activecode=204").status == 204
    response = raw.request("GET", "/v1/sys/health?activecode=abc")
    assert response.status == 400
    assert response.json == {"errors": []}


def test_seal_status(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    status = root_client.sys.read_seal_status()
    assert status["sealed"] is False
    assert status["type"] == "shamir"
    assert status["t"] == 1
    assert status["n"] == 1
    assert status["storage_type"] == "inmem"
    assert "cluster_id" in status
    assert root_client.sys.is_sealed() is False
    assert root_client.sys.is_initialized() is True
    emulator.seal()
    assert root_client.sys.is_sealed() is True
    assert "cluster_id" not in root_client.sys.read_seal_status()


def test_seal_and_unseal_through_api(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    assert root_client.sys.seal().status_code == 204
    assert emulator.sealed is True
    root_client.sys.submit_unseal_key("any-key-fake")
    assert emulator.sealed is False


def test_seal_needs_sudo(emulator: VaultEmulator) -> None:
    client = client_for(emulator, emulator.create_token())
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.seal()
    assert emulator.sealed is False


# -- mounts ----------------------------------------------------------------------------------------


def test_mount_listing(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.enable_kv("kv", version=1)
    emulator.enable_database()
    listing = root_client.sys.list_mounted_secrets_engines()

    assert sorted(listing["data"]) == [
        "cubbyhole/",
        "database/",
        "identity/",
        "kv/",
        "secret/",
        "sys/",
    ]
    assert listing["secret/"] == listing["data"]["secret/"]
    assert listing["data"]["secret/"]["type"] == "kv"
    assert listing["data"]["secret/"]["options"] == {"version": "2"}
    assert listing["data"]["kv/"]["options"] == {"version": "1"}
    assert listing["data"]["database/"]["type"] == "database"
    assert listing["data"]["sys/"]["options"] is None
    assert root_client.sys.retrieve_mount_option("secret", "version") == "2"


def test_mounts_need_permission(emulator: VaultEmulator) -> None:
    client = client_for(emulator, emulator.create_token())
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.list_mounted_secrets_engines()


def test_enable_and_disable_engine(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    root_client.sys.enable_secrets_engine("kv", path="apps/kv", options={"version": "2"})
    root_client.secrets.kv.v2.create_or_update_secret("x", secret={"k": "v"}, mount_point="apps/kv")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.sys.enable_secrets_engine("kv", path="apps/kv")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root_client.sys.enable_secrets_engine("nosuchengine", path="other")

    root_client.sys.disable_secrets_engine("apps/kv")
    with pytest.raises(hvac.exceptions.InvalidPath):
        root_client.secrets.kv.v2.read_secret_version(
            "x", mount_point="apps/kv", raise_on_deleted_version=True
        )


def test_tune_mount(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.enable_kv("kv", version=1)
    root_client.sys.tune_mount_configuration("kv", default_lease_ttl="1h")
    assert root_client.sys.read_mount_configuration("kv")["data"]["default_lease_ttl"] == 3600
    emulator.kv_put("kv", "app", {"k": "v"})
    assert root_client.secrets.kv.v1.read_secret("app", mount_point="kv")["lease_duration"] == 3600


def test_ui_mounts_for_path(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.enable_kv("team/kv", version=1)
    response = raw.request("GET", "/v1/sys/internal/ui/mounts/secret/app/db", token=ROOT_TOKEN)
    assert response.status == 200
    assert response.json["data"]["path"] == "secret/"
    assert response.json["data"]["options"] == {"version": "2"}
    assert response.json["data"]["type"] == "kv"
    assert "secret/" not in response.json
    nested = raw.request("GET", "/v1/sys/internal/ui/mounts/team/kv/x", token=ROOT_TOKEN).json
    assert nested["data"]["path"] == "team/kv/"
    assert nested["data"]["options"] == {"version": "1"}


def test_ui_mounts_with_limited_token(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.set_policy("app", {"secret/data/app/*": ["read"]})
    token = emulator.create_token(policies=["app"])
    allowed = raw.request("GET", "/v1/sys/internal/ui/mounts/secret/app", token=token)
    assert allowed.status == 200

    other = emulator.create_token()
    denied = raw.request("GET", "/v1/sys/internal/ui/mounts/secret/app", token=other)
    assert denied.status == 403
    assert denied.json == {
        "errors": [
            "preflight capability check returned 403, please ensure client's policies grant "
            'access to path "secret/app/"'
        ]
    }
    unknown = raw.request("GET", "/v1/sys/internal/ui/mounts/nomount", token=ROOT_TOKEN)
    assert unknown.status == 403


def test_ui_mounts_listing_without_token(raw: RawClient) -> None:
    response = raw.request("GET", "/v1/sys/internal/ui/mounts")
    assert response.status == 200
    assert response.json["data"] == {"secret": {}, "auth": {}}
    with_token = raw.request("GET", "/v1/sys/internal/ui/mounts", token=ROOT_TOKEN)
    assert "secret/" in with_token.json["data"]["secret"]


def test_namespace_api(emulator: VaultEmulator, raw: RawClient) -> None:
    created = raw.request("POST", "/v1/sys/namespaces/team-x", token=ROOT_TOKEN)
    assert created.status == 200
    assert created.json["data"]["path"] == "team-x/"
    listed = raw.request("LIST", "/v1/sys/namespaces", token=ROOT_TOKEN)
    assert listed.json["data"]["keys"] == ["team-x/"]


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory):
    return write_test_certificates(tmp_path_factory.mktemp("tls"))


def test_tls_with_ca_bundle(certificates) -> None:
    emulator = VaultEmulator()
    url = emulator.start(certfile=certificates.cert_file, keyfile=certificates.key_file)
    try:
        assert url.startswith("https://127.0.0.1:")
        client = hvac.Client(url=url, token=ROOT_TOKEN, verify=certificates.ca_file)
        assert client.auth.token.lookup_self()["data"]["display_name"] == "root"

        # hvac 2.4 reads VAULT_CACERT once, at import, so only an explicit verify= is tested.
        untrusted = hvac.Client(url=url, token=ROOT_TOKEN, verify=True)
        with pytest.raises(requests.exceptions.SSLError):
            untrusted.auth.token.lookup_self()
        assert client.is_authenticated(), "a rejected handshake must not stop the server"
    finally:
        emulator.stop()


def test_tls_localhost_name(certificates) -> None:
    emulator = VaultEmulator()
    url = emulator.start(
        host="localhost", certfile=certificates.cert_file, keyfile=certificates.key_file
    )
    try:
        assert url.startswith("https://localhost:")
        assert hvac.Client(
            url=url, token=ROOT_TOKEN, verify=certificates.ca_file
        ).is_authenticated()
    finally:
        emulator.stop()


def test_tls_needs_key() -> None:
    with pytest.raises(ValueError):
        VaultEmulator().start(certfile="cert.pem")


# -- clock -----------------------------------------------------------------------------------------


def test_custom_clock() -> None:
    now = [1_000_000.0]
    emulator = VaultEmulator(clock=lambda: now[0])
    token = emulator.create_token(ttl=100)
    now[0] += 50
    assert emulator.token_ttl(token) == pytest.approx(50)
    emulator.advance(25)
    assert emulator.now() == pytest.approx(1_000_075.0)
    assert emulator.token_ttl(token) == pytest.approx(25)
    with pytest.raises(ValueError):
        emulator.advance(-1)


# -- seed and command line -------------------------------------------------------------------------

SEED = {
    "enable_kv": [{"mount": "kv", "version": 1}],
    "kv_put": [
        {"mount": "secret", "path": "app/db", "data": {"password": "fake-db-password-1"}},
        {"mount": "kv", "path": "legacy", "data": {"k": "v"}},
    ],
    "set_policy": [{"name": "app", "rules": {"secret/data/app/*": ["read"]}}],
    "add_kubernetes_role": [
        {
            "role": "app",
            "bound_service_account_names": ["app-sa"],
            "bound_service_account_namespaces": ["prod"],
            "policies": ["app"],
        }
    ],
    "add_approle": [
        {"role": "ci", "role_id": "role-1", "secret_id": "fake-secret-id-1", "policies": ["app"]}
    ],
    "add_database_role": [{"role": "ro", "default_ttl": 60, "max_ttl": 120}],
    "create_token": [{"policies": ["app"], "token_id": "demo-app-token"}],
    "namespaces": ["team-a"],
}


def test_apply_seed() -> None:
    emulator = VaultEmulator()
    emulator.apply_seed(SEED)
    with emulator:
        client = hvac.Client(url=emulator.url, token="demo-app-token")
        value = client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
        assert value["data"]["data"] == {"password": "fake-db-password-1"}
        login = client_for(emulator, None)
        login.auth.kubernetes.login("app", service_account_jwt("prod", "app-sa"))
        login.auth.approle.login("role-1", "fake-secret-id-1")


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ({"unknown": []}, "unknown seed keys"),
        ({"kv_put": [{"mount": "secret"}]}, "kv_put[0]"),
        ({"kv_put": ["not an object"]}, "kv_put[0]"),
    ],
)
def test_seed_errors(seed: dict, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        VaultEmulator().apply_seed(seed)
    assert message in str(caught.value)


def run_cli(*arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.testing.vault_emulator", *arguments],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_serves_seed_until_sigterm(tmp_path: Path) -> None:
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(SEED))
    process = run_cli("--port", "0", "--root-token", "cli-root-fake", "--seed", str(seed_file))
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        client = hvac.Client(url=url, token="cli-root-fake")
        assert client.secrets.kv.v1.read_secret("legacy", mount_point="kv")["data"] == {"k": "v"}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        process.stdout.close()
        process.stderr.close()


def test_cli_rejects_non_loopback_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_cli_rejects_bad_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps({"enable_kv": [{"mount": "x", "version": 9}]}))
    assert cli_main(["--port", "0", "--seed", str(seed_file)]) == 2
    assert "seed" in capsys.readouterr().err
