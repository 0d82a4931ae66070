"""AWS store errors caused by the user's input: credential files and request parameters.

Each error must name the field the bad value came from and the fix, be permanent when retrying
cannot help, and be raised before any request is sent. Requests go through a recording endpoint
in front of moto's server, so the tests can check that nothing was sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from aws_helpers import ScriptedEndpoint, aws_store

from agent.errors import StoreError
from agent.metrics import Metrics
from agent.refs import InvalidReferenceError, Refs
from agent.stores import RemoteKey
from agent.stores.aws import AwsClientOptions
from agent.stores.ssm import ParameterStore

STORE = "aws-ssm"
PARAMETER = "/production/payment/db-password"
VALUE = "fake-db-password-1"
FAST = AwsClientOptions(retry_mode="standard", botocore_attempts=1)
ROLE = "arn:aws:iam::123456789012:role/payment"


@pytest.fixture
def endpoint(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedEndpoint]:
    boto3.client("ssm").put_parameter(Name=PARAMETER, Value=VALUE, Type="SecureString")
    scripted = ScriptedEndpoint(aws).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", scripted.url)
    yield scripted
    scripted.stop()


@pytest.fixture
def refs_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "refs"
    directory.mkdir()
    return directory


def ssm_store(refs_dir: Path, **aws: object) -> ParameterStore:
    declaration = aws_store(STORE, "ParameterStore", **aws)
    return ParameterStore(declaration, refs=Refs(refs_dir), metrics=Metrics(), options=FAST)


def static_keys(refs_dir: Path, *, key_id: str, secret_key: str) -> dict:
    secret = refs_dir / "aws-creds"
    secret.mkdir(exist_ok=True)
    (secret / "access-key-id").write_text(key_id)
    (secret / "secret-access-key").write_text(secret_key)
    return {
        "secretRef": {
            "accessKeyIDSecretRef": {"name": "aws-creds", "key": "access-key-id"},
            "secretAccessKeySecretRef": {"name": "aws-creds", "key": "secret-access-key"},
        }
    }


def fetch(store: ParameterStore) -> object:
    return store.fetch([RemoteKey(PARAMETER)])[RemoteKey(PARAMETER)]


# --- credential files that hold more than one line -------------------------------------------


def test_access_key_two_lines_rejected(endpoint, refs_dir):
    auth = static_keys(refs_dir, key_id="AKIAFAKELINE1\nAKIAFAKELINE2", secret_key="fake-secret-1")

    with pytest.raises(InvalidReferenceError) as caught:
        fetch(ssm_store(refs_dir, auth=auth))

    message = str(caught.value)
    assert "store aws-ssm" in message
    assert "spec.provider.aws.auth.secretRef.accessKeyIDSecretRef" in message
    assert str(refs_dir / "aws-creds" / "access-key-id") in message
    assert "more than one line" in message
    assert "one trailing newline is fine" in message
    assert "AKIAFAKELINE" not in message
    assert "fake-secret-1" not in message
    assert not caught.value.transient
    assert endpoint.requests == []


def test_secret_key_two_lines_rejected(endpoint, refs_dir):
    auth = static_keys(refs_dir, key_id="AKIAFAKEFILEKEY00001", secret_key="fake-line1\nline2\n")

    with pytest.raises(InvalidReferenceError) as caught:
        fetch(ssm_store(refs_dir, auth=auth))

    assert "secretRef.secretAccessKeySecretRef" in str(caught.value)
    assert "fake-line1" not in str(caught.value)
    assert endpoint.requests == []


def test_keys_with_trailing_newline_accepted(endpoint, refs_dir):
    auth = static_keys(refs_dir, key_id="AKIAFAKEFILEKEY00001\n", secret_key="fake-secret-1\n")

    assert fetch(ssm_store(refs_dir, auth=auth)) == VALUE.encode()
    assert endpoint.requests[0].access_key_id == "AKIAFAKEFILEKEY00001"


def test_web_identity_token_two_lines_rejected(endpoint, refs_dir):
    token = refs_dir / "serviceaccount" / "payment" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("fake.jwt.part1\nfake.jwt.part2\n")
    auth = {"jwt": {"serviceAccountRef": {"name": "payment"}}}
    store = ssm_store(refs_dir, role=ROLE, auth=auth)

    with pytest.raises(StoreError) as caught:
        fetch(store)

    message = str(caught.value)
    assert "spec.provider.aws.auth.jwt.serviceAccountRef" in message
    assert str(token) in message
    assert "more than one line" in message
    assert "fake.jwt" not in message
    assert not caught.value.transient
    assert endpoint.requests == []


# --- requests botocore rejects before sending -------------------------------------------------


def test_short_web_identity_token_names_field(endpoint, refs_dir):
    # STS takes tokens of 4 characters or more, so botocore rejects this request before sending.
    token = refs_dir / "serviceaccount" / "payment" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("abc\n")
    auth = {"jwt": {"serviceAccountRef": {"name": "payment"}}}

    with pytest.raises(StoreError) as caught:
        fetch(ssm_store(refs_dir, role=ROLE, auth=auth))

    message = str(caught.value)
    assert "AssumeRoleWithWebIdentity request is invalid and was not sent" in message
    assert "invalid WebIdentityToken" in message
    assert "check the token mounted for spec.provider.aws.auth.jwt.serviceAccountRef" in message
    assert "remoteRef" not in message
    assert not caught.value.transient
    assert endpoint.requests == []
