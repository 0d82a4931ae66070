"""The sync loop in process, against moto's server and the Vault emulator over HTTP."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import boto3
import pytest

from agent.declarations import load_declarations
from agent.metrics import Metrics
from agent.settings import load_settings
from agent.sync import BACKOFF_MAX_SECONDS, Syncer, backoff_delay
from agent.writer import Writer

SSM_STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {name: aws-ssm}
spec:
  provider:
    aws: {service: ParameterStore, region: us-east-1}
"""

VAULT_STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {{name: vault-kv}}
spec:
  provider:
    vault:
      server: {url}
      path: secret
      auth:
        tokenSecretRef: {{name: vault-token, key: token}}
"""


def external_secret(name: str, store: str, keys: list[str], interval: str = "1h") -> str:
    lines = [
        "apiVersion: secrets-agent.io/v1alpha1",
        "kind: ExternalSecret",
        f"metadata: {{name: {name}}}",
        "spec:",
        f"  refreshInterval: {interval}",
        f"  secretStoreRef: {{name: {store}}}",
        "  data:",
    ]
    for key in keys:
        secret_key = key.strip("/").replace("/", "-")
        lines.append(f"    - {{secretKey: {secret_key}, remoteRef: {{key: {key}}}}}")
    return "\n".join(lines) + "\n"


def make_syncer(tmp_path: Path, documents: list[str], **kwargs) -> Syncer:
    config = tmp_path / "declarations.yaml"
    config.write_text("---\n".join(documents))
    settings = load_settings(
        config=[str(config)], output_dir=str(tmp_path / "out"), refs_dir=str(tmp_path / "refs")
    )
    declarations = load_declarations(settings.config)
    return Syncer(
        declarations,
        settings=settings,
        writer=Writer(settings.output_dir),
        metrics=Metrics(),
        **kwargs,
    )


def backend_calls(syncer: Syncer, operation: str) -> int:
    total = 0
    for metric in syncer.metrics.registry.collect():
        if metric.name != "secrets_agent_backend_requests":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["operation"] == operation:
                total += int(sample.value)
    return total


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [
        (1, 1.0, 2.0),
        (2, 2.0, 4.0),
        (5, 16.0, 32.0),
        (8, 128.0, 256.0),
        (9, 150.0, 300.0),
        (40, 150.0, 300.0),
    ],
)
def test_backoff_bounds(failures, low, high):
    assert backoff_delay(failures, rng=lambda: 0.0) == low
    assert backoff_delay(failures, rng=lambda: 1.0) == high
    assert backoff_delay(failures) <= BACKOFF_MAX_SECONDS


def test_targets_of_one_store_share_batches(aws, tmp_path: Path):
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    keys = [f"/shared/key-{index}" for index in range(8)]
    for key in keys:
        ssm.put_parameter(Name=key, Value=f"fake-{key}", Type="SecureString")
    documents = [
        SSM_STORE,
        external_secret("first", "aws-ssm", keys[:6]),
        external_secret("second", "aws-ssm", keys[3:]),
    ]
    syncer = make_syncer(tmp_path, documents)
    result = syncer.run_once(timeout=10)
    syncer.stores.close()

    assert sorted(result.changed) == ["first", "second"]
    assert not result.failed
    assert backend_calls(syncer, "GetParameters") == 1
    assert (tmp_path / "out" / "second" / "shared-key-7").read_bytes() == b"fake-/shared/key-7"


def test_refresh_schedule_has_jitter(aws, tmp_path: Path):
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    ssm.put_parameter(Name="/j/a", Value="fake-a", Type="String")
    documents = [SSM_STORE, external_secret("jittered", "aws-ssm", ["/j/a"], interval="100s")]
    now = [1000.0]
    for draw, expected in ((0.0, 1090.0), (1.0, 1110.0), (0.5, 1100.0)):
        syncer = make_syncer(tmp_path, documents, clock=lambda: now[0], rng=lambda d=draw: d)
        syncer.run_once(timeout=10)
        syncer.stores.close()
        assert syncer.states["jittered"].next_due == pytest.approx(expected)


def test_zero_interval_fetches_once(aws, tmp_path: Path):
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    ssm.put_parameter(Name="/once/a", Value="fake-a", Type="String")
    syncer = make_syncer(
        tmp_path, [SSM_STORE, external_secret("fixed", "aws-ssm", ["/once/a"], interval="0")]
    )
    syncer.run_once(timeout=10)
    assert syncer.states["fixed"].finished
    assert syncer._seconds_until_next() is None
    syncer.stores.close()


def test_run_once_removes_replaced_generation(aws, tmp_path: Path):
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    ssm.put_parameter(Name="/gen/a", Value="fake-a-1", Type="SecureString")
    documents = [SSM_STORE, external_secret("app", "aws-ssm", ["/gen/a"])]
    first = make_syncer(tmp_path, documents)
    first.run_once(timeout=10)
    first.stores.close()
    ssm.put_parameter(Name="/gen/a", Value="fake-a-2", Type="SecureString", Overwrite=True)

    second = make_syncer(tmp_path, documents)
    result = second.run_once(timeout=10)
    second.stores.close()

    assert result.changed == ["app"]
    target = tmp_path / "out" / "app"
    generations = [entry.name for entry in target.iterdir() if entry.name.startswith("..2")]
    assert generations == [(target / "..data").readlink().name]
    assert (target / "gen-a").read_bytes() == b"fake-a-2"


def test_run_once_retries_transient_vault_errors(vault, tmp_path: Path):
    vault.kv_put("secret", "app", {"password": "fake-vault-password"})
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text(vault.root_token)
    vault.fail_next(2, status=503)
    syncer = make_syncer(
        tmp_path,
        [VAULT_STORE.format(url=vault.url), external_secret("app", "vault-kv", ["app"])],
        rng=lambda: 0.0,
    )
    started = time.monotonic()
    result = syncer.run_once(timeout=20)
    syncer.stores.close()

    assert not result.failed, result.failed
    assert result.changed == ["app"]
    assert time.monotonic() - started < 10
    assert syncer.states["app"].failures == 0


def test_run_once_last_attempt_before_timeout(vault, tmp_path: Path):
    vault.kv_put("secret", "app", {"password": "fake-vault-password"})
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text(vault.root_token)
    # Attempts at 0, 1 and 3 s fail; the backoff then points at 7 s, past the 6 s timeout.
    vault.fail_next(3, status=503)
    syncer = make_syncer(
        tmp_path,
        [VAULT_STORE.format(url=vault.url), external_secret("app", "vault-kv", ["app"])],
        rng=lambda: 0.0,
    )
    result = syncer.run_once(timeout=6)
    syncer.stores.close()

    # A last attempt shortly before the timeout found the store back.
    assert not result.failed, result.failed
    assert result.changed == ["app"]


def test_run_once_stops_at_permanent_error(vault, tmp_path: Path):
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text(vault.root_token)
    syncer = make_syncer(
        tmp_path,
        [VAULT_STORE.format(url=vault.url), external_secret("app", "vault-kv", ["missing"])],
    )
    started = time.monotonic()
    result = syncer.run_once(timeout=30)
    syncer.stores.close()

    assert list(result.failed) == ["app"]
    assert "missing" in str(result.failed["app"])
    assert time.monotonic() - started < 5, "a missing key is not retried until the timeout"
    assert not (tmp_path / "out" / "app" / "..data").exists()


def test_readiness_reports_each_target(vault, tmp_path: Path):
    vault.kv_put("secret", "good", {"v": "fake-good"})
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text(vault.root_token)
    syncer = make_syncer(
        tmp_path,
        [
            VAULT_STORE.format(url=vault.url),
            external_secret("good", "vault-kv", ["good"]),
            external_secret("bad", "vault-kv", ["absent"]),
        ],
    )
    ready, body = syncer.readiness()
    assert not ready
    assert body["targets"]["good"]["status"] == "pending"

    syncer.run_once(timeout=5)
    syncer.stores.close()
    ready, body = syncer.readiness()
    assert not ready
    assert body["targets"]["good"]["status"] == "ok"
    assert body["targets"]["bad"]["status"] == "failing"
    assert "absent" in body["targets"]["bad"]["error"]
    assert "fake-good" not in str(body)


def test_run_forever_stops_promptly(vault, tmp_path: Path):
    vault.kv_put("secret", "app", {"v": "fake-v"})
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text(vault.root_token)
    syncer = make_syncer(
        tmp_path, [VAULT_STORE.format(url=vault.url), external_secret("app", "vault-kv", ["app"])]
    )
    loop = threading.Thread(target=syncer.run_forever)
    loop.start()
    deadline = time.monotonic() + 10
    while not syncer.readiness()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert syncer.readiness()[0]

    syncer.request_stop()
    loop.join(timeout=1.0)
    assert not loop.is_alive()
    syncer.stores.close()


def test_run_forever_stops_promptly_after_switch(vault, tmp_path: Path):
    vault.kv_put("secret", "app", {"v": "fake-v-1"})
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text(vault.root_token)
    syncer = make_syncer(
        tmp_path,
        [VAULT_STORE.format(url=vault.url), external_secret("app", "vault-kv", ["app"], "1s")],
    )
    loop = threading.Thread(target=syncer.run_forever)
    loop.start()
    value = tmp_path / "out" / "app" / "app"
    deadline = time.monotonic() + 10
    while not value.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    vault.kv_put("secret", "app", {"v": "fake-v-2"})
    while b"fake-v-2" not in value.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"fake-v-2" in value.read_bytes()

    # The generation just replaced is in its grace period: stopping must not wait for it, or
    # the stop budget for closing the stores would be gone.
    syncer.request_stop()
    loop.join(timeout=0.5)
    assert not loop.is_alive()
    syncer.stores.close()


def test_listeners_receive_changed_key_names(aws, tmp_path: Path):
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    for key in ("/c/a", "/c/b"):
        ssm.put_parameter(Name=key, Value=f"fake-{key}-1", Type="String")
    documents = [SSM_STORE, external_secret("app", "aws-ssm", ["/c/a", "/c/b"])]
    syncer = make_syncer(tmp_path, documents)
    seen: list = []
    syncer.listeners.append(seen.append)

    syncer.sync(list(syncer.states.values()))
    assert [(c.target, c.added, c.changed, c.removed) for c in seen[0]] == [
        ("app", ("c-a", "c-b"), (), ())
    ]

    syncer.sync(list(syncer.states.values()))
    assert len(seen) == 1, "an unchanged round must not announce anything"

    ssm.put_parameter(Name="/c/b", Value="fake-/c/b-2", Type="String", Overwrite=True)
    syncer.sync(list(syncer.states.values()))
    assert seen[1][0].changed == ("c-b",)
    assert seen[1][0].keys == ("c-b",)
    assert "fake" not in repr(seen)
    syncer.stores.close()


def test_adopted_target_announces_only_real_changes(aws, tmp_path: Path):
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    ssm.put_parameter(Name="/d/a", Value="fake-a-1", Type="String")
    documents = [SSM_STORE, external_secret("app", "aws-ssm", ["/d/a"])]
    first = make_syncer(tmp_path, documents)
    first.run_once(timeout=10)
    first.stores.close()

    second = make_syncer(tmp_path, documents)
    seen: list = []
    second.listeners.append(seen.append)
    second.adopt()
    second.sync(list(second.states.values()))
    assert seen == []
    ssm.put_parameter(Name="/d/a", Value="fake-a-2", Type="String", Overwrite=True)
    second.sync(list(second.states.values()))
    assert seen[0][0].changed == ("d-a",)
    second.stores.close()


def test_replace_declarations_adds_updates_removes(aws, tmp_path: Path):
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    for key in ("/r/a", "/r/b", "/r/c"):
        ssm.put_parameter(Name=key, Value=f"fake-{key}", Type="String")
    syncer = make_syncer(
        tmp_path,
        [
            SSM_STORE,
            external_secret("kept", "aws-ssm", ["/r/a"]),
            external_secret("gone", "aws-ssm", ["/r/a"]),
        ],
    )
    loop = threading.Thread(target=syncer.run_forever)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while not syncer.readiness()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        config = tmp_path / "new.yaml"
        config.write_text(
            "---\n".join(
                [
                    SSM_STORE,
                    external_secret("kept", "aws-ssm", ["/r/a", "/r/b"]),
                    external_secret("new", "aws-ssm", ["/r/c"]),
                ]
            )
        )
        syncer.replace_declarations(load_declarations([config]))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (tmp_path / "out" / "new" / "r-c").exists():
            time.sleep(0.05)
        assert (tmp_path / "out" / "new" / "r-c").read_bytes() == b"fake-/r/c"
        assert (tmp_path / "out" / "kept" / "r-b").read_bytes() == b"fake-/r/b"
        assert sorted(syncer.states) == ["kept", "new"]
        assert (tmp_path / "out" / "gone" / "r-a").exists(), "a removed target keeps its files"
    finally:
        syncer.request_stop()
        loop.join(timeout=5)
        syncer.stores.close()


def test_periodic_task_runs_on_its_schedule(tmp_path: Path, vault):
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text(vault.root_token)
    vault.kv_put("secret", "app", {"v": "fake-v"})
    syncer = make_syncer(
        tmp_path, [VAULT_STORE.format(url=vault.url), external_secret("app", "vault-kv", ["app"])]
    )
    calls: list[float] = []

    def task() -> float | None:
        calls.append(time.monotonic())
        return 0.2 if len(calls) < 3 else None

    syncer.add_task(task)
    loop = threading.Thread(target=syncer.run_forever)
    loop.start()
    time.sleep(1.0)
    syncer.request_stop()
    loop.join(timeout=5)
    syncer.stores.close()
    assert len(calls) == 3
    assert calls[2] - calls[1] >= 0.15


def test_run_once_timeout_bounds_a_hanging_store(tmp_path: Path):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    port = silent.getsockname()[1]
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True)
    (refs / "token").write_text("fake-token")
    syncer = make_syncer(
        tmp_path,
        [
            VAULT_STORE.format(url=f"http://127.0.0.1:{port}"),
            external_secret("app", "vault-kv", ["app"]),
        ],
    )
    started = time.monotonic()
    result = syncer.run_once(timeout=1.5)
    elapsed = time.monotonic() - started
    silent.close()

    assert list(result.failed) == ["app"]
    assert "no response within the 1.5 s timeout" in str(result.failed["app"])
    assert "vault-kv" in str(result.failed["app"])
    assert elapsed < 4
