"""Declarations with templates, loaded through the real loader, for the template tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.declarations import ExternalSecretDeclaration, load_declarations

SSM_STORE: dict[str, Any] = {
    "apiVersion": "secrets-agent.io/v1alpha1",
    "kind": "SecretStore",
    "metadata": {"name": "aws-ssm"},
    "spec": {"provider": {"aws": {"service": "ParameterStore", "region": "us-east-1"}}},
}


def external_secret(
    templates: dict[str, str] | None,
    *,
    name: str = "payment",
    merge_policy: str | None = None,
    data: list[dict[str, Any]] | None = None,
    data_from: list[dict[str, Any]] | None = None,
    interval: str = "1h",
) -> dict[str, Any]:
    """Build an ExternalSecret document; `templates` None leaves out spec.target.template."""
    spec: dict[str, Any] = {
        "refreshInterval": interval,
        "secretStoreRef": {"name": "aws-ssm"},
    }
    if data is None and data_from is None:
        data = [{"secretKey": "password", "remoteRef": {"key": "/app/password"}}]
    if data is not None:
        spec["data"] = data
    if data_from is not None:
        spec["dataFrom"] = data_from
    if templates is not None:
        template: dict[str, Any] = {"data": templates}
        if merge_policy is not None:
            template["mergePolicy"] = merge_policy
        spec["target"] = {"template": template}
    return {
        "apiVersion": "external-secrets.io/v1",
        "kind": "ExternalSecret",
        "metadata": {"name": name},
        "spec": spec,
    }


def write_declarations(path: Path, documents: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def declaration_with_templates(
    tmp_path: Path, templates: dict[str, str] | None, **options: Any
) -> ExternalSecretDeclaration:
    """Load one ExternalSecret with these templates through `load_declarations`."""
    path = write_declarations(
        tmp_path / "declarations.yaml", [SSM_STORE, external_secret(templates, **options)]
    )
    return load_declarations([path]).external_secrets[0]
