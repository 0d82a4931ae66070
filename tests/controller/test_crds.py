"""The committed CRDs equal the ones generated from the models, and they are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.controller.crds import render_crds

CRDS = Path(__file__).resolve().parents[2] / "helm" / "secrets-agent" / "crds"
REGENERATE = "run `secrets-agent crds --output helm/secrets-agent/crds` and commit the result"


def test_committed_crds_match_models() -> None:
    generated = render_crds()
    committed = {path.name: path.read_text() for path in CRDS.glob("*.yaml")}
    assert sorted(committed) == sorted(generated), REGENERATE
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is out of date; {REGENERATE}"


def test_crds_write_no_defaults() -> None:
    for name, text in render_crds().items():
        assert "default:" not in text, name


def test_crd_schemas_are_structural() -> None:
    for name, text in render_crds().items():
        document = yaml.safe_load(text.split("\n", 1)[1])
        for version in document["spec"]["versions"]:
            problems = list(_structural_problems(version["schema"]["openAPIV3Schema"], "$"))
            assert problems == [], f"{name}: {problems}"


def test_external_secret_crd_names() -> None:
    document = yaml.safe_load(render_crds()["externalsecrets.yaml"])
    assert document["metadata"]["name"] == "externalsecrets.secrets-agent.io"
    assert document["spec"]["scope"] == "Namespaced"
    version = document["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["refreshInterval"] == {"type": "string"}


def test_cluster_store_crd_has_conditions() -> None:
    document = yaml.safe_load(render_crds()["clustersecretstores.yaml"])
    assert document["spec"]["scope"] == "Cluster"
    spec = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "conditions" in spec["properties"]
    secret_store = yaml.safe_load(render_crds()["secretstores.yaml"])
    store_spec = secret_store["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    assert "conditions" not in store_spec["spec"]["properties"]


def _structural_problems(node: dict[str, Any], path: str) -> list[str]:
    """Check the rules of a structural schema that generated schemas could break."""
    problems = []
    has_type = "type" in node
    escaped = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
        "x-kubernetes-int-or-string"
    )
    if not has_type and not escaped:
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    for keyword in ("$ref", "anyOf", "oneOf", "allOf", "default"):
        if keyword in node:
            problems.append(f"{path}: {keyword}")
    for key, child in (node.get("properties") or {}).items():
        problems += _structural_problems(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        problems += _structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_problems(node["additionalProperties"], f"{path}{{}}")
    return problems
