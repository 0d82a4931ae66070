"""Skipping unchanged SSM parameters, against moto's server over HTTP.

A `ParameterStore` kept across refreshes lists remembered parameters with DescribeParameters
and reads with GetParameters only what changed. These tests count requests through the store's
own metrics, and look at the requests on the wire through `ScriptedEndpoint` where the request
parameters matter. Denials come from moto's IAM enforcement or from the scripted endpoint, never
from a patched client.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.request
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

from agent.errors import RemoteKeyNotFoundError
from agent.metrics import Metrics
from agent.refs import Refs
from agent.stores import RemoteKey
from agent.stores.aws import AwsClientOptions
from agent.stores.ssm import MAX_NAMES_PER_DESCRIBE, ParameterStore

STORE = "aws-ssm"
# No botocore retries and no real sleeping, so a failure shows after one request.
FAST = AwsClientOptions(retry_mode="standard", botocore_attempts=1, sleep=lambda seconds: None)
# moto 5.2 returns at most 10 DescribeParameters entries a page, whatever MaxResults is.
MOTO_DESCRIBE_PAGE = 10


class FakeClock:
    """A monotonic clock that moves only when a test changes `now`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def ssm(aws: str) -> object:
    return boto3.client("ssm")


@pytest.fixture
def open_store(tmp_path: Path, metrics: Metrics) -> Iterator:
    opened: list[ParameterStore] = []

    def factory(**kwargs: object) -> ParameterStore:
        store = ParameterStore(
            aws_store(STORE, "ParameterStore"),
            refs=Refs(tmp_path / "refs"),
            metrics=metrics,
            options=FAST,
            **kwargs,
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


def put(ssm: object, name: str, value: str, **extra: object) -> None:
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", **extra)  # type: ignore[attr-defined]


def gets(metrics: Metrics) -> int:
    return request_count(metrics, store=STORE, operation="GetParameters")


def describes(metrics: Metrics) -> int:
    return request_count(metrics, store=STORE, operation="DescribeParameters")


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict]:
    """The fields of every logged event called `name`."""
    return [
        getattr(record, "event_fields", {})
        for record in caplog.records
        if record.getMessage() == name
    ]


def moto_describe_pages(names: int) -> int:
    """DescribeParameters requests moto 5.2 needs to list `names` parameters of one chunk.

    moto puts a NextToken on every full page, so a multiple of 10 costs one more, empty, page.
    """
    return names // MOTO_DESCRIBE_PAGE + 1


def wait_for_next_millisecond() -> None:
    # moto sends LastModifiedDate in milliseconds. A parameter re-created within the same
    # millisecond with the same Version would look unchanged, a limitation the store documents.
    time.sleep(0.005)


# --- unchanged and changed parameters ----------------------------------------------------------


def test_unchanged_refresh_only_describes(ssm, open_store, metrics):
    names = [f"/production/payment/key-{index:02d}" for index in range(25)]
    for index, name in enumerate(names):
        put(ssm, name, f"fake-value-{index}")
    keys = [RemoteKey(name) for name in names]
    expected = {key: f"fake-value-{index}".encode() for index, key in enumerate(keys)}
    store = open_store()

    assert store.fetch(keys) == expected
    assert gets(metrics) == 3
    assert describes(metrics) == 0, "a first fetch costs what it always did"

    for refresh in range(1, 4):
        assert store.fetch(keys) == expected
        assert gets(metrics) == 3
        assert describes(metrics) == refresh * moto_describe_pages(25)
    assert (
        request_count(metrics, store=STORE, operation="DescribeParameters", result="success") == 9
    )


def test_changed_value_is_read(ssm, open_store, metrics):
    names = [f"/app/key-{index:02d}" for index in range(12)]
    for name in names:
        put(ssm, name, f"fake-{name}-1")
    keys = [RemoteKey(name) for name in names]
    store = open_store()
    store.fetch(keys)
    reads_before = gets(metrics)

    put(ssm, "/app/key-07", "fake-/app/key-07-2", Overwrite=True)
    fetched = store.fetch(keys)

    assert fetched[RemoteKey("/app/key-07")] == b"fake-/app/key-07-2"
    for name in names:
        if name != "/app/key-07":
            assert fetched[RemoteKey(name)] == f"fake-{name}-1".encode()
    assert gets(metrics) == reads_before + 1, "only the changed parameter is read"

    assert store.fetch(keys)[RemoteKey("/app/key-07")] == b"fake-/app/key-07-2"
    assert gets(metrics) == reads_before + 1, "the new value is remembered"


def test_several_changes_read_in_batches(ssm, open_store, metrics):
    names = [f"/batch/key-{index:03d}" for index in range(100)]
    for name in names:
        put(ssm, name, "fake-1")
    keys = [RemoteKey(name) for name in names]
    store = open_store()
    store.fetch(keys)
    reads_before = gets(metrics)

    for name in names[::10]:
        put(ssm, name, "fake-2", Overwrite=True)
    fetched = store.fetch(keys)

    assert sum(1 for value in fetched.values() if value == b"fake-2") == 10
    assert gets(metrics) == reads_before + 1, "ten changed keys fit one GetParameters request"


def test_label_move_is_read(ssm, open_store, metrics):
    put(ssm, "/app/token", "fake-token-v1")
    put(ssm, "/app/token", "fake-token-v2", Overwrite=True)
    ssm.label_parameter_version(Name="/app/token", ParameterVersion=1, Labels=["stable"])
    key = RemoteKey("/app/token", "stable")
    store = open_store()
    assert store.fetch([key])[key] == b"fake-token-v1"

    ssm.label_parameter_version(Name="/app/token", ParameterVersion=2, Labels=["stable"])
    listed = ssm.describe_parameters(
        ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": ["/app/token"]}]
    )["Parameters"][0]
    fetched = store.fetch([key])

    assert fetched[key] == b"fake-token-v2"
    # The move changed neither field DescribeParameters returns, so only a read can see it.
    assert listed["Version"] == 2
    assert gets(metrics) == 2, "a label selector is read at every fetch"
    assert describes(metrics) == 0


def test_label_in_key_is_read(ssm, open_store, metrics):
    put(ssm, "/app/token", "fake-token-v1")
    ssm.label_parameter_version(Name="/app/token", ParameterVersion=1, Labels=["stable"])
    key = RemoteKey("/app/token:stable")
    store = open_store()

    store.fetch([key])
    store.fetch([key])

    assert gets(metrics) == 2
    assert describes(metrics) == 0


def test_arn_key_is_read(ssm, open_store, metrics):
    put(ssm, "/shared/api-key", "fake-api-key-1")
    arn = ssm.get_parameter(Name="/shared/api-key")["Parameter"]["ARN"]
    store = open_store()

    assert store.fetch([RemoteKey(arn)])[RemoteKey(arn)] == b"fake-api-key-1"
    put(ssm, "/shared/api-key", "fake-api-key-2", Overwrite=True)
    assert store.fetch([RemoteKey(arn)])[RemoteKey(arn)] == b"fake-api-key-2"

    assert gets(metrics) == 2
    assert describes(metrics) == 0


def test_version_selector_kept_until_change(ssm, open_store, metrics):
    put(ssm, "/app/token", "fake-token-v1")
    put(ssm, "/app/token", "fake-token-v2", Overwrite=True)
    key = RemoteKey("/app/token", "1")
    store = open_store()

    assert store.fetch([key])[key] == b"fake-token-v1"
    # The first read saw version 1's fingerprint, not the latest, so the next fetch reads again
    # and remembers the fingerprint it listed.
    assert store.fetch([key])[key] == b"fake-token-v1"
    assert gets(metrics) == 2
    assert store.fetch([key])[key] == b"fake-token-v1"
    assert gets(metrics) == 2

    put(ssm, "/app/token", "fake-token-v3", Overwrite=True)
    assert store.fetch([key])[key] == b"fake-token-v1"
    assert gets(metrics) == 3, "a new version of the parameter is checked by reading"


def test_version_selector_after_recreation(ssm, open_store):
    put(ssm, "/app/token", "fake-token-v1")
    put(ssm, "/app/token", "fake-token-v2", Overwrite=True)
    key = RemoteKey("/app/token", "2")
    store = open_store()
    store.fetch([key])
    store.fetch([key])

    ssm.delete_parameter(Name="/app/token")
    put(ssm, "/app/token", "fake-token-new-v1")
    fetched = store.fetch([key])

    assert isinstance(fetched[key], RemoteKeyNotFoundError)
    assert "version 2 of the parameter not found in us-east-1" in str(fetched[key])


def test_one_level_name_is_listed(ssm, open_store, metrics):
    put(ssm, "/single", "fake-single")
    put(ssm, "plain", "fake-plain")
    keys = [RemoteKey("/single"), RemoteKey("single"), RemoteKey("plain"), RemoteKey("/plain")]
    store = open_store()

    first = store.fetch(keys)
    second = store.fetch(keys)

    assert first == second
    assert second[RemoteKey("/single")] == b"fake-single"
    assert second[RemoteKey("single")] == b"fake-single"
    assert second[RemoteKey("plain")] == b"fake-plain"
    assert second[RemoteKey("/plain")] == b"fake-plain"
    # `/name` and `name` are one parameter, so the first read needs two requests to match each
    # response to its request, and the second fetch finds both unchanged.
    assert gets(metrics) == 2
    assert describes(metrics) == 1


# --- deleted parameters ------------------------------------------------------------------------


def test_deleted_parameter_reported_missing(ssm, open_store):
    put(ssm, "/production/payment/db-password", "fake-db-password-1")
    put(ssm, "/production/payment/user", "fake-user")
    keys = [RemoteKey("/production/payment/db-password"), RemoteKey("/production/payment/user")]
    store = open_store()
    store.fetch(keys)
    store.fetch(keys)

    ssm.delete_parameter(Name="/production/payment/db-password")
    fetched = store.fetch(keys)

    error = fetched[keys[0]]
    assert isinstance(error, RemoteKeyNotFoundError)
    assert str(error) == (
        "store aws-ssm: /production/payment/db-password: parameter not found in us-east-1; "
        "check remoteRef.key and the region"
    )
    assert fetched[keys[1]] == b"fake-user"
    assert isinstance(store.fetch(keys)[keys[0]], RemoteKeyNotFoundError), "still missing"


@pytest.mark.parametrize(
    ("puts_before", "new_value"),
    [(1, "fake-value-1"), (3, "fake-value-1"), (1, "fake-value-2")],
    ids=["same-value-version-1", "version-restarts", "new-value"],
)
def test_recreated_parameter_is_read(ssm, open_store, metrics, puts_before, new_value):
    for put_index in range(puts_before):
        put(ssm, "/app/key", "fake-value-1", Overwrite=put_index > 0)
    put(ssm, "/app/other", "fake-other")
    keys = [RemoteKey("/app/key"), RemoteKey("/app/other")]
    store = open_store()
    store.fetch(keys)
    store.fetch(keys)
    reads_before = gets(metrics)

    ssm.delete_parameter(Name="/app/key")
    wait_for_next_millisecond()
    put(ssm, "/app/key", new_value)
    fetched = store.fetch(keys)

    assert fetched[RemoteKey("/app/key")] == new_value.encode()
    assert gets(metrics) == reads_before + 1, "the re-created parameter is read again"


def test_missing_then_created_is_read(ssm, open_store, metrics):
    key = RemoteKey("/app/later")
    store = open_store()
    assert isinstance(store.fetch([key])[key], RemoteKeyNotFoundError)

    put(ssm, "/app/later", "fake-later")

    assert store.fetch([key])[key] == b"fake-later"
    assert describes(metrics) == 0, "a key that was never read is not listed"


# --- paging ------------------------------------------------------------------------------------


def test_describe_pages_120_keys(scripted, ssm, open_store, metrics):
    names = [f"/paged/key-{index:03d}" for index in range(120)]
    for name in names:
        put(ssm, name, f"fake-{name}")
    keys = [RemoteKey(name) for name in names]
    store = open_store()
    store.fetch(keys)
    assert gets(metrics) == 12

    fetched = store.fetch(keys)

    assert fetched == {key: f"fake-{key.key}".encode() for key in keys}
    assert gets(metrics) == 12
    described = [r for r in scripted.requests if r.operation == "DescribeParameters"]
    filtered: set[str] = set()
    for request in described:
        assert request.params["MaxResults"] == 50
        (name_filter,) = request.params["ParameterFilters"]
        assert name_filter["Key"] == "Name"
        assert name_filter["Option"] == "Equals"
        assert len(name_filter["Values"]) <= MAX_NAMES_PER_DESCRIBE
        filtered.update(name_filter["Values"])
    assert filtered == set(names)
    first_pages = [r for r in described if "NextToken" not in r.params]
    assert len(first_pages) == math.ceil(120 / MAX_NAMES_PER_DESCRIBE)
    # Chunks of 50, 50 and 20 names, each paged by moto.
    assert len(described) == moto_describe_pages(50) * 2 + moto_describe_pages(20)
    assert describes(metrics) == len(described)


def test_describe_short_empty_pages(scripted, ssm, open_store, metrics):
    for index in range(3):
        put(ssm, f"/short/key-{index}", f"fake-value-{index}")
    keys = [RemoteKey(f"/short/key-{index}") for index in range(3)]
    store = open_store()
    store.fetch(keys)
    listing = ssm.describe_parameters(
        ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": [key.key for key in keys]}]
    )["Parameters"]
    entries = [
        {
            "Name": entry["Name"],
            "Version": entry["Version"],
            "LastModifiedDate": entry["LastModifiedDate"].timestamp(),
        }
        for entry in listing
    ]
    # Three names are worth one GetParameters request, so the listing may take two pages.
    pages = iter(
        [
            {"Parameters": entries[:1], "NextToken": "page-2"},
            {"Parameters": entries[1:]},
        ]
    )

    def script(request: SeenRequest):
        if request.operation != "DescribeParameters":
            return None
        return json_response(next(pages))

    scripted.script = script
    reads_before = gets(metrics)
    requests_before = len(scripted.requests)

    fetched = store.fetch(keys)

    assert fetched == {key: f"fake-value-{index}".encode() for index, key in enumerate(keys)}
    assert gets(metrics) == reads_before, "every parameter was found across the pages"
    tokens = [
        request.params.get("NextToken")
        for request in scripted.requests[requests_before:]
        if request.operation == "DescribeParameters"
    ]
    assert tokens == [None, "page-2"]


def test_describe_stops_when_pages_cost_more_than_reads(scripted, ssm, open_store, metrics):
    for index in range(3):
        put(ssm, f"/sparse/key-{index}", f"fake-value-{index}")
    keys = [RemoteKey(f"/sparse/key-{index}") for index in range(3)]
    store = open_store()
    store.fetch(keys)
    counter = iter(range(1000))

    def script(request: SeenRequest):
        if request.operation != "DescribeParameters":
            return None
        return json_response({"Parameters": [], "NextToken": f"page-{next(counter)}"})

    scripted.script = script
    reads_before, describes_before = gets(metrics), describes(metrics)

    fetched = store.fetch(keys)

    assert fetched == {key: f"fake-value-{index}".encode() for index, key in enumerate(keys)}
    assert describes(metrics) == describes_before + 2, "one page per read it saves, plus one"
    assert gets(metrics) == reads_before + 1, "the names not listed are read"


def test_describe_repeated_token_falls_back(scripted, ssm, open_store, metrics, caplog):
    put(ssm, "/loop/key", "fake-loop")
    key = RemoteKey("/loop/key")
    store = open_store()
    store.fetch([key])

    def script(request: SeenRequest):
        if request.operation == "DescribeParameters":
            return json_response({"Parameters": [], "NextToken": "same-token"})
        return None

    scripted.script = script

    assert store.fetch([key])[key] == b"fake-loop"
    assert describes(metrics) == 2
    assert gets(metrics) == 2
    (failure,) = events(caplog, "ssm_describe_failed")
    assert "same NextToken twice" in failure["error"]


# --- memory ------------------------------------------------------------------------------------


def test_idle_keys_are_forgotten(ssm, open_store, metrics):
    put(ssm, "/mem/requested", "fake-requested")
    put(ssm, "/mem/idle", "fake-idle")
    requested, idle = RemoteKey("/mem/requested"), RemoteKey("/mem/idle")
    clock = FakeClock()
    store = open_store(clock=clock, forget_after=3600)
    store.fetch([requested, idle])

    clock.now += 3000
    store.fetch([requested])
    clock.now += 3000
    store.fetch([requested])
    reads_before = gets(metrics)

    assert store.fetch([requested, idle])[idle] == b"fake-idle"
    assert gets(metrics) == reads_before + 1, "only the forgotten key is read"
    assert describes(metrics) == 3, "the key still requested stays remembered"


def test_close_forgets_values(ssm, open_store, metrics):
    put(ssm, "/mem/key", "fake-value")
    key = RemoteKey("/mem/key")
    store = open_store()
    store.fetch([key])

    store.close()
    store.fetch([key])

    assert gets(metrics) == 2
    assert describes(metrics) == 0


# --- DescribeParameters failures ---------------------------------------------------------------


def test_describe_denied_stops_describing(scripted, ssm, open_store, metrics, caplog):
    put(ssm, "/deny/key", "fake-deny-1")
    key = RemoteKey("/deny/key")
    store = open_store()
    store.fetch([key])

    def script(request: SeenRequest):
        if request.operation == "DescribeParameters":
            # Some services echo input in their messages; the log must not copy it.
            return json_error("AccessDeniedException", "not authorized, value fake-deny-1")
        return None

    scripted.script = script

    assert store.fetch([key])[key] == b"fake-deny-1"
    put(ssm, "/deny/key", "fake-deny-2", Overwrite=True)
    assert store.fetch([key])[key] == b"fake-deny-2"
    assert store.fetch([key])[key] == b"fake-deny-2"

    assert scripted.operations.count("DescribeParameters") == 1, "denied once, never again"
    assert gets(metrics) == 4
    assert request_count(metrics, store=STORE, operation="DescribeParameters", result="denied") == 1
    (warning,) = events(caplog, "ssm_describe_denied")
    assert warning["store"] == STORE
    assert "AccessDeniedException" in warning["error"]
    assert "ssm:DescribeParameters" in warning["fix"]
    assert "fake-deny" not in caplog.text
    assert "fake-deny" not in repr([record.__dict__ for record in caplog.records])


def test_describe_failure_falls_back_once(scripted, ssm, open_store, metrics, caplog):
    caplog.set_level(logging.DEBUG, logger="agent.stores.ssm")
    put(ssm, "/flaky/key", "fake-flaky-1")
    key = RemoteKey("/flaky/key")
    store = open_store()
    store.fetch([key])
    failures = [2]

    def script(request: SeenRequest):
        if request.operation == "DescribeParameters" and failures[0] > 0:
            failures[0] -= 1
            return json_error("InternalServerError", "oops", status=500)
        return None

    scripted.script = script

    put(ssm, "/flaky/key", "fake-flaky-2", Overwrite=True)
    assert store.fetch([key])[key] == b"fake-flaky-2"
    assert store.fetch([key])[key] == b"fake-flaky-2"
    assert gets(metrics) == 3, "each failed DescribeParameters falls back to reading"
    assert store.fetch([key])[key] == b"fake-flaky-2"
    assert gets(metrics) == 3, "the next successful listing skips the read again"

    assert describes(metrics) == 3
    warnings = [
        record
        for record in caplog.records
        if record.getMessage() == "ssm_describe_failed" and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, "only the first failure in a row warns"
    assert len(events(caplog, "ssm_describe_failed")) == 2
    (recovered,) = events(caplog, "ssm_describe_recovered")
    assert recovered["failed_fetches"] == 2


@pytest.fixture
def iam_enforced(aws: str) -> Iterator[None]:
    """Turn on moto's IAM enforcement for the test; turn it off again afterwards.

    moto's server is shared by the whole session, so enforcement must end even when a test fails.
    """

    def set_unauthenticated_requests(count: str) -> None:
        request = urllib.request.Request(
            f"{aws}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    set_unauthenticated_requests("0")
    try:
        yield
    finally:
        set_unauthenticated_requests("inf")


def create_user(iam: object, name: str, actions: list[str]) -> dict[str, str]:
    """Create an IAM user allowed `actions` on every resource; return its access key."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
    }
    iam.create_user(UserName=name)  # type: ignore[attr-defined]
    iam.put_user_policy(  # type: ignore[attr-defined]
        UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]  # type: ignore[attr-defined]
    return {
        "aws_access_key_id": key["AccessKeyId"],
        "aws_secret_access_key": key["SecretAccessKey"],
    }


def test_iam_policy_without_describe(aws, open_store, metrics, caplog, monkeypatch, request):
    """An identity with only ssm:GetParameter*, as External Secrets Operator's policy grants.

    moto returns the IAM denial of this JSON-protocol call with an XML body and HTTP 403, which
    botocore reads as error code "403" rather than AccessDeniedException. The store then treats
    it as a failed DescribeParameters and falls back one fetch at a time, so this test checks
    only that every fetch delivers current values.
    """
    iam = boto3.client("iam")
    admin = boto3.client("ssm", **create_user(iam, "admin", ["ssm:*"]))
    reader = create_user(iam, "agent-reader", ["ssm:GetParameter*"])
    admin.put_parameter(Name="/iam/key", Value="fake-iam-1", Type="SecureString")
    request.getfixturevalue("iam_enforced")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", reader["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", reader["aws_secret_access_key"])
    key = RemoteKey("/iam/key")
    store = open_store()

    assert store.fetch([key])[key] == b"fake-iam-1"
    assert store.fetch([key])[key] == b"fake-iam-1"
    admin.put_parameter(Name="/iam/key", Value="fake-iam-2", Type="SecureString", Overwrite=True)
    assert store.fetch([key])[key] == b"fake-iam-2"

    assert gets(metrics) == 3
    assert request_count(metrics, store=STORE, operation="GetParameters", result="success") == 3
    assert describes(metrics) >= 1
    assert (
        request_count(metrics, store=STORE, operation="DescribeParameters", result="success") == 0
    )
    assert events(caplog, "ssm_describe_failed") or events(caplog, "ssm_describe_denied")
    assert "fake-iam" not in caplog.text
