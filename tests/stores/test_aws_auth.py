"""How the AWS stores get credentials, seen on the wire.

Every AWS request (STS included) goes through a `ScriptedEndpoint` in front of moto's server,
which records the operation, the access key ID that signed it and the parameters. moto accepts
any signature, so these tests check which credentials were used, not that AWS would accept
them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from aws_helpers import ScriptedEndpoint, SeenRequest, aws_store, query_error, request_count
from aws_helpers import json_error as aws_json_error
from pydantic import ValidationError

from agent.errors import AccessDeniedError, StoreUnavailableError
from agent.metrics import Metrics
from agent.refs import MissingReferenceError, Refs
from agent.stores import RemoteKey
from agent.stores.aws import AwsClientOptions, ThrottledError
from agent.stores.secretsmanager import SecretsManagerStore
from agent.stores.ssm import ParameterStore
from agent.testing.jwt import fake_service_account_token

STORE = "aws-ssm"
ROLE = "arn:aws:iam::123456789012:role/payment-secrets-reader"
PARAMETER = "/production/payment/db-password"
VALUE = "fake-db-password-1"
FAST = AwsClientOptions(retry_mode="standard", botocore_attempts=1)
# Static keys written to files; the secret access key must never show up in errors or logs.
FILE_KEY_ID = "AKIAFAKEFILEKEY00001"
FILE_SECRET_KEY = "fake-secret-access-key-1"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def refs_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "refs"
    directory.mkdir()
    return directory


@pytest.fixture
def endpoint(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedEndpoint]:
    """A recording endpoint for every AWS service; the parameter is created beforehand."""
    boto3.client("ssm").put_parameter(Name=PARAMETER, Value=VALUE, Type="SecureString")
    scripted = ScriptedEndpoint(aws).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", scripted.url)
    yield scripted
    scripted.stop()


@pytest.fixture
def no_environment_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")


def ssm_store(
    refs_dir: Path,
    metrics: Metrics,
    *,
    options: AwsClientOptions = FAST,
    **aws: object,
) -> ParameterStore:
    declaration = aws_store(STORE, "ParameterStore", **aws)
    return ParameterStore(declaration, refs=Refs(refs_dir), metrics=metrics, options=options)


def fetch_value(store: ParameterStore) -> object:
    return store.fetch([RemoteKey(PARAMETER)])[RemoteKey(PARAMETER)]


def write_token(refs_dir: Path, service_account: str, token: str) -> Path:
    path = refs_dir / "serviceaccount" / service_account / "token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    return path


def write_keys(refs_dir: Path, *, key_id: str, secret_key: str, session_token: str = "") -> dict:
    secret = refs_dir / "aws-keys"
    secret.mkdir(exist_ok=True)
    (secret / "access-key-id").write_text(f"  {key_id}\n")
    (secret / "secret-access-key").write_text(f"{secret_key}\n\n")
    auth = {
        "accessKeyIDSecretRef": {"name": "aws-keys", "key": "access-key-id"},
        "secretAccessKeySecretRef": {"name": "aws-keys", "key": "secret-access-key"},
    }
    if session_token:
        (secret / "session-token").write_text(session_token)
        auth["sessionTokenSecretRef"] = {"name": "aws-keys", "key": "session-token"}
    return {"secretRef": auth}


def requests_of(endpoint: ScriptedEndpoint, operation: str) -> list[SeenRequest]:
    return [request for request in endpoint.requests if request.operation == operation]


# --- no auth block: boto3's default chain ------------------------------------------------------


def test_default_chain_irsa_web_identity(endpoint, refs_dir, metrics, tmp_path, monkeypatch):
    token = fake_service_account_token(namespace="payment", service_account="payment-api")
    token_file = tmp_path / "eks-token"
    token_file.write_text(token)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))

    value = fetch_value(ssm_store(refs_dir, metrics))

    assert value == VALUE.encode()
    assert endpoint.operations == ["AssumeRoleWithWebIdentity", "GetParameters"]
    assume = endpoint.requests[0]
    assert assume.params["RoleArn"] == ROLE
    assert assume.params["WebIdentityToken"] == token
    assert endpoint.requests[1].access_key_id.startswith("ASIA")


@pytest.mark.parametrize("problem", ["missing", "directory"])
def test_default_chain_irsa_token_unreadable(
    endpoint, refs_dir, metrics, tmp_path, monkeypatch, problem
):
    token_file = tmp_path / "eks-token"
    if problem == "directory":
        token_file.mkdir()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))

    with pytest.raises(StoreUnavailableError) as raised:
        fetch_value(ssm_store(refs_dir, metrics))

    message = str(raised.value)
    assert f"reading AWS credential file {token_file} failed" in message
    assert "AWS_WEB_IDENTITY_TOKEN_FILE" in message
    assert endpoint.operations == []


def test_default_chain_pod_identity(endpoint, refs_dir, metrics, tmp_path, monkeypatch):
    authorization = tmp_path / "eks-pod-identity-token"
    authorization.write_text("fake-pod-identity-token")
    agent = ContainerCredentials(key_id="ASIAFAKEPODIDENTITY1").start()
    try:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{agent.url}/v1/credentials")
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(authorization))

        value = fetch_value(ssm_store(refs_dir, metrics))
    finally:
        agent.stop()

    assert value == VALUE.encode()
    assert agent.authorizations == ["fake-pod-identity-token"]
    assert endpoint.operations == ["GetParameters"]
    assert endpoint.requests[0].access_key_id == "ASIAFAKEPODIDENTITY1"


def test_default_chain_environment_keys(endpoint, refs_dir, metrics):
    assert fetch_value(ssm_store(refs_dir, metrics)) == VALUE.encode()
    assert endpoint.requests[0].access_key_id == "testing-fake-key-id"


def test_no_credentials_is_access_denied(endpoint, refs_dir, metrics, no_environment_keys):
    with pytest.raises(AccessDeniedError) as raised:
        fetch_value(ssm_store(refs_dir, metrics))

    assert "no complete AWS credentials found (NoCredentialsError)" in str(raised.value)
    assert "IRSA" in raised.value.fix
    assert endpoint.requests == []


# --- auth.jwt.serviceAccountRef ----------------------------------------------------------------


JWT_AUTH = {"jwt": {"serviceAccountRef": {"name": "payment-api"}}}


def test_jwt_assumes_role_with_named_token(
    endpoint, refs_dir, metrics, no_environment_keys, caplog
):
    token = fake_service_account_token(namespace="payment", service_account="payment-api")
    write_token(refs_dir, "payment-api", token)
    store = ssm_store(refs_dir, metrics, role=ROLE, auth=JWT_AUTH)

    assert fetch_value(store) == VALUE.encode()
    assert fetch_value(store) == VALUE.encode()

    assume = requests_of(endpoint, "AssumeRoleWithWebIdentity")
    assert len(assume) == 1  # the credentials are reused until they near expiry
    assert assume[0].access_key_id == ""  # unsigned: the token is the proof
    assert assume[0].params["RoleArn"] == ROLE
    assert assume[0].params["RoleSessionName"] == "secrets-agent-aws-ssm"
    assert assume[0].params["WebIdentityToken"] == token
    for request in requests_of(endpoint, "GetParameters"):
        assert request.access_key_id.startswith("ASIA")
        assert request.session_token
    assert (
        request_count(metrics, store=STORE, operation="AssumeRoleWithWebIdentity", result="success")
        == 1
    )
    assert token not in caplog.text


def test_jwt_token_read_again_at_refresh(endpoint, refs_dir, metrics, no_environment_keys):
    first = fake_service_account_token(namespace="payment", service_account="payment-api")
    rotated = fake_service_account_token(namespace="payment", service_account="rotated")
    token_file = write_token(refs_dir, "payment-api", first)
    # 900 s credentials are inside botocore's 15-minute advisory window from the start, so
    # every request refreshes them.
    options = AwsClientOptions(
        retry_mode="standard", botocore_attempts=1, role_duration_seconds=900
    )
    store = ssm_store(refs_dir, metrics, options=options, role=ROLE, auth=JWT_AUTH)

    assert fetch_value(store) == VALUE.encode()
    token_file.write_text(rotated)
    assert fetch_value(store) == VALUE.encode()
    token_file.unlink()
    # An advisory refresh that fails keeps the credentials that are still valid.
    assert fetch_value(store) == VALUE.encode()

    tokens = [
        request.params["WebIdentityToken"]
        for request in requests_of(endpoint, "AssumeRoleWithWebIdentity")
    ]
    assert tokens == [first, rotated]
    assert requests_of(endpoint, "AssumeRoleWithWebIdentity")[0].params["DurationSeconds"] == (
        "900"
    )


def test_jwt_requires_role(endpoint, refs_dir, metrics):
    # The declaration is rejected when it loads, so `check` reports it and no request is sent.
    with pytest.raises(ValidationError) as raised:
        ssm_store(refs_dir, metrics, auth=JWT_AUTH)

    assert "auth.jwt is set but role is missing; set role to the ARN" in str(raised.value)
    assert endpoint.requests == []


def test_jwt_missing_token_file(endpoint, refs_dir, metrics):
    with pytest.raises(MissingReferenceError) as raised:
        fetch_value(ssm_store(refs_dir, metrics, role=ROLE, auth=JWT_AUTH))

    path = refs_dir / "serviceaccount" / "payment-api" / "token"
    assert "spec.provider.aws.auth.jwt.serviceAccountRef" in str(raised.value)
    assert f"file {path} not found" in str(raised.value)
    assert raised.value.transient is False
    assert endpoint.requests == []


def test_jwt_rejected_token(endpoint, refs_dir, metrics, caplog):
    token = fake_service_account_token(namespace="payment", service_account="payment-api")
    write_token(refs_dir, "payment-api", token)
    endpoint.script = lambda request: (
        query_error("InvalidIdentityToken", f"bad token {token}", status=400)
        if request.operation == "AssumeRoleWithWebIdentity"
        else None
    )

    with pytest.raises(AccessDeniedError) as raised:
        fetch_value(ssm_store(refs_dir, metrics, role=ROLE, auth=JWT_AUTH))

    message = str(raised.value)
    assert "AssumeRoleWithWebIdentity failed: the AWS credentials were rejected" in message
    assert "(InvalidIdentityToken)" in message
    assert "sts.amazonaws.com" in message
    assert token not in message
    assert token not in caplog.text
    assert (
        request_count(metrics, store=STORE, operation="AssumeRoleWithWebIdentity", result="denied")
        == 1
    )


def test_jwt_denied_by_trust_policy(endpoint, refs_dir, metrics):
    write_token(
        refs_dir, "payment-api", fake_service_account_token(namespace="a", service_account="b")
    )
    endpoint.script = lambda request: (
        query_error("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        if request.operation == "AssumeRoleWithWebIdentity"
        else None
    )

    with pytest.raises(AccessDeniedError) as raised:
        fetch_value(ssm_store(refs_dir, metrics, role=ROLE, auth=JWT_AUTH))

    assert f"allow this service account in the trust policy of {ROLE}" in str(raised.value)


def test_jwt_issuer_unreachable_is_transient(endpoint, refs_dir, metrics):
    write_token(
        refs_dir, "payment-api", fake_service_account_token(namespace="a", service_account="b")
    )
    endpoint.script = lambda request: (
        query_error("IDPCommunicationError", "could not reach the issuer", status=400)
        if request.operation == "AssumeRoleWithWebIdentity"
        else None
    )

    with pytest.raises(StoreUnavailableError) as raised:
        fetch_value(ssm_store(refs_dir, metrics, role=ROLE, auth=JWT_AUTH))

    assert raised.value.transient is True
    assert "AssumeRoleWithWebIdentity failed with HTTP 400 (IDPCommunicationError)" in str(
        raised.value
    )


# --- auth.secretRef ----------------------------------------------------------------------------


def test_secret_ref_static_keys(endpoint, refs_dir, metrics, no_environment_keys, caplog):
    auth = write_keys(
        refs_dir, key_id=FILE_KEY_ID, secret_key=FILE_SECRET_KEY, session_token="fake-session-1"
    )

    assert fetch_value(ssm_store(refs_dir, metrics, auth=auth)) == VALUE.encode()

    assert endpoint.requests[0].access_key_id == FILE_KEY_ID
    assert endpoint.requests[0].session_token == "fake-session-1"
    assert FILE_SECRET_KEY not in caplog.text


def test_secret_ref_for_secrets_manager(aws, refs_dir, metrics, no_environment_keys):
    boto3.client(
        "secretsmanager", aws_access_key_id="setup", aws_secret_access_key="setup"
    ).create_secret(Name="prod/api-key", SecretString="fake-api-key-1")
    auth = write_keys(refs_dir, key_id=FILE_KEY_ID, secret_key=FILE_SECRET_KEY)
    declaration = aws_store("aws-secrets", "SecretsManager", auth=auth)
    store = SecretsManagerStore(declaration, refs=Refs(refs_dir), metrics=metrics, options=FAST)

    fetched = store.fetch([RemoteKey("prod/api-key")])

    assert fetched[RemoteKey("prod/api-key")] == b"fake-api-key-1"


def test_secret_ref_missing_file(endpoint, refs_dir, metrics):
    auth = write_keys(refs_dir, key_id=FILE_KEY_ID, secret_key=FILE_SECRET_KEY)
    (refs_dir / "aws-keys" / "secret-access-key").unlink()

    with pytest.raises(MissingReferenceError) as raised:
        fetch_value(ssm_store(refs_dir, metrics, auth=auth))

    message = str(raised.value)
    assert "spec.provider.aws.auth.secretRef.secretAccessKeySecretRef" in message
    assert f"file {refs_dir / 'aws-keys' / 'secret-access-key'} not found" in message
    assert "mount Secret aws-keys (key secret-access-key)" in message
    assert FILE_KEY_ID not in message
    assert endpoint.requests == []


def test_secret_ref_empty_file(endpoint, refs_dir, metrics):
    auth = write_keys(refs_dir, key_id=FILE_KEY_ID, secret_key=FILE_SECRET_KEY)
    (refs_dir / "aws-keys" / "access-key-id").write_text(" \n")

    with pytest.raises(MissingReferenceError) as raised:
        fetch_value(ssm_store(refs_dir, metrics, auth=auth))

    assert "accessKeyIDSecretRef: file" in str(raised.value)
    assert "is empty or not UTF-8 text" in str(raised.value)


def test_rejected_keys_are_read_again(endpoint, refs_dir, metrics, no_environment_keys, caplog):
    auth = write_keys(refs_dir, key_id=FILE_KEY_ID, secret_key=FILE_SECRET_KEY)
    endpoint.script = lambda request: (
        aws_json_error(
            "UnrecognizedClientException", f"The security token {FILE_SECRET_KEY} is invalid"
        )
        if request.access_key_id == FILE_KEY_ID
        else None
    )
    store = ssm_store(refs_dir, metrics, auth=auth)

    with pytest.raises(AccessDeniedError) as raised:
        fetch_value(store)
    write_keys(refs_dir, key_id="AKIAFAKEFILEKEY00002", secret_key="fake-secret-access-key-2")
    value = fetch_value(store)

    message = str(raised.value)
    assert "GetParameters failed: the AWS credentials were rejected" in message
    assert "(UnrecognizedClientException)" in message
    assert "spec.provider.aws.auth.secretRef" in message
    assert FILE_SECRET_KEY not in message
    assert FILE_SECRET_KEY not in caplog.text
    assert value == VALUE.encode()
    assert [request.access_key_id for request in endpoint.requests] == [
        FILE_KEY_ID,
        "AKIAFAKEFILEKEY00002",
    ]


# --- role without jwt auth: AssumeRole on top of the base credentials --------------------------


def test_role_assumed_after_static_keys(endpoint, refs_dir, metrics, no_environment_keys):
    auth = write_keys(refs_dir, key_id=FILE_KEY_ID, secret_key=FILE_SECRET_KEY)

    assert fetch_value(ssm_store(refs_dir, metrics, role=ROLE, auth=auth)) == VALUE.encode()

    assert endpoint.operations == ["AssumeRole", "GetParameters"]
    assume, get = endpoint.requests
    assert assume.access_key_id == FILE_KEY_ID
    assert assume.params["RoleArn"] == ROLE
    assert get.access_key_id.startswith("ASIA")
    assert get.session_token
    assert request_count(metrics, store=STORE, operation="AssumeRole", result="success") == 1


def test_role_assumed_after_default_chain(endpoint, refs_dir, metrics):
    store = ssm_store(refs_dir, metrics, role=ROLE)

    assert fetch_value(store) == VALUE.encode()
    assert fetch_value(store) == VALUE.encode()

    # The second fetch finds the parameter unchanged, so it only lists it.
    assert endpoint.operations == ["AssumeRole", "GetParameters", "DescribeParameters"]
    assert endpoint.requests[0].access_key_id == "testing-fake-key-id"
    assert endpoint.requests[2].access_key_id.startswith("ASIA")


def test_role_assumption_denied(endpoint, refs_dir, metrics):
    endpoint.script = lambda request: (
        query_error("AccessDenied", "User is not authorized to perform: sts:AssumeRole")
        if request.operation == "AssumeRole"
        else None
    )

    with pytest.raises(AccessDeniedError) as raised:
        fetch_value(ssm_store(refs_dir, metrics, role=ROLE))

    message = str(raised.value)
    assert "AssumeRole failed: access denied in us-east-1 (AccessDenied)" in message
    assert f"allow sts:AssumeRole on {ROLE}" in message
    assert request_count(metrics, store=STORE, operation="AssumeRole", result="denied") == 1
    assert request_count(metrics, store=STORE, operation="GetParameters", result="denied") == 1
    assert endpoint.operations == ["AssumeRole"]


def test_role_assumption_throttled_once(endpoint, refs_dir, metrics):
    endpoint.script = lambda request: (
        query_error("Throttling", "Rate exceeded", status=400)
        if request.operation == "AssumeRole"
        else None
    )
    sleeps: list[float] = []
    options = AwsClientOptions(retry_mode="standard", botocore_attempts=1, sleep=sleeps.append)

    with pytest.raises(StoreUnavailableError) as raised:
        fetch_value(ssm_store(refs_dir, metrics, options=options, role=ROLE))

    # STS backs off on its own; the request that needed the credentials is not retried on top.
    assert not isinstance(raised.value, ThrottledError)
    assert raised.value.transient is True
    assert "AssumeRole was throttled in us-east-1 (Throttling)" in str(raised.value)
    assert endpoint.operations == ["AssumeRole"] * 5
    assert len(sleeps) == 4
    assert request_count(metrics, store=STORE, operation="GetParameters") == 1


# --- lazy import -------------------------------------------------------------------------------


def test_declarations_do_not_import_boto3():
    code = (
        "import sys\n"
        "import agent.stores, agent.declarations, agent.models\n"
        "loaded = sorted(name for name in ('boto3', 'botocore') if name in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# --- a stand-in for the EKS Pod Identity agent -------------------------------------------------


class ContainerCredentials:
    """A loopback HTTP server that hands out container credentials, as the EKS Pod Identity
    agent does at 169.254.170.23; botocore accepts a loopback URL for
    AWS_CONTAINER_CREDENTIALS_FULL_URI."""

    def __init__(self, *, key_id: str) -> None:
        self.authorizations: list[str] = []
        document = {
            "AccessKeyId": key_id,
            "SecretAccessKey": "fake-pod-identity-secret",
            "Token": "fake-pod-identity-session",
            "Expiration": (datetime.now(UTC) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        body = json.dumps(document).encode()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
                owner.authorizations.append(self.headers.get("Authorization", ""))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ContainerCredentials:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
