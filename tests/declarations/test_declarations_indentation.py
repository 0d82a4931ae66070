"""A field of `spec` or `metadata` written at the top level is reported as wrongly indented.

The usual cause is a `data:` list that lost its indentation. The fix in the error is to indent
the field under `spec`, and the follow-on "spec: nothing to fetch" is not reported as well.
"""

from __future__ import annotations

from pathlib import Path

from declaration_manifests import error_at, load_errors, write

STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {name: aws-ssm}
spec:
  provider:
    aws: {service: ParameterStore, region: eu-west-1}
"""

DATA_AT_TOP_LEVEL = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {name: payment}
spec:
  secretStoreRef: {name: aws-ssm}
data:
  - secretKey: db-password
    remoteRef: {key: /production/payment/db-password}
"""


def test_data_at_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, "decl.yaml", f"{STORE}---\n{DATA_AT_TOP_LEVEL}")

    errors = load_errors(path)

    error = error_at(errors, "data")
    assert error.problem == "spec field written at the top level"
    assert error.fix == "indent it under spec, as spec.data"
    assert "remove it" not in str(error)
    assert [e.field for e in errors] == ["data"]


def test_data_from_at_top_level(tmp_path: Path) -> None:
    text = DATA_AT_TOP_LEVEL.replace(
        "data:\n  - secretKey: db-password\n    remoteRef:",
        "dataFrom:\n  - extract:",
    )
    path = write(tmp_path, "decl.yaml", f"{STORE}---\n{text}")

    errors = load_errors(path)

    assert error_at(errors, "dataFrom").fix == "indent it under spec, as spec.dataFrom"
    assert [e.field for e in errors] == ["dataFrom"]


def test_other_spec_fields_at_top_level(tmp_path: Path) -> None:
    text = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {name: payment}
refreshInterval: 1h
target: {name: payment-secrets}
spec:
  secretStoreRef: {name: aws-ssm}
  data:
    - secretKey: db-password
      remoteRef: {key: /production/payment/db-password}
"""
    path = write(tmp_path, "decl.yaml", f"{STORE}---\n{text}")

    errors = load_errors(path)

    refresh = error_at(errors, "refreshInterval")
    assert refresh.fix == "indent it under spec, as spec.refreshInterval"
    assert error_at(errors, "target").fix == "indent it under spec, as spec.target"
    assert len(errors) == 2


def test_store_provider_at_top_level(tmp_path: Path) -> None:
    store = STORE.replace("spec:\n  provider:\n    aws:", "provider:\n  aws:")
    path = write(tmp_path, "decl.yaml", f"{store}---\n{DATA_AT_TOP_LEVEL}")

    errors = load_errors(path)

    assert error_at(errors, "provider").fix == "indent it under spec, as spec.provider"


def test_metadata_field_at_top_level(tmp_path: Path) -> None:
    text = DATA_AT_TOP_LEVEL.replace(
        "metadata: {name: payment}\n", "metadata: {name: payment}\nnamespace: payments\n"
    )
    path = write(tmp_path, "decl.yaml", f"{STORE}---\n{text}")

    errors = load_errors(path)

    error = error_at(errors, "namespace")
    assert error.problem == "metadata field written at the top level"
    assert error.fix == "indent it under metadata, as metadata.namespace"


def test_unknown_top_level_field_removed(tmp_path: Path) -> None:
    text = DATA_AT_TOP_LEVEL.replace("metadata:", "colour: blue\nmetadata:")
    path = write(tmp_path, "decl.yaml", f"{STORE}---\n{text}")

    errors = load_errors(path)

    error = error_at(errors, "colour")
    assert error.problem == "field not supported"
    assert error.fix.startswith("remove it")


def test_spec_without_data_still_reported(tmp_path: Path) -> None:
    text = DATA_AT_TOP_LEVEL.split("\ndata:")[0] + "\n"
    path = write(tmp_path, "decl.yaml", f"{STORE}---\n{text}")

    errors = load_errors(path)

    error = error_at(errors, "spec")
    assert error.problem == "nothing to fetch"
