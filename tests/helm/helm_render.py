"""Render charts with Helm's own engine (helm-python-sdk) and pick objects out of the output.

`render_chart` returns the parsed objects of every template, in template order. `app_chart`
builds an application chart in a temporary directory that lists secrets-agent as a dependency,
the way `helm dependency update` lays it out (the dependency copied under `charts/`), so the
agent's named templates are tested as other charts include them.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "secrets-agent"
# Kinds from CRDs, which kubernetes-validate has no schema for.
CUSTOM_KINDS = {"ServiceMonitor", "ClusterKopfPeering", "KopfPeering"}


def render_chart(
    path: Path = CHART,
    values: dict[str, Any] | None = None,
    *,
    name: str = "sa",
    namespace: str = "secrets-agent",
) -> list[dict[str, Any]]:
    """Render `path` with `values`; return every non-empty object."""
    with helm_python.Chart.load(path) as chart:
        rendered = chart.render(values or {}, name=name, namespace=namespace)
    objects = []
    for template in sorted(rendered):
        if template.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(rendered[template]):
            if document:
                objects.append(document)
    return objects


def render_notes(values: dict[str, Any] | None = None) -> str:
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name="sa", namespace="secrets-agent")
    return next(text for template, text in rendered.items() if template.endswith("NOTES.txt"))


def lint_problems(path: Path = CHART, values: dict[str, Any] | None = None) -> list[str]:
    """Lint `path` like `helm lint --strict`; return errors and findings of warning level or up.

    Severity 1 is informational ("icon is recommended") and is not returned.
    """
    report = helm_python.lint(path, values, strict=True, with_subcharts=True)
    problems = [str(error) for error in report["errors"]]
    problems += [
        f"{message['path']}: {message['error']}"
        for message in report["messages"]
        if message["severity"] >= 2
    ]
    return problems


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """Return the one object of `kind` (and `name`); fail when there is none or several."""
    matches = [
        item
        for item in objects
        if item["kind"] == kind and (name is None or item["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(item["kind"] for item in objects)


def schema_errors(item: dict[str, Any], *, kubernetes_version: str = "1.29") -> str | None:
    """Validate `item` against the strict OpenAPI schema of its kind; return the error or None.

    Strict schemas reject unknown fields, so a misspelled key fails here.
    """
    try:
        kubernetes_validate.validate(item, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(part) for part in error.path)
        return f"{item['kind']} {item['metadata'].get('name')}: {where}: {error.message}"
    return None


def app_chart(
    directory: Path,
    pod_template: str,
    *,
    values: str = "secrets-agent:\n  controller:\n    enabled: false\n",
    alias: str | None = None,
) -> Path:
    """Write an application chart that depends on secrets-agent; return its directory.

    `pod_template` is the text of templates/app.yaml, which may include the agent's templates.
    """
    root = directory / "payment"
    (root / "templates").mkdir(parents=True)
    dependency = {"name": "secrets-agent", "version": "0.1.0"}
    if alias:
        dependency["alias"] = alias
    metadata = {
        "apiVersion": "v2",
        "name": "payment",
        "version": "1.0.0",
        "appVersion": "1.4.2",
        "dependencies": [dependency],
    }
    (root / "Chart.yaml").write_text(yaml.safe_dump(metadata))
    (root / "values.yaml").write_text(values)
    (root / "templates" / "app.yaml").write_text(textwrap.dedent(pod_template))
    shutil.copytree(CHART, root / "charts" / "secrets-agent")
    return root
