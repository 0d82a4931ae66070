"""Checks across documents: store references, duplicate stores and targets, secret key clashes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from declaration_manifests import base_documents, dump, error_at, load_errors, write

from agent.declarations import load_declarations


def second_external_secret(name: str, *, target: str | None) -> dict:
    document = copy.deepcopy(base_documents()[2])
    document["metadata"]["name"] = name
    if target is None:
        del document["spec"]["target"]
    else:
        document["spec"]["target"]["name"] = target
    return document


def test_store_in_another_file(tmp_path: Path) -> None:
    store, vault, external_secret = base_documents()
    write(tmp_path, "b-stores.yaml", dump([store]))
    write(tmp_path, "a-payment.yaml", dump([external_secret]))

    declarations = load_declarations([tmp_path])

    assert declarations.external_secrets[0].store_ref in declarations.stores


def test_unknown_store_lists_declared_ones(tmp_path: Path) -> None:
    documents = base_documents()
    documents[2]["spec"]["secretStoreRef"]["name"] = "aws-parameter-store"
    path = write(tmp_path, "declarations.yaml", dump(documents))

    errors = load_errors(path)

    error = error_at(errors, "spec.secretStoreRef.name")
    assert len(errors) == 1
    assert error.document == 3
    assert error.name == "payment"
    assert error.problem == "unknown SecretStore 'aws-parameter-store'"
    assert "declared stores: ClusterSecretStore vault, SecretStore aws-ssm" in error.fix


def test_store_reference_of_other_kind(tmp_path: Path) -> None:
    documents = base_documents()
    documents[2]["spec"]["secretStoreRef"] = {"name": "vault"}  # kind defaults to SecretStore
    path = write(tmp_path, "declarations.yaml", dump(documents))

    errors = load_errors(path)

    error = error_at(errors, "spec.secretStoreRef.name")
    assert error.problem == "unknown SecretStore 'vault'"
    assert error.fix == "set spec.secretStoreRef.kind to ClusterSecretStore"


def test_no_stores_declared(tmp_path: Path) -> None:
    path = write(tmp_path, "declarations.yaml", dump(base_documents()[2:]))

    errors = load_errors(path)

    assert error_at(errors, "spec.secretStoreRef.name").fix.endswith("(declared stores: none)")


def test_invalid_store_not_reported_as_unknown(tmp_path: Path) -> None:
    documents = base_documents()
    documents[0]["spec"]["provider"]["aws"]["service"] = "CertificateManager"
    path = write(tmp_path, "declarations.yaml", dump(documents))

    errors = load_errors(path)

    assert [(error.document, error.field) for error in errors] == [(1, "spec.provider.aws.service")]


def test_duplicate_store(tmp_path: Path) -> None:
    store = base_documents()[0]
    first = write(tmp_path, "a.yaml", dump([store]))
    second = write(tmp_path, "b.yaml", dump(base_documents()))

    errors = load_errors(tmp_path)

    error = error_at(errors, "metadata.name")
    assert len(errors) == 1
    assert error.source == str(second)
    assert error.document == 1
    assert error.problem == f"duplicate SecretStore 'aws-ssm', first declared in {first} document 1"
    assert "unique name" in error.fix


def test_same_name_different_store_kinds(tmp_path: Path) -> None:
    documents = base_documents()
    documents[1]["metadata"]["name"] = "aws-ssm"  # a ClusterSecretStore and a SecretStore

    declarations = load_declarations([write(tmp_path, "declarations.yaml", dump(documents))])

    assert set(declarations.stores) == {
        ("SecretStore", "aws-ssm"),
        ("ClusterSecretStore", "aws-ssm"),
    }


@pytest.mark.parametrize(
    ("second", "field"),
    [
        (second_external_secret("payment-copy", target="payment-secrets"), "spec.target.name"),
        (second_external_secret("payment-secrets", target=None), "metadata.name"),
    ],
    ids=["same target.name", "default target equals other target.name"],
)
def test_duplicate_target(tmp_path: Path, second: dict, field: str) -> None:
    first_file = write(tmp_path, "a.yaml", dump(base_documents()))
    second_file = write(tmp_path, "b.yaml", dump([second]))

    errors = load_errors(tmp_path)

    error = error_at(errors, field)
    assert len(errors) == 1
    assert error.source == str(second_file)
    assert error.document == 1
    assert error.name == second["metadata"]["name"]
    assert error.problem == (
        f"duplicate target 'payment-secrets', also written by ExternalSecret payment "
        f"({first_file} document 3)"
    )
    assert error.fix == "give each ExternalSecret its own spec.target.name"


@pytest.mark.parametrize(
    ("keys", "index", "problem"),
    [
        (["tls", "tls/tls.key"], 1, "'tls/tls.key' is inside 'tls', a file of spec.data[0]"),
        (["tls/tls.key", "tls"], 1, "'tls' is also a directory of spec.data[0]"),
        (["a/b/c", "a/b"], 1, "'a/b' is also a directory of spec.data[0]"),
        (["a/b", "a/b"], 1, "'a/b' is declared twice (also spec.data[0])"),
    ],
    ids=["directory under a file", "file over a directory", "nested twice", "nested duplicate"],
)
def test_nested_key_clash(tmp_path: Path, keys: list[str], index: int, problem: str) -> None:
    documents = base_documents()
    for item, key in zip(documents[2]["spec"]["data"], keys, strict=True):
        item["secretKey"] = key
    path = write(tmp_path, "declarations.yaml", dump(documents))

    errors = load_errors(path, allow_nested=True)

    error = error_at(errors, f"spec.data[{index}].secretKey")
    assert len(errors) == 1
    assert error.document == 3
    assert problem in error.problem
    assert "rename one of them" in error.fix or "remove one of the entries" in error.fix


def test_nested_key_unsafe_segment(tmp_path: Path) -> None:
    documents = base_documents()
    documents[2]["spec"]["data"][0]["secretKey"] = "tls/../../etc/passwd"
    path = write(tmp_path, "declarations.yaml", dump(documents))

    errors = load_errors(path, allow_nested=True)

    error = error_at(errors, "spec.data[0].secretKey")
    assert "has path segment 2 that is '..'" in error.problem
    assert "plain file name" in error.fix
    assert "--nested-keys" not in error.fix  # already on


def test_secret_keys_of_different_targets_may_repeat(tmp_path: Path) -> None:
    documents = base_documents() + [second_external_secret("orders", target="orders")]

    declarations = load_declarations([write(tmp_path, "declarations.yaml", dump(documents))])

    first, second = declarations.external_secrets
    assert first.spec.data[0].secret_key == second.spec.data[0].secret_key


def test_long_store_name_referenced(tmp_path: Path) -> None:
    documents = base_documents()
    long_name = "aws-parameter-store-" + "x" * 200  # Kubernetes allows 253 characters
    documents[0]["metadata"]["name"] = long_name
    documents[2]["spec"]["secretStoreRef"]["name"] = long_name

    declarations = load_declarations([write(tmp_path, "declarations.yaml", dump(documents))])

    assert declarations.external_secrets[0].store_ref in declarations.stores
