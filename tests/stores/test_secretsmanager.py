"""The Secrets Manager store against moto's server, over HTTP.

moto 5.2 implements BatchGetSecretValue, so the batched path is the one tested here. The
fallback to GetSecretValue is tested by denying BatchGetSecretValue at a scripted endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from aws_helpers import (
    ScriptedEndpoint,
    SeenRequest,
    aws_store,
    json_error,
    json_response,
    request_count,
)

from agent.errors import AccessDeniedError, RemoteKeyNotFoundError, StoreError
from agent.metrics import Metrics
from agent.refs import Refs
from agent.stores import RemoteKey
from agent.stores.aws import AwsClientOptions
from agent.stores.secretsmanager import SecretsManagerStore

STORE = "aws-secrets"
FAST = AwsClientOptions(retry_mode="standard", botocore_attempts=1)
VERSION_ID_1 = "0d5b3d4a-1111-4c1e-9a8b-000000000001"
VERSION_ID_2 = "0d5b3d4a-2222-4c1e-9a8b-000000000002"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def secrets(aws: str) -> object:
    return boto3.client("secretsmanager")


@pytest.fixture
def open_store(tmp_path: Path, metrics: Metrics) -> Iterator:
    opened: list[SecretsManagerStore] = []

    def factory(**aws: object) -> SecretsManagerStore:
        store = SecretsManagerStore(
            aws_store(STORE, "SecretsManager", **aws),
            refs=Refs(tmp_path / "refs"),
            metrics=metrics,
            options=FAST,
        )
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def scripted(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedEndpoint]:
    endpoint = ScriptedEndpoint(aws).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint.url)
    yield endpoint
    endpoint.stop()


def test_fetch_string_and_binary(secrets, open_store, metrics):
    secrets.create_secret(Name="prod/db-password", SecretString="fake-db-password-1")
    secrets.create_secret(Name="prod/keystore", SecretBinary=b"\x00\xfffake-binary\x01")
    secrets.create_secret(Name="prod/json", SecretString='{"user": "fake-user", "pass": "ü"}')

    fetched = open_store().fetch(
        [RemoteKey("prod/db-password"), RemoteKey("prod/keystore"), RemoteKey("prod/json")]
    )

    assert fetched[RemoteKey("prod/db-password")] == b"fake-db-password-1"
    assert fetched[RemoteKey("prod/keystore")] == b"\x00\xfffake-binary\x01"
    assert fetched[RemoteKey("prod/json")] == '{"user": "fake-user", "pass": "ü"}'.encode()
    assert request_count(metrics, store=STORE, operation="BatchGetSecretValue") == 1
    assert request_count(metrics, store=STORE, operation="GetSecretValue") == 0


def test_fetch_batches_twenty_ids_per_request(secrets, open_store, metrics):
    for index in range(45):
        secrets.create_secret(Name=f"team/secret-{index:02d}", SecretString=f"fake-{index}")
    keys = [RemoteKey(f"team/secret-{index:02d}") for index in reversed(range(45))]
    keys.append(RemoteKey("team/secret-00"))  # a duplicate is sent once

    fetched = open_store().fetch(keys)

    assert len(fetched) == 45
    for key in keys:
        assert fetched[key] == f"fake-{int(key.key[-2:])}".encode()
    assert request_count(metrics, store=STORE, operation="BatchGetSecretValue") == 3


def test_fetch_versions_by_stage_and_id(secrets, open_store, metrics):
    secrets.create_secret(
        Name="prod/api-key", SecretString="fake-api-key-1", ClientRequestToken=VERSION_ID_1
    )
    secrets.put_secret_value(
        SecretId="prod/api-key", SecretString="fake-api-key-2", ClientRequestToken=VERSION_ID_2
    )
    expected = {
        RemoteKey("prod/api-key"): b"fake-api-key-2",
        RemoteKey("prod/api-key", "AWSCURRENT"): b"fake-api-key-2",
        RemoteKey("prod/api-key", "AWSPREVIOUS"): b"fake-api-key-1",
        RemoteKey("prod/api-key", f"uuid/{VERSION_ID_1}"): b"fake-api-key-1",
        RemoteKey("prod/api-key", VERSION_ID_2): b"fake-api-key-2",
    }

    fetched = open_store().fetch(list(expected))

    assert fetched == expected
    assert request_count(metrics, store=STORE, operation="GetSecretValue") == 4
    assert request_count(metrics, store=STORE, operation="BatchGetSecretValue") == 1


def test_fetch_missing_version(secrets, open_store):
    secrets.create_secret(Name="prod/api-key", SecretString="fake-api-key-1")
    stage = RemoteKey("prod/api-key", "AWSPENDING")
    version = RemoteKey("prod/api-key", "uuid/00000000-0000-4000-8000-000000000000")

    fetched = open_store().fetch([stage, version])

    assert isinstance(fetched[stage], RemoteKeyNotFoundError)
    assert str(fetched[stage]) == (
        "store aws-secrets: prod/api-key: version stage AWSPENDING of the secret not found in "
        "us-east-1 (ResourceNotFoundException); check remoteRef.version and the secret's "
        "versions and stages"
    )
    assert isinstance(fetched[version], RemoteKeyNotFoundError)
    assert "version 00000000-0000-4000-8000-000000000000 of the secret" in str(fetched[version])


def test_fetch_missing_secret_fails_alone(secrets, open_store):
    secrets.create_secret(Name="prod/present", SecretString="fake-present")
    missing = RemoteKey("prod/absent")
    missing_versioned = RemoteKey("prod/absent-too", "AWSCURRENT")

    fetched = open_store().fetch([RemoteKey("prod/present"), missing, missing_versioned])

    assert fetched[RemoteKey("prod/present")] == b"fake-present"
    assert isinstance(fetched[missing], RemoteKeyNotFoundError)
    assert str(fetched[missing]) == (
        "store aws-secrets: prod/absent: secret not found in us-east-1 "
        "(ResourceNotFoundException); check remoteRef.key and the region"
    )
    assert isinstance(fetched[missing_versioned], RemoteKeyNotFoundError)


def test_fetch_deleted_secret_is_not_found(secrets, open_store):
    secrets.create_secret(Name="prod/retired", SecretString="fake-retired-value")
    secrets.delete_secret(SecretId="prod/retired", RecoveryWindowInDays=7)
    current = RemoteKey("prod/retired")
    staged = RemoteKey("prod/retired", "AWSCURRENT")

    fetched = open_store().fetch([current, staged])

    for key in (current, staged):
        error = fetched[key]
        assert isinstance(error, RemoteKeyNotFoundError)
        assert "secret is scheduled for deletion in us-east-1" in str(error)
        assert "fake-retired-value" not in str(error)


def test_fetch_by_arn(secrets, open_store):
    arn = secrets.create_secret(Name="prod/by-arn", SecretString="fake-by-arn")["ARN"]
    partial = arn[: -len("-abcdef")]

    fetched = open_store().fetch([RemoteKey(arn), RemoteKey(partial)])

    assert fetched[RemoteKey(arn)] == b"fake-by-arn"
    assert fetched[RemoteKey(partial)] == b"fake-by-arn"


def test_batch_denied_reads_singly(scripted, secrets, open_store, metrics, caplog):
    for index in range(3):
        secrets.create_secret(Name=f"prod/key-{index}", SecretString=f"fake-{index}")

    def script(request: SeenRequest):
        if request.operation == "BatchGetSecretValue":
            return json_error("AccessDeniedException", "no batch for you")
        return None

    scripted.script = script
    store = open_store()
    keys = [RemoteKey(f"prod/key-{index}") for index in range(3)]

    first = store.fetch(keys)
    second = store.fetch(keys)

    for fetched in (first, second):
        assert fetched == {key: f"fake-{key.key[-1]}".encode() for key in keys}
    assert request_count(metrics, store=STORE, operation="BatchGetSecretValue") == 1
    assert request_count(metrics, store=STORE, operation="GetSecretValue") == 6
    assert caplog.text.count("store_batch_denied") == 1


def test_denied_secret_in_batch_fails_alone(scripted, secrets, open_store):
    secrets.create_secret(Name="prod/open", SecretString="fake-open")

    def script(request: SeenRequest):
        if request.operation != "BatchGetSecretValue":
            return None
        return json_response(
            {
                "SecretValues": [
                    {"Name": "prod/open", "ARN": "arn:fake", "SecretString": "fake-open"}
                ],
                "Errors": [
                    {
                        "SecretId": "prod/closed",
                        "ErrorCode": "AccessDeniedException",
                        "Message": "denied: fake-echoed-value",
                    }
                ],
            }
        )

    scripted.script = script

    fetched = open_store().fetch([RemoteKey("prod/open"), RemoteKey("prod/closed")])

    assert fetched[RemoteKey("prod/open")] == b"fake-open"
    error = fetched[RemoteKey("prod/closed")]
    assert isinstance(error, AccessDeniedError)
    assert "BatchGetSecretValue failed: access denied in us-east-1" in str(error)
    assert "fake-echoed-value" not in str(error)


def test_fetch_prefix_lists_then_reads(secrets, open_store, metrics):
    expected = {}
    for index in range(25):
        name = f"team-a/service/secret-{index:02d}"
        secrets.create_secret(Name=name, SecretString=f"fake-{index}")
        expected[name] = f"fake-{index}".encode()
    secrets.create_secret(Name="team-a/binary", SecretBinary=b"fake-\x00binary")
    expected["team-a/binary"] = b"fake-\x00binary"
    secrets.create_secret(Name="Team-A/other-case", SecretString="fake-other")
    secrets.create_secret(Name="team-b/other", SecretString="fake-other")
    secrets.create_secret(Name="team-a/deleted", SecretString="fake-deleted")
    secrets.delete_secret(SecretId="team-a/deleted", RecoveryWindowInDays=7)

    values = open_store().fetch_prefix("team-a/")

    assert values == expected
    assert request_count(metrics, store=STORE, operation="ListSecrets") == 1
    assert request_count(metrics, store=STORE, operation="BatchGetSecretValue") == 2


def test_fetch_prefix_empty(aws, open_store, metrics):
    assert open_store().fetch_prefix("nothing/") == {}
    assert request_count(metrics, store=STORE, operation="BatchGetSecretValue") == 0


def test_fetch_prefix_pages_listing(scripted, secrets, open_store, metrics):
    for index in range(3):
        secrets.create_secret(Name=f"paged/key-{index}", SecretString=f"fake-{index}")
    pages = iter(
        [
            {"SecretList": [], "NextToken": "next-1"},
            {"SecretList": [{"Name": "paged/key-0"}, {"Name": "paged/key-2"}]},
        ]
    )

    def script(request: SeenRequest):
        if request.operation == "ListSecrets":
            return json_response(next(pages))
        return None

    scripted.script = script

    values = open_store().fetch_prefix("paged/")

    assert values == {"paged/key-0": b"fake-0", "paged/key-2": b"fake-2"}
    assert request_count(metrics, store=STORE, operation="ListSecrets") == 2


def test_fetch_prefix_fails_on_denied_secret(scripted, secrets, open_store):
    secrets.create_secret(Name="app/one", SecretString="fake-one")

    def script(request: SeenRequest):
        if request.operation != "BatchGetSecretValue":
            return None
        error = {"SecretId": "app/one", "ErrorCode": "DecryptionFailure", "Message": "kms"}
        return json_response({"SecretValues": [], "Errors": [error]})

    scripted.script = script

    with pytest.raises(StoreError) as raised:
        open_store().fetch_prefix("app/")

    assert isinstance(raised.value, AccessDeniedError)
    assert "kms:Decrypt" in str(raised.value)
