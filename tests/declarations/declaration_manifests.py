"""Valid declaration documents and helpers to break one field of them, write them and load them.

`base_documents()` returns a file's worth of valid documents: an SSM SecretStore (document 1), a
Vault ClusterSecretStore (document 2) and an ExternalSecret (document 3). A bad-input test
changes one field of one of them, so every error names a known file, document and object.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.declarations import load_declarations
from agent.errors import DeclarationError, DeclarationErrors

DECLARATIONS_FILE = "declarations.yaml"
SSM_STORE = 1
VAULT_STORE = 2
EXTERNAL_SECRET = 3

# A field name, a list index `[0]` or a quoted map key `["example.com/owner"]`.
_PATH_PART = re.compile(r'([A-Za-z0-9_-]+)|\[(\d+)\]|\["([^"]+)"\]')
# libyaml's emitter when PyYAML has it: the pure Python one takes seconds for 1,000 documents.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# The value that makes `with_field` remove a field.
DELETE = object()

_SSM_STORE = {
    "apiVersion": "external-secrets.io/v1",
    "kind": "SecretStore",
    "metadata": {"name": "aws-ssm", "namespace": "payments"},
    "spec": {"provider": {"aws": {"service": "ParameterStore", "region": "eu-west-1"}}},
}
_VAULT_STORE = {
    "apiVersion": "external-secrets.io/v1",
    "kind": "ClusterSecretStore",
    "metadata": {"name": "vault"},
    "spec": {
        "provider": {
            "vault": {
                "server": "https://vault.example:8200",
                "path": "secret",
                "version": "v2",
                "auth": {"kubernetes": {"mountPath": "kubernetes", "role": "payment"}},
            }
        }
    },
}
_EXTERNAL_SECRET = {
    "apiVersion": "external-secrets.io/v1",
    "kind": "ExternalSecret",
    "metadata": {"name": "payment", "namespace": "payments"},
    "spec": {
        "refreshInterval": "1h",
        "secretStoreRef": {"name": "aws-ssm", "kind": "SecretStore"},
        "target": {"name": "payment-secrets"},
        "data": [
            {"secretKey": "db-password", "remoteRef": {"key": "/production/payment/db-password"}},
            {"secretKey": "db-user", "remoteRef": {"key": "/production/payment/db-user"}},
        ],
    },
}


def base_documents() -> list[dict[str, Any]]:
    """Return fresh copies of the three valid documents, in file order."""
    return copy.deepcopy([_SSM_STORE, _VAULT_STORE, _EXTERNAL_SECRET])


def with_field(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with DELETE, remove) the field at a manifest path such as `spec.data[0].secretKey`.

    Missing mappings on the way are created. Returns the document for chaining.
    """
    parts: list[str | int] = []
    for name, index, quoted in _PATH_PART.findall(path):
        parts.append(int(index) if index else name or quoted)
    node: Any = document
    for part, following in zip(parts, parts[1:], strict=False):
        if isinstance(part, str) and part not in node:
            node[part] = [] if isinstance(following, int) else {}
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return document


def dump(documents: list[Any]) -> str:
    """Serialise documents as one multi-document YAML stream."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_errors(*paths: Path | str, allow_nested: bool = False) -> list[DeclarationError]:
    """Load `paths`, expecting DeclarationErrors; return its errors."""
    with pytest.raises(DeclarationErrors) as caught:
        load_declarations(list(paths), allow_nested=allow_nested)
    return caught.value.errors


def error_at(errors: list[DeclarationError], field: str) -> DeclarationError:
    """Return the one error about `field`; fail with every field that has an error otherwise."""
    matching = [error for error in errors if error.field == field]
    assert len(matching) == 1, f"expected one error at {field}, got: {[str(e) for e in errors]}"
    return matching[0]
