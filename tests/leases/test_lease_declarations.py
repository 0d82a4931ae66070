"""Loading VaultDynamicSecret generators and generatorRef entries: accepted shapes and the
message for every rejected field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.declarations import load_declarations
from agent.errors import DeclarationErrors

PROVIDER = {
    "server": "http://127.0.0.1:8200",
    "auth": {"kubernetes": {"role": "orders", "serviceAccountRef": {"name": "orders"}}},
}


def generator(**spec) -> dict:
    return {
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "VaultDynamicSecret",
        "metadata": {"name": "orders-db"},
        "spec": {"path": "database/creds/orders", "provider": PROVIDER, **spec},
    }


def external_secret(*data_from, **spec) -> dict:
    return {
        "apiVersion": "external-secrets.io/v1beta1",
        "kind": "ExternalSecret",
        "metadata": {"name": "orders"},
        "spec": {
            "dataFrom": list(data_from)
            or [
                {"sourceRef": {"generatorRef": {"kind": "VaultDynamicSecret", "name": "orders-db"}}}
            ],
            **spec,
        },
    }


def load(tmp_path: Path, *documents: dict):
    path = tmp_path / "declarations.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return load_declarations([path])


def errors_of(tmp_path: Path, *documents: dict) -> list[str]:
    with pytest.raises(DeclarationErrors) as raised:
        load(tmp_path, *documents)
    return [str(error) for error in raised.value.errors]


def test_eso_manifest_loads(tmp_path: Path) -> None:
    declarations = load(tmp_path, generator(path="/database/creds/orders/"), external_secret())

    found = declarations.generators[("VaultDynamicSecret", "orders-db")]
    assert found.spec.path == "database/creds/orders"
    assert found.spec.method == "GET"
    assert found.spec.result_type == "Data"
    assert found.display_name == "VaultDynamicSecret/orders-db"
    (declaration,) = declarations.external_secrets
    assert declaration.store_ref is None
    assert declaration.spec.data_from[0].source_ref.generator_ref.name == "orders-db"


def test_own_api_version_loads(tmp_path: Path) -> None:
    document = generator(method="post", parameters={"ttl": "1h"}, resultType="Auth")
    document["apiVersion"] = "secrets-agent.io/v1alpha1"
    reference = {
        "apiVersion": "secrets-agent.io/v1alpha1",
        "kind": "VaultDynamicSecret",
        "name": "orders-db",
    }

    declarations = load(
        tmp_path, document, external_secret({"sourceRef": {"generatorRef": reference}})
    )

    spec = declarations.generators[("VaultDynamicSecret", "orders-db")].spec
    assert spec.method == "POST"
    assert spec.parameters == {"ttl": "1h"}
    assert spec.result_type == "Auth"


def test_fingerprint_follows_spec(tmp_path: Path) -> None:
    first = load(tmp_path, generator(), external_secret()).generators
    same = load(tmp_path, generator(), external_secret()).generators
    other = load(tmp_path, generator(path="database/creds/other"), external_secret()).generators
    key = ("VaultDynamicSecret", "orders-db")

    assert first[key].fingerprint == same[key].fingerprint
    assert first[key].fingerprint != other[key].fingerprint


@pytest.mark.parametrize(
    ("spec", "field", "expected"),
    [
        ({"controller": "dev"}, "spec.controller", "External Secrets Operator instance"),
        ({"retrySettings": {"maxRetries": 3}}, "spec.retrySettings", "its own backoff"),
        ({"allowEmptyResponse": True}, "spec.allowEmptyResponse", "always an error here"),
        ({"getParameters": {"a": ["b"]}}, "spec.getParameters", "method POST or PUT"),
        ({"resultType": "Raw"}, "spec.resultType", "resultType Raw is not supported"),
        ({"parameters": {"ttl": "1h"}}, "spec", "sent only with method POST or PUT"),
        ({"method": "DELETE"}, "spec.method", "'GET', 'POST' or 'PUT'"),
        ({"path": "/"}, "spec.path", "names no Vault path"),
        ({"path": "database/creds/orders?ttl=1h"}, "spec.path", "must not contain ? or #"),
        ({"path": "database/../sys"}, "spec.path", "segment"),
        ({"provider": {**PROVIDER, "tls": {}}}, "spec.provider.tls", "client certificates"),
        ({"provider": {**PROVIDER, "headers": {}}}, "spec.provider.headers", "request headers"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_rejected_generator_field(tmp_path: Path, spec: dict, field: str, expected: str) -> None:
    (error,) = errors_of(tmp_path, generator(**spec), external_secret())

    assert f"VaultDynamicSecret orders-db: {field}:" in error
    assert expected in error


def test_generator_needs_own_api_group(tmp_path: Path) -> None:
    document = generator()
    document["apiVersion"] = "external-secrets.io/v1beta1"

    errors = errors_of(tmp_path, document, external_secret())

    assert any("apiVersion: not supported" in error for error in errors)
    assert any("generators.external-secrets.io/v1alpha1" in error for error in errors)


def test_unknown_generator_named(tmp_path: Path) -> None:
    reference = {"sourceRef": {"generatorRef": {"kind": "VaultDynamicSecret", "name": "other"}}}

    (error,) = errors_of(tmp_path, generator(), external_secret(reference))

    assert (
        "spec.dataFrom[0].sourceRef.generatorRef.name: unknown VaultDynamicSecret 'other'" in error
    )
    assert "declared generators: VaultDynamicSecret orders-db" in error


def test_store_needed_for_other_entries(tmp_path: Path) -> None:
    reference = {"sourceRef": {"generatorRef": {"kind": "VaultDynamicSecret", "name": "orders-db"}}}
    document = external_secret(
        reference, data=[{"secretKey": "a", "remoteRef": {"key": "secret/a"}}]
    )

    (error,) = errors_of(tmp_path, generator(), document)

    assert "spec.secretStoreRef: required field is missing" in error
    assert "only dataFrom.sourceRef.generatorRef entries need none" in error


def test_generator_with_extract_rejected(tmp_path: Path) -> None:
    entry = {
        "extract": {"key": "secret/a"},
        "sourceRef": {"generatorRef": {"kind": "VaultDynamicSecret", "name": "orders-db"}},
    }

    errors = errors_of(tmp_path, generator(), external_secret(entry))

    assert any("found extract and sourceRef, expected exactly one source" in e for e in errors)


def test_duplicate_generator_reported(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, generator(), generator(), external_secret())

    assert "duplicate VaultDynamicSecret 'orders-db'" in error


def test_rejected_value_not_echoed(tmp_path: Path) -> None:
    secret = "fake-secret-in-wrong-field-1"

    errors = errors_of(tmp_path, generator(method=secret, resultType=secret), external_secret())

    assert errors
    assert all(secret not in error for error in errors)
