"""No error message repeats a value from a manifest, wherever a credential was pasted.

Each case puts a fake credential into a field that rejects it (an unknown field, a wrong type, an
invalid enum value, a broken file) and checks that the field is named but the value never shown.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from declaration_manifests import (
    EXTERNAL_SECRET,
    SSM_STORE,
    VAULT_STORE,
    base_documents,
    dump,
    load_errors,
    with_field,
    write,
)
from pydantic import ValidationError

from agent.models import ExternalSecretSpec

FAKE = "fake-vault-token-1"
VAULT = "spec.provider.vault"
AWS = "spec.provider.aws"
REMOTE_REF = "spec.data[0].remoteRef"

FIELD_CASES: list[tuple[int, str, Any]] = [
    (VAULT_STORE, f"{VAULT}.auth.token", FAKE),
    (VAULT_STORE, f"{VAULT}.auth.tokenSecretRef", FAKE),
    (VAULT_STORE, f"{VAULT}.server", FAKE),
    (VAULT_STORE, f"{VAULT}.server", f"https://agent:{FAKE}@vault.example:8200"),
    (VAULT_STORE, f"{VAULT}.server", f"https://vault.example:8200/v1/?token={FAKE}"),
    (VAULT_STORE, f"{VAULT}.caBundle", FAKE),
    (VAULT_STORE, f"{VAULT}.namespace", f"../{FAKE}"),
    (VAULT_STORE, f"{VAULT}.auth.kubernetes.serviceAccountRef.name", f"../{FAKE}"),
    (VAULT_STORE, f"{VAULT}.version", FAKE),
    (VAULT_STORE, f"{VAULT}.auth.kubernetes.role", [FAKE]),
    (VAULT_STORE, f"{VAULT}.headers", {"X-Vault-Token": FAKE}),
    (SSM_STORE, f"{AWS}.accessKeyID", FAKE),
    (SSM_STORE, f"{AWS}.auth.secretRef.accessKeyIDSecretRef", FAKE),
    (SSM_STORE, f"{AWS}.service", FAKE),
    (SSM_STORE, "apiVersion", FAKE),
    (SSM_STORE, "kind", FAKE),
    (EXTERNAL_SECRET, f"{REMOTE_REF}.value", FAKE),
    (EXTERNAL_SECRET, f"{REMOTE_REF}.key", {"value": FAKE}),
    (EXTERNAL_SECRET, f"{REMOTE_REF}.version", [FAKE]),
    (EXTERNAL_SECRET, f"{REMOTE_REF}.decodingStrategy", FAKE),
    (EXTERNAL_SECRET, f"{REMOTE_REF}.metadataPolicy", FAKE),
    (EXTERNAL_SECRET, "spec.data[0].secretKey", {"value": FAKE}),
    (EXTERNAL_SECRET, "spec.refreshInterval", FAKE),
    (EXTERNAL_SECRET, "spec.refreshPolicy", FAKE),
    (EXTERNAL_SECRET, "spec.target.creationPolicy", FAKE),
    (EXTERNAL_SECRET, "spec.target.immutable", FAKE),
    (EXTERNAL_SECRET, "spec.target.template.templateFrom", [{"literal": FAKE}]),
    (EXTERNAL_SECRET, "spec.target.template.data", {"password": [FAKE]}),
    (EXTERNAL_SECRET, "spec.target.template.mergePolicy", FAKE),
    (EXTERNAL_SECRET, "spec.dataFrom", [{"find": {"name": {"regexp": f"({FAKE}"}}}]),
    (EXTERNAL_SECRET, 'metadata.annotations["secrets-agent.io/file-mode"]', FAKE),
    (EXTERNAL_SECRET, "metadata.labels.team", [FAKE]),
    (EXTERNAL_SECRET, "stringData", {"password": FAKE}),
]


def assert_value_not_shown(errors: list) -> None:
    assert errors, "the input must be rejected"
    for error in errors:
        for text in (str(error), error.problem, error.fix, error.field, error.name, error.kind):
            assert "fake-vault-token" not in text, "an error repeated the value"


@pytest.mark.parametrize(
    ("document", "path", "value"),
    FIELD_CASES,
    ids=[f"{document}:{path}" for document, path, _ in FIELD_CASES],
)
def test_rejected_field_value_not_shown(
    tmp_path: Path, document: int, path: str, value: Any
) -> None:
    documents = base_documents()
    with_field(documents[document - 1], path, value)
    file = write(tmp_path, "declarations.yaml", dump(documents))

    assert_value_not_shown(load_errors(file))


KUBERNETES_SECRET = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: vault-token}}
data:
  token: {base64.b64encode(FAKE.encode()).decode()}
stringData:
  token: {FAKE}
"""

FILE_CASES = [
    ("kubernetes-secret.yaml", KUBERNETES_SECRET),
    ("syntax.yaml", f"spec:\n  token: {FAKE}: x\n"),
    ("unclosed-quote.yaml", f'spec:\n  token: "{FAKE}\n'),
    ("duplicate.yaml", f"kind: SecretStore\ntoken: a\ntoken: {FAKE}\n"),
    ("tag.yaml", f"kind: SecretStore\ntoken: !secret {FAKE}\n"),
    ("unclosed.json", json.dumps({"spec": {"token": FAKE}})[:-2]),
    ("duplicate.json", f'{{"token": "a", "token": "{FAKE}"}}'),
]


@pytest.mark.parametrize(("name", "text"), FILE_CASES, ids=[name for name, _ in FILE_CASES])
def test_broken_file_content_not_shown(tmp_path: Path, name: str, text: str) -> None:
    assert_value_not_shown(load_errors(write(tmp_path, name, text)))


def test_validation_error_text_hides_input() -> None:
    spec = {"secretStoreRef": {"name": "store"}, "data": [{"secretKey": "a", "remoteRef": FAKE}]}

    with pytest.raises(ValidationError) as caught:
        ExternalSecretSpec.model_validate(spec)

    assert "fake-vault-token" not in str(caught.value)
    assert "fake-vault-token" not in repr(caught.value)
