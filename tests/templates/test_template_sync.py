"""Templates in the sync loop, against moto's SSM over HTTP: written files, last good on errors."""

from __future__ import annotations

import logging
from pathlib import Path

import boto3
import pytest
from templates_helpers import SSM_STORE, external_secret, write_declarations

from agent.declarations import load_declarations
from agent.metrics import Metrics
from agent.settings import load_settings
from agent.sync import Syncer
from agent.writer import Writer

FAKE_VALUES = ("fake-db-password-1", "fake-db-user-1", "fake-api-key-1", "fake-db-password-2")

PROPERTIES_TEMPLATE = """\
spring.datasource.username={{ username }}
spring.datasource.password={{ password | properties }}
payment.api-key={{ data["api-key"] }}
"""


@pytest.fixture
def ssm(aws):
    client = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    client.put_parameter(Name="/tpl/app/password", Value="fake-db-password-1", Type="SecureString")
    client.put_parameter(Name="/tpl/app/username", Value="fake-db-user-1", Type="String")
    client.put_parameter(Name="/tpl/app/api-key", Value="fake-api-key-1", Type="SecureString")
    return client


def make_syncer(tmp_path: Path, document: dict) -> Syncer:
    config = write_declarations(tmp_path / "declarations.yaml", [SSM_STORE, document])
    settings = load_settings(
        config=[str(config)], output_dir=str(tmp_path / "out"), refs_dir=str(tmp_path / "refs")
    )
    return Syncer(
        load_declarations(settings.config),
        settings=settings,
        writer=Writer(settings.output_dir),
        metrics=Metrics(),
    )


def read_target(tmp_path: Path, target: str) -> dict[str, bytes]:
    directory = tmp_path / "out" / target
    return {
        entry.name: entry.read_bytes()
        for entry in directory.iterdir()
        if not entry.name.startswith("..")
    }


def from_path(templates: dict[str, str], **options) -> dict:
    return external_secret(templates, data_from=[{"find": {"path": "/tpl/app"}}], **options)


def test_sync_writes_rendered_file(ssm, tmp_path: Path) -> None:
    syncer = make_syncer(tmp_path, from_path({"application.properties": PROPERTIES_TEMPLATE}))

    result = syncer.run_once(timeout=10)
    syncer.stores.close()

    assert not result.failed
    assert read_target(tmp_path, "payment") == {
        "application.properties": b"spring.datasource.username=fake-db-user-1\n"
        b"spring.datasource.password=fake-db-password-1\n"
        b"payment.api-key=fake-api-key-1\n"
    }


def test_sync_merge_writes_keys_too(ssm, tmp_path: Path) -> None:
    document = from_path({"db.env": "DB_PASSWORD={{ password | dotenv }}\n"}, merge_policy="Merge")
    syncer = make_syncer(tmp_path, document)

    result = syncer.run_once(timeout=10)
    syncer.stores.close()

    assert not result.failed
    assert read_target(tmp_path, "payment") == {
        "db.env": b'DB_PASSWORD="fake-db-password-1"\n',
        "password": b"fake-db-password-1",
        "username": b"fake-db-user-1",
        "api-key": b"fake-api-key-1",
    }


def test_missing_key_keeps_previous_generation(
    ssm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    syncer = make_syncer(tmp_path, from_path({"application.properties": PROPERTIES_TEMPLATE}))
    assert not syncer.run_once(timeout=10).failed
    before = read_target(tmp_path, "payment")
    generation = syncer.writer.generation("payment")

    # The key disappears from the path that dataFrom.find imports, so the snapshot is complete
    # but the template cannot render; a changed value next to it must not be published either.
    ssm.delete_parameter(Name="/tpl/app/api-key")
    ssm.put_parameter(
        Name="/tpl/app/password", Value="fake-db-password-2", Type="SecureString", Overwrite=True
    )
    with caplog.at_level(logging.INFO):
        result = syncer.run_once(timeout=10)
    syncer.stores.close()

    assert "payment" in result.failed
    message = str(result.failed["payment"])
    assert "secret key 'api-key' is missing" in message
    assert 'spec.target.template.data["application.properties"] line 3' in message
    assert "ExternalSecret payment" in message
    assert read_target(tmp_path, "payment") == before
    assert syncer.writer.generation("payment") == generation

    ready, body = syncer.readiness()
    assert ready, "a target with an earlier complete generation stays ready"
    assert body["targets"]["payment"]["status"] == "stale"
    assert "api-key" in body["targets"]["payment"]["error"]
    logged = "\n".join(
        " ".join([record.getMessage(), *map(str, getattr(record, "event_fields", {}).values())])
        for record in caplog.records
    )
    assert "sync_failed" in logged
    assert "secret key 'api-key' is missing" in logged
    for value in FAKE_VALUES:
        assert value not in logged
        assert value not in str(body)
        assert value not in message


def test_template_error_is_not_retried_in_once(ssm, tmp_path: Path) -> None:
    syncer = make_syncer(tmp_path, from_path({"a.txt": "{{ no_such_key }}"}))

    result = syncer.run_once(timeout=30)
    syncer.stores.close()

    assert list(result.failed) == ["payment"]
    assert not (tmp_path / "out" / "payment" / "..data").exists()
    assert not result.failed["payment"].transient
