"""The SSM Parameter Store store against moto's server, over HTTP.

Requests are counted through the agent's own metrics. Throttling, access denial and server
errors come from `ScriptedEndpoint`, a loopback HTTP server that returns scripted responses to
some requests and forwards the rest to moto.
"""

from __future__ import annotations

import random
import socket
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

from agent.errors import (
    AccessDeniedError,
    RemoteKeyNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from agent.metrics import Metrics
from agent.refs import Refs
from agent.stores import RemoteKey
from agent.stores.aws import AwsClientOptions, ThrottledError
from agent.stores.ssm import ParameterStore

STORE = "aws-ssm"


class SleepRecorder:
    """Records the backoff sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


# No botocore retries and no real sleeping: the agent's own backoff is what these tests observe.
FAST = AwsClientOptions(retry_mode="standard", botocore_attempts=1)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def ssm(aws: str) -> object:
    return boto3.client("ssm")


@pytest.fixture
def open_store(tmp_path: Path, metrics: Metrics) -> Iterator:
    opened: list[ParameterStore] = []

    def factory(options: AwsClientOptions | None = FAST, **aws: object) -> ParameterStore:
        store = ParameterStore(
            aws_store(STORE, "ParameterStore", **aws),
            refs=Refs(tmp_path / "refs"),
            metrics=metrics,
            options=options,
        )
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def scripted(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedEndpoint]:
    """A scripted endpoint in front of moto, used by boto3 for SSM only."""
    endpoint = ScriptedEndpoint(aws).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", endpoint.url)
    yield endpoint
    endpoint.stop()


def put(ssm: object, name: str, value: str, kind: str = "SecureString", **extra: object) -> None:
    ssm.put_parameter(Name=name, Value=value, Type=kind, **extra)  # type: ignore[attr-defined]


# --- fetch -------------------------------------------------------------------------------------


def test_fetch_batches_ten_names_per_request(ssm, open_store, metrics):
    for index in range(25):
        put(ssm, f"/production/payment/key-{index:02d}", f"fake-value-{index}")
    keys = [RemoteKey(f"/production/payment/key-{index:02d}") for index in range(25)]

    fetched = open_store().fetch(keys)

    assert fetched == {key: f"fake-value-{index}".encode() for index, key in enumerate(keys)}
    assert request_count(metrics, store=STORE, operation="GetParameters") == 3
    assert request_count(metrics, store=STORE, operation="GetParameters", result="success") == 3


def test_fetch_ignores_response_order(ssm, open_store, metrics):
    names = [f"/app/{letter}" for letter in "qwertyuiopasdfghjklzxcvbnm"]
    for name in names:
        put(ssm, name, f"fake-{name}", kind="String")
    keys = [RemoteKey(name) for name in names]
    random.Random(7).shuffle(keys)
    keys.append(keys[0])  # a duplicate is sent once

    fetched = open_store().fetch(keys)

    assert len(fetched) == len(names)
    for key in keys:
        assert fetched[key] == f"fake-{key.key}".encode()
    assert request_count(metrics, store=STORE, operation="GetParameters") == 3


def test_fetch_decrypts_securestring(ssm, open_store):
    put(ssm, "/production/payment/db-password", "fake-db-password-1", kind="SecureString")

    fetched = open_store().fetch([RemoteKey("/production/payment/db-password")])

    assert fetched[RemoteKey("/production/payment/db-password")] == b"fake-db-password-1"


def test_fetch_keeps_stringlist_raw(ssm, open_store):
    put(ssm, "/app/hosts", "a.example,b.example,c.example", kind="StringList")
    put(ssm, "/app/greeting", "fake-grüße-✓", kind="String")

    fetched = open_store().fetch([RemoteKey("/app/hosts"), RemoteKey("/app/greeting")])

    assert fetched[RemoteKey("/app/hosts")] == b"a.example,b.example,c.example"
    assert fetched[RemoteKey("/app/greeting")] == "fake-grüße-✓".encode()


def test_fetch_versions_and_labels(ssm, open_store, metrics):
    put(ssm, "/app/token", "fake-token-v1")
    put(ssm, "/app/token", "fake-token-v2", Overwrite=True)
    put(ssm, "/app/token", "fake-token-v3", Overwrite=True)
    ssm.label_parameter_version(Name="/app/token", ParameterVersion=1, Labels=["previous"])
    ssm.label_parameter_version(Name="/app/token", ParameterVersion=2, Labels=["stable"])
    keys = {
        RemoteKey("/app/token"): b"fake-token-v3",
        RemoteKey("/app/token", "1"): b"fake-token-v1",
        RemoteKey("/app/token", "2"): b"fake-token-v2",
        RemoteKey("/app/token", "previous"): b"fake-token-v1",
        RemoteKey("/app/token", "stable"): b"fake-token-v2",
    }

    fetched = open_store().fetch(list(keys))

    assert fetched == keys
    # One parameter with five selectors: the response names the parameter without its selector,
    # so each selector needs a request of its own.
    assert request_count(metrics, store=STORE, operation="GetParameters") == 5


def test_fetch_selector_in_key(ssm, open_store):
    put(ssm, "/app/token", "fake-token-v1")
    put(ssm, "/app/token", "fake-token-v2", Overwrite=True)

    fetched = open_store().fetch([RemoteKey("/app/token:1")])

    assert fetched[RemoteKey("/app/token:1")] == b"fake-token-v1"


def test_fetch_missing_key_fails_alone(ssm, open_store):
    for index in range(12):
        put(ssm, f"/app/present-{index}", f"fake-present-{index}")
    missing = RemoteKey("/production/payment/db-password")
    keys = [RemoteKey(f"/app/present-{index}") for index in range(12)] + [missing]

    fetched = open_store().fetch(keys)

    error = fetched[missing]
    assert isinstance(error, RemoteKeyNotFoundError)
    assert error.transient is False
    assert error.remote_key == "/production/payment/db-password"
    assert str(error) == (
        "store aws-ssm: /production/payment/db-password: parameter not found in us-east-1; "
        "check remoteRef.key and the region"
    )
    for index in range(12):
        assert fetched[RemoteKey(f"/app/present-{index}")] == f"fake-present-{index}".encode()


def test_fetch_missing_version_and_label(ssm, open_store):
    put(ssm, "/app/token", "fake-token-v1")
    version = RemoteKey("/app/token", "9")
    label = RemoteKey("/app/token", "canary")
    other = RemoteKey("/app/absent", "2")

    fetched = open_store().fetch([version, label, other, RemoteKey("/app/token")])

    assert isinstance(fetched[version], RemoteKeyNotFoundError)
    assert "version 9 of the parameter not found in us-east-1" in str(fetched[version])
    assert "remoteRef.version" in str(fetched[version])
    assert isinstance(fetched[label], RemoteKeyNotFoundError)
    assert "label canary of the parameter not found in us-east-1" in str(fetched[label])
    assert isinstance(fetched[other], RemoteKeyNotFoundError)
    assert fetched[RemoteKey("/app/token")] == b"fake-token-v1"


def test_fetch_invalid_version_sends_nothing(ssm, open_store, metrics):
    key = RemoteKey("/app/token", "bad version!")

    fetched = open_store().fetch([key])

    assert isinstance(fetched[key], StoreError)
    assert "invalid version 'bad version!'" in str(fetched[key])
    assert request_count(metrics, store=STORE, operation="GetParameters") == 0


def test_fetch_arn_key(ssm, open_store):
    put(ssm, "/shared/api-key", "fake-api-key-1")
    arn = ssm.get_parameter(Name="/shared/api-key")["Parameter"]["ARN"]

    fetched = open_store().fetch([RemoteKey(arn), RemoteKey("/shared/api-key")])

    assert fetched[RemoteKey(arn)] == b"fake-api-key-1"
    assert fetched[RemoteKey("/shared/api-key")] == b"fake-api-key-1"


def test_rejected_name_fails_alone(scripted, ssm, open_store, metrics):
    put(ssm, "/app/good", "fake-good")

    def script(request: SeenRequest):
        if "/app/bad name" in request.params.get("Names", []):
            return json_error("ValidationException", "Parameter name: can't be prefixed")
        return None

    scripted.script = script
    bad = RemoteKey("/app/bad name")

    fetched = open_store().fetch([RemoteKey("/app/good"), bad])

    assert fetched[RemoteKey("/app/good")] == b"fake-good"
    assert isinstance(fetched[bad], StoreError)
    assert fetched[bad].transient is False
    assert str(fetched[bad]) == (
        "store aws-ssm: /app/bad name: GetParameters was rejected with HTTP 400 "
        "(ValidationException); check remoteRef.key, remoteRef.version and the store's settings"
    )
    assert request_count(metrics, store=STORE, operation="GetParameters", result="error") == 2


def test_fetch_prefix_trailing_slash(ssm, open_store):
    put(ssm, "/svc/a", "fake-a")
    put(ssm, "/svc/b/c", "fake-c")

    assert open_store().fetch_prefix("/svc/") == {"/svc/a": b"fake-a", "/svc/b/c": b"fake-c"}


def test_fetch_nothing_sends_nothing(aws, open_store, metrics):
    assert open_store().fetch([]) == {}
    assert request_count(metrics, store=STORE, operation="GetParameters") == 0


def test_fetch_uses_declared_region(ssm, open_store):
    west = boto3.client("ssm", region_name="us-west-2")
    west.put_parameter(Name="/app/region", Value="fake-west", Type="String")

    fetched = open_store(region="us-west-2").fetch([RemoteKey("/app/region")])
    missing = open_store().fetch([RemoteKey("/app/region")])

    assert fetched[RemoteKey("/app/region")] == b"fake-west"
    assert "not found in us-east-1" in str(missing[RemoteKey("/app/region")])


def test_fetch_without_region_names_fix(aws, open_store, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")

    with pytest.raises(StoreError) as raised:
        open_store().fetch([RemoteKey("/app/key")])

    assert str(raised.value) == (
        "store aws-ssm: no AWS region configured; set spec.provider.aws.region in the store, "
        "or AWS_REGION in the agent's environment"
    )


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_DEFAULT_REGION"])
def test_fetch_malformed_environment_region(aws, open_store, monkeypatch, variable):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv(variable, "eu-west1")

    with pytest.raises(StoreError) as raised:
        open_store().fetch([RemoteKey("/app/key")])

    message = str(raised.value)
    assert f"{variable} 'eu-west1' is not an AWS region name" in message
    assert f"correct {variable} in the agent's environment" in message
    assert not raised.value.transient


# --- fetch_prefix ------------------------------------------------------------------------------


def test_fetch_prefix_pages_recursively(ssm, open_store, metrics):
    expected = {}
    for index in range(23):
        depth = "/".join(["level"] * (index % 3))
        name = f"/production/payment/{depth}/key-{index}".replace("//", "/")
        put(ssm, name, f"fake-value-{index}")
        expected[name] = f"fake-value-{index}".encode()
    put(ssm, "/production/paymentx/key", "fake-outside")
    put(ssm, "/staging/payment/key", "fake-outside")

    values = open_store().fetch_prefix("/production/payment")

    assert values == expected
    assert request_count(metrics, store=STORE, operation="GetParametersByPath") >= 3


def test_fetch_prefix_short_empty_pages(scripted, ssm, open_store, metrics):
    for index in range(4):
        put(ssm, f"/paged/key-{index}", f"fake-value-{index}")
    pages = iter(
        [
            {"Parameters": [], "NextToken": "page-2"},
            {"Parameters": [_parameter("/paged/key-0", "fake-value-0")], "NextToken": "page-3"},
            {"Parameters": [], "NextToken": "page-4"},
            {
                "Parameters": [
                    _parameter("/paged/key-1", "fake-value-1"),
                    _parameter("/paged/key-2", "fake-value-2"),
                ]
            },
        ]
    )

    def script(request: SeenRequest):
        if request.operation != "GetParametersByPath":
            return None
        return json_response(next(pages))

    scripted.script = script

    values = open_store().fetch_prefix("/paged")

    assert values == {
        "/paged/key-0": b"fake-value-0",
        "/paged/key-1": b"fake-value-1",
        "/paged/key-2": b"fake-value-2",
    }
    tokens = [
        request.params.get("NextToken")
        for request in scripted.requests
        if request.operation == "GetParametersByPath"
    ]
    assert tokens == [None, "page-2", "page-3", "page-4"]
    assert request_count(metrics, store=STORE, operation="GetParametersByPath") == 4


def test_fetch_prefix_empty(aws, open_store):
    assert open_store().fetch_prefix("/nothing/here") == {}


def test_fetch_prefix_requires_hierarchy(aws, open_store, metrics):
    with pytest.raises(StoreError) as raised:
        open_store().fetch_prefix("production")

    assert "start find.path with '/'" in str(raised.value)
    assert request_count(metrics, store=STORE, operation="GetParametersByPath") == 0


# --- throttling and failures -------------------------------------------------------------------


def test_throttling_backs_off_then_succeeds(scripted, ssm, open_store, metrics, caplog):
    put(ssm, "/app/key", "fake-value-1")
    scripted.throttle_first("GetParameters", 3)
    sleeps = SleepRecorder()
    options = AwsClientOptions(
        retry_mode="standard", botocore_attempts=1, sleep=sleeps, backoff_base=0.5, backoff_max=3
    )

    fetched = open_store(options).fetch([RemoteKey("/app/key")])

    assert fetched[RemoteKey("/app/key")] == b"fake-value-1"
    assert len(sleeps.delays) == 3
    for retry, delay in enumerate(sleeps.delays):
        assert 0 <= delay <= min(3, 0.5 * 2**retry)
    assert request_count(metrics, store=STORE, operation="GetParameters", result="throttled") == 3
    assert request_count(metrics, store=STORE, operation="GetParameters", result="success") == 1
    assert scripted.operations.count("GetParameters") == 4
    assert caplog.text.count("store_throttled") == 3


def test_persistent_throttling_is_transient_error(scripted, ssm, open_store, metrics):
    put(ssm, "/app/key", "fake-value-1")
    scripted.throttle_first("GetParameters", 1000)
    sleeps = SleepRecorder()
    options = AwsClientOptions(
        retry_mode="standard", botocore_attempts=1, sleep=sleeps, throttle_retries=4
    )

    with pytest.raises(StoreUnavailableError) as raised:
        open_store(options).fetch([RemoteKey("/app/key")])

    assert isinstance(raised.value, ThrottledError)
    assert raised.value.transient is True
    assert "GetParameters was throttled in us-east-1 (ThrottlingException)" in str(raised.value)
    assert len(sleeps.delays) == 4
    assert all(0 <= delay <= 4.0 for delay in sleeps.delays)
    assert scripted.operations.count("GetParameters") == 5
    assert request_count(metrics, store=STORE, operation="GetParameters", result="throttled") == 5


def test_botocore_retries_throttling_first(scripted, ssm, open_store, metrics):
    put(ssm, "/app/key", "fake-value-1")
    scripted.throttle_first("GetParameters", 1)
    sleeps = SleepRecorder()
    options = AwsClientOptions(sleep=sleeps)  # adaptive mode, 3 attempts

    fetched = open_store(options).fetch([RemoteKey("/app/key")])

    assert fetched[RemoteKey("/app/key")] == b"fake-value-1"
    assert sleeps.delays == []
    assert scripted.operations.count("GetParameters") == 2
    assert request_count(metrics, store=STORE, operation="GetParameters", result="success") == 1


def test_connection_refused_is_transient(aws, open_store, monkeypatch, metrics):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", f"http://127.0.0.1:{closed_port}")

    with pytest.raises(StoreUnavailableError) as raised:
        open_store().fetch([RemoteKey("/app/key")])

    assert raised.value.transient is True
    assert f"cannot reach the ssm endpoint http://127.0.0.1:{closed_port}/" in str(raised.value)
    assert "AWS_ENDPOINT_URL_SSM" in str(raised.value)
    assert request_count(metrics, store=STORE, operation="GetParameters", result="unavailable") == 1


def test_server_error_is_transient(scripted, open_store, metrics):
    scripted.script = lambda request: json_error("InternalServerError", "oops", status=500)

    with pytest.raises(StoreUnavailableError) as raised:
        open_store().fetch([RemoteKey("/app/key")])

    assert "GetParameters failed with HTTP 500 (InternalServerError)" in str(raised.value)
    assert request_count(metrics, store=STORE, operation="GetParameters", result="unavailable") == 1


def test_denied_name_fails_alone(scripted, ssm, open_store, metrics, caplog):
    put(ssm, "/app/allowed-1", "fake-allowed-1")
    put(ssm, "/app/allowed-2", "fake-allowed-2")
    put(ssm, "/restricted/db-password", "fake-db-password-1")

    def script(request: SeenRequest):
        if "/restricted/db-password" in request.params.get("Names", []):
            # Some services echo input in their messages; ours must not copy it.
            return json_error(
                "AccessDeniedException", "not authorized, value fake-db-password-1", status=400
            )
        return None

    scripted.script = script
    keys = [RemoteKey("/app/allowed-1"), RemoteKey("/restricted/db-password")]
    keys.append(RemoteKey("/app/allowed-2"))

    fetched = open_store(role=None).fetch(keys)

    error = fetched[RemoteKey("/restricted/db-password")]
    assert isinstance(error, AccessDeniedError)
    assert error.remote_key == "/restricted/db-password"
    assert "GetParameters failed: access denied in us-east-1 (AccessDeniedException)" in str(error)
    assert "allow ssm:GetParameters on this parameter" in str(error)
    assert "fake-db-password-1" not in str(error)
    assert "fake-db-password-1" not in caplog.text
    assert fetched[RemoteKey("/app/allowed-1")] == b"fake-allowed-1"
    assert fetched[RemoteKey("/app/allowed-2")] == b"fake-allowed-2"
    # One batch of three, then one request per name.
    assert request_count(metrics, store=STORE, operation="GetParameters") == 4
    assert request_count(metrics, store=STORE, operation="GetParameters", result="denied") == 2


def _parameter(name: str, value: str) -> dict:
    return {"Name": name, "Type": "String", "Value": value, "Version": 1}
