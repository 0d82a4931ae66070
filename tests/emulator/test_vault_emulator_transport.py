"""Wire-level conformance: methods, headers, envelopes, error bodies, sealing and faults."""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time

import hvac
import pytest
from conftest import ROOT_TOKEN, RawClient, client_for

from agent.testing.vault_emulator import VaultEmulator

ENVELOPE_KEYS = [
    "request_id",
    "lease_id",
    "renewable",
    "lease_duration",
    "data",
    "wrap_info",
    "warnings",
    "auth",
    "mount_type",
]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_success_envelope_fields_and_headers(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.kv_put("secret", "app/db", {"password": "fake-db-password-1"})

    response = raw.request("GET", "/v1/secret/data/app/db", token=ROOT_TOKEN)

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Server" not in response.headers
    assert response.body.endswith(b"}\n")
    document = response.json
    assert list(document) == ENVELOPE_KEYS
    assert UUID.match(document["request_id"])
    assert document["lease_id"] == ""
    assert document["renewable"] is False
    assert document["lease_duration"] == 0
    assert document["wrap_info"] is None
    assert document["warnings"] is None
    assert document["auth"] is None
    assert document["mount_type"] == "kv"


def test_request_ids_differ(raw: RawClient) -> None:
    first = raw.request("GET", "/v1/auth/token/lookup-self", token=ROOT_TOKEN).json
    second = raw.request("GET", "/v1/auth/token/lookup-self", token=ROOT_TOKEN).json
    assert first["request_id"] != second["request_id"]


def test_no_content_reply_is_empty_json(raw: RawClient) -> None:
    response = raw.request(
        "POST", "/v1/secret/metadata/app", token=ROOT_TOKEN, body={"max_versions": 3}
    )
    assert response.status == 204
    assert response.body == b""
    assert response.headers["Content-Type"] == "application/json"


def test_path_outside_v1_is_plain_404(raw: RawClient) -> None:
    response = raw.request("GET", "/v2/secret/data/x", token=ROOT_TOKEN)
    assert response.status == 404
    assert response.json == {"errors": []}


@pytest.mark.parametrize("flag", ["true", "True", "1", "t"])
def test_list_query_flag_accepted(emulator: VaultEmulator, raw: RawClient, flag: str) -> None:
    emulator.kv_put("secret", "app/db", {"k": "v"})
    response = raw.request("GET", f"/v1/secret/metadata/app?list={flag}", token=ROOT_TOKEN)
    assert response.status == 200
    assert response.json["data"] == {"keys": ["db"]}


def test_list_query_flag_false_is_read(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    response = raw.request("GET", "/v1/secret/metadata/app?list=false", token=ROOT_TOKEN)
    assert response.status == 200
    assert response.json["data"]["current_version"] == 1


def test_list_query_flag_unparsable(raw: RawClient) -> None:
    response = raw.request("GET", "/v1/secret/metadata/app?list=maybe", token=ROOT_TOKEN)
    assert response.status == 400
    assert response.json == {"errors": []}


def test_list_verb(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.kv_put("secret", "team/a", {"k": "v"})
    emulator.kv_put("secret", "team/b/c", {"k": "v"})
    response = raw.request("LIST", "/v1/secret/metadata/team", token=ROOT_TOKEN)
    assert response.status == 200
    assert response.json["data"]["keys"] == ["a", "b/"]


def test_empty_list_is_plain_404(raw: RawClient) -> None:
    response = raw.request("LIST", "/v1/secret/metadata/nothing", token=ROOT_TOKEN)
    assert response.status == 404
    assert response.json == {"errors": []}


def test_unknown_method_is_405(raw: RawClient) -> None:
    response = raw.request("OPTIONS", "/v1/secret/data/x", token=ROOT_TOKEN)
    assert response.status == 405
    assert response.json == {"errors": []}


def test_bad_json_body(raw: RawClient) -> None:
    response = raw.request("POST", "/v1/secret/data/x", token=ROOT_TOKEN, raw_body=b"{not json")
    assert response.status == 400
    assert response.json == {"errors": ["error parsing JSON"]}


def test_patch_needs_merge_patch_content_type(raw: RawClient) -> None:
    response = raw.request(
        "PATCH",
        "/v1/secret/data/x",
        token=ROOT_TOKEN,
        raw_body=b'{"data": {}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 415


def test_oversized_body_is_413(emulator: VaultEmulator) -> None:
    host, port = emulator.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(
            b"POST /v1/secret/data/x HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\n\r\n{}"
        )
        reply = b""
        while chunk := connection.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"request body too large" in reply


def test_missing_token_is_permission_denied(raw: RawClient) -> None:
    response = raw.request("GET", "/v1/secret/data/x")
    assert response.status == 403
    assert response.json == {"errors": ["permission denied"]}


def test_unknown_token_is_permission_denied(emulator: VaultEmulator) -> None:
    client = client_for(emulator, "hvs.unknownunknownunknown1")
    with pytest.raises(hvac.exceptions.Forbidden) as caught:
        client.secrets.kv.v2.read_secret_version("x", raise_on_deleted_version=True)
    assert caught.value.errors == ["permission denied"]


def test_bearer_token_accepted(raw: RawClient) -> None:
    response = raw.request(
        "GET",
        "/v1/auth/token/lookup-self",
        headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
    )
    assert response.status == 200
    assert response.json["data"]["display_name"] == "root"


def test_vault_token_header_wins_over_bearer(raw: RawClient) -> None:
    response = raw.request(
        "GET",
        "/v1/auth/token/lookup-self",
        token="hvs.wrongwrongwrongwrong12",
        headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
    )
    assert response.status == 403


def test_unknown_route_with_root_token(raw: RawClient) -> None:
    response = raw.request("GET", "/v1/nomount/some/key", token=ROOT_TOKEN)
    assert response.status == 404
    assert response.json == {
        "errors": ['no handler for route "nomount/some/key". route entry not found.']
    }


def test_unknown_route_with_limited_token(emulator: VaultEmulator, raw: RawClient) -> None:
    token = emulator.create_token(policies=["default"])
    response = raw.request("GET", "/v1/nomount/some/key", token=token)
    assert response.status == 403
    assert response.json == {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}


def test_request_header_is_ignored(raw: RawClient) -> None:
    response = raw.request(
        "GET", "/v1/auth/token/lookup-self", token=ROOT_TOKEN, headers={"X-Vault-Request": "true"}
    )
    assert response.status == 200


def test_wrap_ttl_rejected_clearly(raw: RawClient) -> None:
    response = raw.request(
        "GET", "/v1/auth/token/lookup-self", token=ROOT_TOKEN, headers={"X-Vault-Wrap-TTL": "60"}
    )
    assert response.status == 400
    assert "wrapping" in response.json["errors"][0]


# -- sealing -------------------------------------------------------------------------------------


def test_sealed_rejects_logical_requests(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.seal()
    for method, path in [
        ("GET", "/v1/secret/data/x"),
        ("GET", "/v1/auth/token/lookup-self"),
        ("POST", "/v1/auth/kubernetes/login"),
        ("GET", "/v1/sys/mounts"),
    ]:
        response = raw.request(method, path, token=ROOT_TOKEN)
        assert response.status == 503, path
        assert response.json == {"errors": ["Vault is sealed"]}, path


def test_sealed_raises_vault_down(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.seal()
    with pytest.raises(hvac.exceptions.VaultDown) as caught:
        root_client.secrets.kv.v2.read_secret_version("x", raise_on_deleted_version=True)
    assert str(caught.value).startswith("Vault is sealed, on get ")


def test_sealed_still_answers_status_routes(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.seal()
    assert raw.request("GET", "/v1/sys/seal-status").json["sealed"] is True
    assert raw.request("GET", "/v1/sys/health").status == 503
    assert raw.request("GET", "/v1/sys/init").json == {"initialized": True}
    emulator.unseal()
    assert raw.request("GET", "/v1/auth/token/lookup-self", token=ROOT_TOKEN).status == 200


# -- namespaces ----------------------------------------------------------------------------------


def test_namespace_header_echoed(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.create_namespace("team-a")
    response = raw.request(
        "GET",
        "/v1/auth/token/lookup-self",
        token=ROOT_TOKEN,
        headers={"X-Vault-Namespace": "team-a/"},
    )
    assert response.status == 200
    assert response.headers["X-Vault-Namespace"] == "team-a/"


def test_unknown_namespace(raw: RawClient) -> None:
    response = raw.request(
        "GET", "/v1/secret/data/x", token=ROOT_TOKEN, headers={"X-Vault-Namespace": "nope"}
    )
    assert response.status == 404
    assert response.json == {"errors": ["namespace not found"]}


def test_namespaces_have_separate_state(emulator: VaultEmulator) -> None:
    emulator.enable_kv("secret", version=2, namespace="team-a")
    emulator.kv_put("secret", "app", {"who": "team-a"}, namespace="team-a")
    emulator.kv_put("secret", "app", {"who": "root"})
    in_a = client_for(emulator, ROOT_TOKEN, namespace="team-a")
    in_root = client_for(emulator, ROOT_TOKEN)

    a_value = in_a.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
    root_value = in_root.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)

    assert a_value["data"]["data"] == {"who": "team-a"}
    assert root_value["data"]["data"] == {"who": "root"}


def test_token_from_one_namespace_rejected_in_another(emulator: VaultEmulator) -> None:
    emulator.enable_kv("secret", version=2, namespace="team-a")
    emulator.enable_kv("secret", version=2, namespace="team-b")
    emulator.kv_put("secret", "app", {"k": "v"}, namespace="team-b")
    emulator.set_policy("all", {"secret/*": ["read"]}, namespace="team-a")
    emulator.set_policy("all", {"secret/*": ["read"]}, namespace="team-b")
    token_a = emulator.create_token(policies=["all"], namespace="team-a")

    in_b = client_for(emulator, token_a, namespace="team-b")
    with pytest.raises(hvac.exceptions.Forbidden) as caught:
        in_b.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
    assert caught.value.errors == ["permission denied"]
    assert emulator.live_tokens(namespace="team-a") == 1
    assert emulator.live_tokens(namespace="team-b") == 0


def test_parent_namespace_token_uses_prefixed_policy(emulator: VaultEmulator) -> None:
    emulator.enable_kv("secret", version=2, namespace="team-a")
    emulator.kv_put("secret", "app", {"k": "v"}, namespace="team-a")
    emulator.set_policy("child", {"team-a/secret/data/app": ["read"]})
    token = emulator.create_token(policies=["child"])

    client = client_for(emulator, token, namespace="team-a")
    value = client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
    assert value["data"]["data"] == {"k": "v"}


# -- records, faults, latency --------------------------------------------------------------------


def test_records_hold_no_token_or_value(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"password": "fake-db-password-1"})
    root_client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)

    records = emulator.requests
    assert len(records) == 1
    record = records[0]
    assert record.method == "GET"
    assert record.path == "secret/data/app"
    assert record.status == 200
    assert record.namespace == ""
    assert record.accessor is not None
    assert ROOT_TOKEN not in repr(records)
    assert "fake-db-password-1" not in repr(records)


def test_count_by_method_and_prefix(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    root_client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
    root_client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
    root_client.auth.token.lookup_self()

    assert emulator.count() == 3
    assert emulator.count(method="GET", path_prefix="secret/data/") == 2
    assert emulator.count(path_prefix="/v1/auth/token/") == 1
    assert emulator.count(method="POST") == 0
    emulator.clear_requests()
    assert emulator.count() == 0


def test_records_anonymous_request(raw: RawClient, emulator: VaultEmulator) -> None:
    raw.request("GET", "/v1/secret/data/x")
    assert emulator.requests[-1].accessor is None
    assert emulator.requests[-1].status == 403


@pytest.mark.parametrize(
    ("status", "exception", "message"),
    [
        (503, hvac.exceptions.VaultDown, "Vault is sealed"),
        (500, hvac.exceptions.InternalServerError, "internal error"),
        (429, hvac.exceptions.RateLimitExceeded, "rate limit quota exceeded"),
        (502, hvac.exceptions.BadGateway, "upstream rate limited"),
    ],
)
def test_fail_next_statuses(
    emulator: VaultEmulator,
    root_client: hvac.Client,
    status: int,
    exception: type[Exception],
    message: str,
) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    emulator.fail_next(2, status=status)

    for _ in range(2):
        with pytest.raises(exception) as caught:
            root_client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
        assert message in caught.value.errors[0]
    value = root_client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
    assert value["data"]["data"] == {"k": "v"}
    assert [r.status for r in emulator.requests] == [status, status, 200]


def test_fail_next_path_prefix(emulator: VaultEmulator, root_client: hvac.Client) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    emulator.fail_next(1, status=503, path_prefix="/v1/secret/data/app")

    root_client.auth.token.lookup_self()
    with pytest.raises(hvac.exceptions.VaultDown):
        root_client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
    root_client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)


def test_fail_next_rejects_zero(emulator: VaultEmulator) -> None:
    with pytest.raises(ValueError):
        emulator.fail_next(0)


def test_latency_delays_replies(emulator: VaultEmulator, raw: RawClient) -> None:
    emulator.latency = 0.15
    started = time.monotonic()
    raw.request("GET", "/v1/sys/health")
    elapsed = time.monotonic() - started
    emulator.latency = 0
    assert elapsed >= 0.15


def test_concurrent_clients(emulator: VaultEmulator) -> None:
    emulator.kv_put("secret", "app", {"k": "v"})
    failures: list[BaseException] = []

    def read_many() -> None:
        client = client_for(emulator, ROOT_TOKEN)
        try:
            for _ in range(20):
                client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
        except BaseException as error:  # noqa: BLE001 - collected for the assertion below
            failures.append(error)

    threads = [threading.Thread(target=read_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert emulator.count(path_prefix="secret/data/app") == 160


def test_stop_cuts_keep_alive_connections(emulator: VaultEmulator) -> None:
    host, port = emulator.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("GET", "/v1/sys/health")
    connection.getresponse().read()

    emulator.stop()

    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        connection.request("GET", "/v1/sys/health")
        connection.getresponse().read()
    connection.close()


def test_restart_keeps_state() -> None:
    emulator = VaultEmulator()
    emulator.kv_put("secret", "app", {"k": "v"})
    first_url = emulator.start()
    emulator.stop()
    second_url = emulator.start()
    try:
        client = hvac.Client(url=second_url, token=emulator.root_token)
        value = client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)
        assert value["data"]["data"] == {"k": "v"}
        assert first_url.startswith("http://127.0.0.1:")
    finally:
        emulator.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "example.com"])
def test_start_rejects_non_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        VaultEmulator().start(host=host)
