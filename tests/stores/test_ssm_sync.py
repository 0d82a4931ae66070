"""The sync loop with an SSM store that skips unchanged parameters, against moto over HTTP.

The `Syncer` keeps one `ParameterStore` across rounds, so rounds after the first list the
parameters with DescribeParameters and read only what changed.
"""

from __future__ import annotations

import os
from pathlib import Path

import boto3

from agent.declarations import load_declarations
from agent.metrics import Metrics
from agent.settings import load_settings
from agent.sync import Syncer
from agent.writer import Writer

DOCUMENTS = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {name: aws-ssm}
spec:
  provider:
    aws: {service: ParameterStore, region: us-east-1}
---
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {name: payment}
spec:
  refreshInterval: 1m
  secretStoreRef: {name: aws-ssm}
  data:
    - {secretKey: db-password, remoteRef: {key: /production/payment/db-password}}
    - {secretKey: db-user, remoteRef: {key: /production/payment/db-user}}
    - {secretKey: api-key, remoteRef: {key: /production/payment/api-key}}
"""


def make_syncer(tmp_path: Path) -> Syncer:
    config = tmp_path / "declarations.yaml"
    config.write_text(DOCUMENTS)
    settings = load_settings(
        config=[str(config)], output_dir=str(tmp_path / "out"), refs_dir=str(tmp_path / "refs")
    )
    return Syncer(
        load_declarations(settings.config),
        settings=settings,
        writer=Writer(settings.output_dir),
        metrics=Metrics(),
    )


def requests_sent(syncer: Syncer, operation: str) -> int:
    total = 0
    for metric in syncer.metrics.registry.collect():
        if metric.name != "secrets_agent_backend_requests":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["operation"] == operation:
                total += int(sample.value)
    return total


def test_unchanged_rounds_write_nothing(aws, tmp_path: Path):
    ssm = boto3.client("ssm")
    for name, value in (
        ("/production/payment/db-password", "fake-db-password-1"),
        ("/production/payment/db-user", "fake-db-user"),
        ("/production/payment/api-key", "fake-api-key"),
    ):
        ssm.put_parameter(Name=name, Value=value, Type="SecureString")
    syncer = make_syncer(tmp_path)
    changes: list = []
    syncer.listeners.append(changes.append)
    target = tmp_path / "out" / "payment"
    try:
        first = syncer.sync(list(syncer.states.values()))
        assert first.changed == ["payment"]
        generation = os.readlink(target / "..data")
        assert requests_sent(syncer, "GetParameters") == 1
        assert requests_sent(syncer, "DescribeParameters") == 0

        for round_number in (1, 2):
            result = syncer.sync(list(syncer.states.values()))
            assert result.changed == []
            assert result.unchanged == ["payment"]
            assert not result.failed
            assert os.readlink(target / "..data") == generation, "no new generation"
            assert requests_sent(syncer, "GetParameters") == 1, "nothing read again"
            assert requests_sent(syncer, "DescribeParameters") == round_number
        assert len(changes) == 1

        ssm.put_parameter(
            Name="/production/payment/db-password",
            Value="fake-db-password-2",
            Type="SecureString",
            Overwrite=True,
        )
        changed = syncer.sync(list(syncer.states.values()))

        assert changed.changed == ["payment"]
        assert os.readlink(target / "..data") != generation
        assert (target / "db-password").read_bytes() == b"fake-db-password-2"
        assert (target / "db-user").read_bytes() == b"fake-db-user"
        assert requests_sent(syncer, "GetParameters") == 2
        assert [change.changed for change in changes[-1]] == [("db-password",)]
        assert "fake" not in repr(changes)
    finally:
        syncer.stores.close()
