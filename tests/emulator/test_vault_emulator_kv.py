"""KV version 1 and 2 through hvac and raw HTTP: shapes, versions, deletion, CAS, wrong paths."""

from __future__ import annotations

import re

import hvac
import pytest
from conftest import ROOT_TOKEN, RawClient

from agent.testing.vault_emulator import VaultEmulator

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
INVALID_PATH = (
    "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API "
    "endpoints to use. If using the Vault CLI, use 'vault kv {command}' for this operation."
)


def read(client: hvac.Client, path: str, **kwargs: object) -> dict:
    return client.secrets.kv.v2.read_secret_version(path, raise_on_deleted_version=True, **kwargs)


# -- KV v2 reads and writes ----------------------------------------------------------------------


def test_v2_write_then_read(root_client: hvac.Client) -> None:
    written = root_client.secrets.kv.v2.create_or_update_secret(
        "app/db", secret={"username": "app", "password": "fake-db-password-1", "port": 5432}
    )
    assert written["data"]["version"] == 1
    assert written["data"]["deletion_time"] == ""
    assert written["data"]["destroyed"] is False
    assert written["data"]["custom_metadata"] is None
    assert RFC3339.match(written["data"]["created_time"])

    value = read(root_client, "app/db")

    assert value["data"]["data"] == {
        "username": "app",
        "password": "fake-db-password-1",
        "port": 5432,
    }
    assert value["data"]["metadata"] == written["data"]
    assert value["lease_duration"] == 0


def test_v2_versions(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    assert emulator.kv_put("secret", "app", {"v": "1"}) == 1
    assert emulator.kv_put("secret", "app", {"v": "2"}) == 2

    assert read(root_client, "app")["data"]["data"] == {"v": "2"}
    assert read(root_client, "app", version=1)["data"]["data"] == {"v": "1"}
    assert read(root_client, "app", version=0)["data"]["metadata"]["version"] == 2
    with pytest.raises(hvac.exceptions.InvalidPath) as caught:
        read(root_client, "app", version=3)
    assert caught.value.json == {"errors": []}


def test_v2_missing_secret(root_client: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.InvalidPath) as caught:
        read(root_client, "nothing/here")
    assert caught.value.errors == []
    assert caught.value.json == {"errors": []}


def test_v2_mount_in_nested_path(emulator: VaultEmulator) -> None:
    emulator.enable_kv("team/kv", version=2)
    emulator.kv_put("team/kv", "app", {"k": "v"})
    client = hvac.Client(url=emulator.url, token=ROOT_TOKEN)
    value = client.secrets.kv.v2.read_secret_version(
        "app", mount_point="team/kv", raise_on_deleted_version=True
    )
    assert value["data"]["data"] == {"k": "v"}


def test_v2_cas(root_client: hvac.Client) -> None:
    kv = root_client.secrets.kv.v2
    kv.create_or_update_secret("app", secret={"v": "1"}, cas=0)
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        kv.create_or_update_secret("app", secret={"v": "x"}, cas=0)
    assert caught.value.errors == ["check-and-set parameter did not match the current version"]
    assert kv.create_or_update_secret("app", secret={"v": "2"}, cas=1)["data"]["version"] == 2


def test_v2_cas_required(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_configure("secret", cas_required=True)
    with pytest.raises(hvac.exceptions.InvalidRequest) as caught:
        root_client.secrets.kv.v2.create_or_update_secret("app", secret={"v": "1"})
    assert caught.value.errors == ["check-and-set parameter required for this call"]


def test_v2_cas_unparsable(raw: RawClient) -> None:
    response = raw.request(
        "POST",
        "/v1/secret/data/app",
        token=ROOT_TOKEN,
        body={"options": {"cas": "abc"}, "data": {"v": "1"}},
    )
    assert response.status == 400
    assert response.json == {"errors": ["error parsing check-and-set parameter"]}


def test_v2_write_without_data(raw: RawClient) -> None:
    response = raw.request("POST", "/v1/secret/data/app", token=ROOT_TOKEN, body={"options": {}})
    assert response.status == 400
    assert response.json == {"errors": ["no data provided"]}


# hvac's patch() reads the current version without raise_on_deleted_version and warns.
@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version parameter:DeprecationWarning")
def test_v2_patch_merges(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"a": "1", "b": "2"})
    patched = root_client.secrets.kv.v2.patch("app", secret={"b": "3", "c": "4"})
    assert patched["data"]["version"] == 2
    assert read(root_client, "app")["data"]["data"] == {"a": "1", "b": "3", "c": "4"}


def test_v2_http_patch(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.kv_put("secret", "app", {"a": "1", "b": "2"})
    response = raw.request(
        "PATCH",
        "/v1/secret/data/app",
        token=ROOT_TOKEN,
        raw_body=b'{"data": {"a": null, "c": "3"}}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status == 200
    assert response.json["data"]["version"] == 2
    stored = raw.request("GET", "/v1/secret/data/app", token=ROOT_TOKEN).json
    assert stored["data"]["data"] == {"b": "2", "c": "3"}


def test_v2_max_versions_trims(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_configure("secret", max_versions=2)
    for number in range(1, 5):
        emulator.kv_put("secret", "app", {"v": str(number)})

    metadata = root_client.secrets.kv.v2.read_secret_metadata("app")["data"]
    assert metadata["current_version"] == 4
    assert metadata["oldest_version"] == 3
    assert sorted(metadata["versions"]) == ["3", "4"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, "app", version=1)


def test_v2_default_keeps_ten_versions(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    for number in range(12):
        emulator.kv_put("secret", "app", {"v": str(number)})
    metadata = root_client.secrets.kv.v2.read_secret_metadata("app")["data"]
    assert len(metadata["versions"]) == 10
    assert metadata["oldest_version"] == 3


# -- KV v2 deletion ------------------------------------------------------------------------------


def test_v2_deleted_version_envelope(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    emulator.kv_delete("secret", "app")

    response = raw.request("GET", "/v1/secret/data/app", token=ROOT_TOKEN)

    assert response.status == 404
    assert response.headers["Content-Type"] == "application/json"
    document = response.json
    assert "errors" not in document
    assert document["data"]["data"] is None
    assert RFC3339.match(document["data"]["metadata"]["deletion_time"])
    assert document["data"]["metadata"]["destroyed"] is False
    assert document["data"]["metadata"]["version"] == 1


def test_v2_deleted_version_through_hvac(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    root_client.secrets.kv.v2.delete_latest_version_of_secret("app")

    tolerant = root_client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=False)
    assert tolerant["data"]["data"] is None
    assert tolerant["data"]["metadata"]["deletion_time"] != ""
    with pytest.raises(hvac.exceptions.InvalidPath) as caught:
        read(root_client, "app")
    assert caught.value.errors is None
    assert caught.value.json["data"]["data"] is None


def test_v2_destroyed_version(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    emulator.kv_destroy("secret", "app", versions=[1])

    with pytest.raises(hvac.exceptions.InvalidPath) as caught:
        root_client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=False)
    metadata = caught.value.json["data"]["metadata"]
    assert metadata["destroyed"] is True
    assert metadata["deletion_time"] == ""


def test_v2_delete_undelete_destroy_versions(
    emulator: VaultEmulator, root_client: hvac.Client
) -> None:
    kv = root_client.secrets.kv.v2
    emulator.kv_put("secret", "app", {"v": "1"})
    emulator.kv_put("secret", "app", {"v": "2"})

    assert kv.delete_secret_versions("app", versions=[1]).status_code == 204
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, "app", version=1)
    assert read(root_client, "app")["data"]["data"] == {"v": "2"}

    assert kv.undelete_secret_versions("app", versions=[1]).status_code == 204
    assert read(root_client, "app", version=1)["data"]["data"] == {"v": "1"}

    assert kv.destroy_secret_versions("app", versions=[1]).status_code == 204
    assert kv.undelete_secret_versions("app", versions=[1]).status_code == 204
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, "app", version=1)
    versions = kv.read_secret_metadata("app")["data"]["versions"]
    assert versions["1"]["destroyed"] is True
    assert versions["2"]["destroyed"] is False


def test_v2_version_action_without_versions(raw: RawClient) -> None:
    response = raw.request("POST", "/v1/secret/delete/app", token=ROOT_TOKEN, body={})
    assert response.status == 400
    assert response.json == {"errors": ["no version number provided"]}


def test_v2_write_after_soft_delete(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"v": "1"})
    emulator.kv_delete("secret", "app")
    written = root_client.secrets.kv.v2.create_or_update_secret("app", secret={"v": "2"}, cas=1)
    assert written["data"]["version"] == 2
    assert read(root_client, "app")["data"]["data"] == {"v": "2"}


def test_v2_delete_version_after(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_configure("secret", delete_version_after=60)
    emulator.kv_put("secret", "app", {"k": "v"})

    value = read(root_client, "app")
    assert RFC3339.match(value["data"]["metadata"]["deletion_time"])
    emulator.advance(61)
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(root_client, "app")


# -- KV v2 metadata, list, config ----------------------------------------------------------------


def test_v2_metadata_shape(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"v": "1"})
    emulator.kv_put("secret", "app", {"v": "2"})
    emulator.kv_delete("secret", "app", versions=[1])

    metadata = root_client.secrets.kv.v2.read_secret_metadata("app")["data"]

    assert sorted(metadata) == [
        "cas_required",
        "created_time",
        "current_version",
        "custom_metadata",
        "delete_version_after",
        "max_versions",
        "oldest_version",
        "updated_time",
        "versions",
    ]
    assert metadata["current_version"] == 2
    assert metadata["delete_version_after"] == "0s"
    assert metadata["max_versions"] == 0
    assert metadata["custom_metadata"] is None
    assert metadata["versions"]["1"]["deletion_time"] != ""
    assert metadata["versions"]["2"] == {
        "created_time": metadata["versions"]["2"]["created_time"],
        "deletion_time": "",
        "destroyed": False,
    }


def test_v2_update_metadata(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    kv = root_client.secrets.kv.v2
    emulator.kv_put("secret", "app", {"v": "1"})
    response = kv.update_metadata(
        "app",
        max_versions=5,
        cas_required=True,
        delete_version_after="1h30m",
        custom_metadata={"owner": "payments"},
    )
    assert response.status_code == 204

    metadata = kv.read_secret_metadata("app")["data"]
    assert metadata["max_versions"] == 5
    assert metadata["cas_required"] is True
    assert metadata["delete_version_after"] == "1h30m0s"
    assert metadata["custom_metadata"] == {"owner": "payments"}
    assert read(root_client, "app")["data"]["metadata"]["custom_metadata"] == {"owner": "payments"}


def test_v2_delete_metadata(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"v": "1"})
    response = root_client.secrets.kv.v2.delete_metadata_and_all_versions("app")
    assert response.status_code == 204
    with pytest.raises(hvac.exceptions.InvalidPath):
        root_client.secrets.kv.v2.read_secret_metadata("app")


def test_v2_list(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    for path in ("app/a", "app/b/c", "app/b/d", "other"):
        emulator.kv_put("secret", path, {"k": "v"})
    emulator.kv_delete("secret", "app/a")

    assert root_client.secrets.kv.v2.list_secrets("app")["data"]["keys"] == ["a", "b/"]
    assert root_client.secrets.kv.v2.list_secrets("")["data"]["keys"] == ["app/", "other"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        root_client.secrets.kv.v2.list_secrets("missing")
    assert root_client.list("secret/metadata/missing") is None


def test_v2_config(root_client: hvac.Client) -> None:
    kv = root_client.secrets.kv.v2
    assert kv.read_configuration()["data"] == {
        "cas_required": False,
        "delete_version_after": "0s",
        "max_versions": 0,
    }
    assert kv.configure(max_versions=4, cas_required=False).status_code == 204
    assert kv.read_configuration()["data"]["max_versions"] == 4


# -- KV v2 wrong paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "command"),
    [("GET", "get"), ("POST", "put"), ("LIST", "list"), ("DELETE", "delete")],
)
def test_v2_path_without_data_prefix(
    emulator: VaultEmulator, raw: RawClient, method: str, command: str
) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    body = {"k": "v"} if method == "POST" else None
    response = raw.request(method, "/v1/secret/app", token=ROOT_TOKEN, body=body)
    assert response.status == 404
    document = response.json
    assert "errors" not in document
    assert document["data"] is None
    assert document["warnings"] == [INVALID_PATH.format(command=command)]


def test_v2_bare_data_root(raw: RawClient) -> None:
    response = raw.request("GET", "/v1/secret/data", token=ROOT_TOKEN)
    assert response.status == 404
    assert response.json["warnings"] == [
        "Non-listing operations on the root of a K/V v2 mount are not supported."
    ]


def test_v2_data_path_with_trailing_slash(raw: RawClient) -> None:
    response = raw.request("GET", "/v1/secret/data/app/", token=ROOT_TOKEN)
    assert response.status == 404
    assert response.json["warnings"] == [INVALID_PATH.format(command="get")]


def test_v2_v1_style_read_through_hvac(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    with pytest.raises(hvac.exceptions.InvalidPath) as caught:
        root_client.secrets.kv.v1.read_secret("app", mount_point="secret")
    assert "Invalid path for a versioned K/V secrets engine" in str(caught.value)


# -- KV v1 ---------------------------------------------------------------------------------------


@pytest.fixture
def kv1(emulator: VaultEmulator) -> str:
    emulator.enable_kv("kv", version=1)
    return "kv"


def test_v1_write_read(kv1: str, root_client: hvac.Client, raw: RawClient) -> None:
    kv = root_client.secrets.kv.v1
    response = kv.create_or_update_secret("app", secret={"password": "fake-1"}, mount_point=kv1)
    assert response.status_code == 204

    value = kv.read_secret("app", mount_point=kv1)

    assert value["data"] == {"password": "fake-1"}
    assert value["lease_duration"] == 2764800
    assert value["lease_id"] == ""
    assert value["renewable"] is False
    raw_write = raw.request("PUT", "/v1/kv/app", token=ROOT_TOKEN, body={"password": "fake-2"})
    assert raw_write.status == 204
    assert kv.read_secret("app", mount_point=kv1)["data"] == {"password": "fake-2"}


def test_v1_ttl_key_sets_lease_duration(
    kv1: str, emulator: VaultEmulator, root_client: hvac.Client
) -> None:
    emulator.kv_put(kv1, "app", {"password": "fake-1", "ttl": "1h"})
    assert root_client.secrets.kv.v1.read_secret("app", mount_point=kv1)["lease_duration"] == 3600


def test_v1_missing(kv1: str, root_client: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.InvalidPath) as caught:
        root_client.secrets.kv.v1.read_secret("nothing", mount_point=kv1)
    assert caught.value.json == {"errors": []}


def test_v1_empty_write(kv1: str, raw: RawClient) -> None:
    response = raw.request("POST", "/v1/kv/app", token=ROOT_TOKEN)
    assert response.status == 400
    assert response.json == {"errors": ["missing data fields"]}


def test_v1_list_and_delete(kv1: str, emulator: VaultEmulator, root_client: hvac.Client) -> None:
    kv = root_client.secrets.kv.v1
    for path in ("app/a", "app/b/c", "top"):
        emulator.kv_put(kv1, path, {"k": "v"})

    assert kv.list_secrets("app", mount_point=kv1)["data"]["keys"] == ["a", "b/"]
    assert kv.list_secrets("", mount_point=kv1)["data"]["keys"] == ["app/", "top"]
    assert kv.delete_secret("app/a", mount_point=kv1).status_code == 204
    assert kv.list_secrets("app", mount_point=kv1)["data"]["keys"] == ["b/"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.list_secrets("missing", mount_point=kv1)


def test_v1_data_prefix_is_plain_key(kv1: str, root_client: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.InvalidPath) as caught:
        root_client.secrets.kv.v1.read_secret("data/app", mount_point=kv1)
    assert caught.value.json == {"errors": []}


def test_kv_helpers_validate_mounts(emulator: VaultEmulator) -> None:
    with pytest.raises(KeyError):
        emulator.kv_put("nomount", "app", {"k": "v"})
    emulator.enable_kv("kv", version=1)
    with pytest.raises(TypeError):
        emulator.kv_destroy("kv", "app", versions=[1])
    with pytest.raises(ValueError):
        emulator.enable_kv("kv3", version=3)
    with pytest.raises(ValueError):
        emulator.enable_kv("secret/nested", version=2)
