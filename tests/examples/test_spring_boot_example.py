"""The Spring Boot example: what can be checked without building the Java code.

No Maven repository is reachable here, so the service itself is never compiled or started.
These tests check that its chart installs as its README describes (`helm dependency update`
from the `file://` dependency, then render and lint with Helm's engine), that the rendered
objects pass the strict Kubernetes 1.29 schemas, that the declarations pass
`secrets-agent check`, and that the three places that must agree do: the directory the agent
writes and the configtree path Spring Boot reads, the secret keys and the placeholders of
application.properties, and the notify target's URL and the management server's endpoint.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python
import pytest
import yaml

from agent.goregexp import compile_regexp, replace_all

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "spring-boot"
CHART = EXAMPLE / "chart"
DECLARATIONS = CHART / "declarations"
PROPERTIES = EXAMPLE / "src" / "main" / "resources" / "application.properties"
# Top-level fields of a response from Vault's database secrets engine (database/creds/<role>).
DATABASE_ENGINE_FIELDS = ("username", "password")


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example chart with its dependency resolved, as `helm dependency update` leaves it.

    The chart is copied so that the repository stays untouched. The copy's `file://` path is
    made absolute, because the relative one points from the original location.
    """
    copy = tmp_path_factory.mktemp("example") / "payment"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    metadata = yaml.safe_load((copy / "Chart.yaml").read_text())
    [dependency] = metadata["dependencies"]
    relative = dependency["repository"].removeprefix("file://")
    assert (CHART / relative).resolve() == REPO / "helm" / "secrets-agent"
    dependency["repository"] = f"file://{(CHART / relative).resolve()}"
    (copy / "Chart.yaml").write_text(yaml.safe_dump(metadata))
    helm_python.dependency_update(copy, skip_refresh=True)
    return copy


@pytest.fixture(scope="module")
def objects(chart: Path) -> list[dict[str, Any]]:
    with helm_python.Chart.load(chart) as loaded:
        rendered = loaded.render(None, name="payment", namespace="payments")
    documents = []
    for template, text in rendered.items():
        if template.endswith("NOTES.txt"):
            continue
        documents.extend(document for document in yaml.safe_load_all(text) if document)
    return documents


def find(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [item] = [item for item in objects if item["kind"] == kind]
    return item


def properties() -> dict[str, str]:
    """application.properties as a dict (the example has no continuation lines)."""
    entries = {}
    for line in PROPERTIES.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            entries[key.strip()] = value.strip()
    return entries


def declarations() -> list[dict[str, Any]]:
    return [
        document
        for document in yaml.safe_load_all((DECLARATIONS / "payment.yaml").read_text())
        if document
    ]


def declared(kind: str) -> dict[str, Any]:
    [document] = [document for document in declarations() if document["kind"] == kind]
    return document


def secret_keys(external_secret: dict[str, Any]) -> set[str]:
    """The secret keys (file names) the ExternalSecret writes, generator fields rewritten."""
    keys = {entry["secretKey"] for entry in external_secret["spec"].get("data", [])}
    for entry in external_secret["spec"].get("dataFrom", []):
        assert "sourceRef" in entry, "the example imports only generator fields"
        for field in DATABASE_ENGINE_FIELDS:
            name = field
            for rewrite in entry.get("rewrite", []):
                regexp = rewrite["regexp"]
                name = replace_all(compile_regexp(regexp["source"]), name, regexp["target"])
            keys.add(name)
    return keys


def app_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return container


# --- the chart ----------------------------------------------------------------------------------


def test_chart_lints_clean(chart: Path) -> None:
    report = helm_python.lint(chart, strict=True, with_subcharts=True, kube_version="v1.29.0")
    assert report["errors"] == []
    assert [message for message in report["messages"] if message["severity"] >= 2] == []


def test_chart_renders_app_objects_only(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(item["kind"] for item in objects)
    assert kinds == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]


def test_objects_match_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for item in objects:
        kubernetes_validate.validate(item, "1.29", strict=True)


def test_pod_has_init_container_and_native_sidecar(objects: list[dict[str, Any]]) -> None:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    init, sidecar = pod["initContainers"]
    assert init["args"] == ["once"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["secrets-agent-secrets"]["emptyDir"]["medium"] == "Memory"


def test_files_are_readable_by_app_group(objects: list[dict[str, Any]]) -> None:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    app_group = app_container(objects)["securityContext"]["runAsGroup"]
    assert pod["securityContext"]["fsGroup"] == app_group
    for container in pod["initContainers"]:
        env = {item["name"]: item["value"] for item in container["env"]}
        assert env["SECRETS_AGENT_FILE_GID"] == str(app_group)
        assert env["SECRETS_AGENT_FILE_MODE"] == "0440"


def test_service_account_has_irsa_role(objects: list[dict[str, Any]]) -> None:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    account = find(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws")


# --- declarations -------------------------------------------------------------------------------


def test_declarations_pass_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check", "--config", str(DECLARATIONS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


def test_config_map_holds_declarations_file(objects: list[dict[str, Any]]) -> None:
    config_map = find(objects, "ConfigMap")
    assert config_map["data"] == {"payment.yaml": (DECLARATIONS / "payment.yaml").read_text()}
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    declared_volume = volumes["secrets-agent-declarations"]["configMap"]
    assert declared_volume["name"] == config_map["metadata"]["name"]


# --- the places that must agree -----------------------------------------------------------------


def test_mount_path_is_configtree_path(objects: list[dict[str, Any]]) -> None:
    [mount] = [
        mount
        for mount in app_container(objects)["volumeMounts"]
        if mount["name"] == "secrets-agent-secrets"
    ]
    assert mount["readOnly"] is True
    external_secret = declared("ExternalSecret")
    target = (
        external_secret["spec"].get("target", {}).get("name") or external_secret["metadata"]["name"]
    )
    imported = properties()["spring.config.import"]
    assert imported == f"configtree:{mount['mountPath']}/{target}/"


def test_placeholders_name_secret_keys() -> None:
    placeholders = set(re.findall(r"\$\{([^}:]+)\}", PROPERTIES.read_text()))
    keys = secret_keys(declared("ExternalSecret"))
    assert keys == {"api-key", "db-username", "db-password"}
    assert placeholders == keys


def test_notify_url_is_refresh_endpoint() -> None:
    entries = properties()
    notify = declared("NotifyTarget")["spec"]
    url = urlsplit(notify["http"]["url"])
    base_path = entries.get("management.endpoints.web.base-path", "/actuator")
    assert notify["http"]["method"] == "POST"
    assert url.hostname == entries["management.server.address"]
    assert url.port == int(entries["management.server.port"])
    assert url.path == f"{base_path}/refresh"
    assert "refresh" in entries["management.endpoints.web.exposure.include"].split(",")
    assert notify["targets"] == [declared("ExternalSecret")["metadata"]["name"]]


def test_probes_use_application_port(objects: list[dict[str, Any]]) -> None:
    # The management server listens on loopback, which the kubelet cannot reach, so the probes
    # use the additional paths on the application port.
    container = app_container(objects)
    entries = properties()
    [port] = container["ports"]
    assert port["containerPort"] == int(entries["server.port"])
    assert entries["management.endpoint.health.probes.add-additional-paths"] == "true"
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}


def test_java_sources_rotate_hikari_credentials() -> None:
    # The Java code is not compiled here; this checks that the rotation the README describes is
    # the one in the source.
    source = (
        EXAMPLE / "src/main/java/com/example/payment/DatabaseCredentialsRotation.java"
    ).read_text()
    assert "implements ApplicationListener<EnvironmentChangeEvent>" in source
    assert "config.setPassword(" in source
    assert "pool.softEvictConnections()" in source
    for key in ("db-username", "db-password"):
        assert f'"{key}"' in source
