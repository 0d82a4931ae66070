"""The agent's named templates, included by an application chart that depends on secrets-agent.

The application chart is built in a temporary directory as `helm dependency update` lays it out,
rendered by Helm's engine, linted, and its Deployment validated against the strict Kubernetes
schemas: 1.29 for the native sidecar (restartPolicy on an init container), 1.25 for the
classic sidecar. The declarations ConfigMap is loaded by the agent's own loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from helm_render import app_chart, find, kinds, lint_problems, render_chart, schema_errors

from agent.declarations import load_declarations
from agent.settings import Settings

NATIVE = """\
{{- $agent := dict "root" $ "declarations" "payment-declarations" "refs" (list "vault-approle") }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: payment
spec:
  selector:
    matchLabels: {app: payment}
  template:
    metadata:
      labels: {app: payment}
    spec:
      initContainers:
        {{- include "secrets-agent.initContainer" $agent | nindent 8 }}
        {{- include "secrets-agent.sidecar" $agent | nindent 8 }}
      containers:
        - name: app
          image: payment:1.4.2
          volumeMounts:
            {{- include "secrets-agent.volumeMount" $agent | nindent 12 }}
      volumes:
        {{- include "secrets-agent.volumes" $agent | nindent 8 }}
---
{{ include "secrets-agent.declarationsConfigMap" (dict "root" $ "name" "payment-declarations"
     "documents" .Values.declarations) }}
"""

CLASSIC = """\
{{- $agent := dict "root" $ "declarations" "payment-declarations" }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: payment
spec:
  selector:
    matchLabels: {app: payment}
  template:
    metadata:
      labels: {app: payment}
    spec:
      initContainers:
        {{- include "secrets-agent.initContainer" $agent | nindent 8 }}
      containers:
        - name: app
          image: payment:1.4.2
          volumeMounts:
            {{- include "secrets-agent.volumeMount" $agent | nindent 12 }}
        {{- include "secrets-agent.classicSidecar" $agent | nindent 8 }}
      volumes:
        {{- include "secrets-agent.volumes" $agent | nindent 8 }}
"""

DECLARATIONS = [
    {
        "apiVersion": "secrets-agent.io/v1alpha1",
        "kind": "SecretStore",
        "metadata": {"name": "aws-ssm"},
        "spec": {"provider": {"aws": {"service": "ParameterStore", "region": "eu-west-1"}}},
    },
    {
        "apiVersion": "secrets-agent.io/v1alpha1",
        "kind": "ExternalSecret",
        "metadata": {"name": "payment-secrets"},
        "spec": {
            "refreshInterval": "15m",
            "secretStoreRef": {"name": "aws-ssm"},
            "data": [{"secretKey": "db-password", "remoteRef": {"key": "/production/payment/db"}}],
        },
    },
]
APP_VALUES = yaml.safe_dump(
    {"secrets-agent": {"controller": {"enabled": False}}, "declarations": DECLARATIONS}
)


def render_app(
    tmp_path: Path, template: str = NATIVE, *, values: str = APP_VALUES, **options: Any
) -> list[dict[str, Any]]:
    chart = app_chart(tmp_path, template, values=values, **options)
    return render_chart(chart, name="payment", namespace="team-a")


def pod_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment")["spec"]["template"]["spec"]


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


# --- the application chart as a whole -----------------------------------------------------------


def test_app_chart_renders_only_its_objects(tmp_path: Path) -> None:
    objects = render_app(tmp_path)
    assert kinds(objects) == ["ConfigMap", "Deployment"]


def test_app_chart_lints_clean(tmp_path: Path) -> None:
    chart = app_chart(tmp_path, NATIVE, values=APP_VALUES)
    assert lint_problems(chart) == []


def test_native_sidecar_pod_is_valid_kubernetes(tmp_path: Path) -> None:
    objects = render_app(tmp_path)
    for item in objects:
        assert schema_errors(item, kubernetes_version="1.29") is None
    # Before 1.28, restartPolicy on an init container is an unknown field.
    assert "restartPolicy" in str(
        schema_errors(find(objects, "Deployment"), kubernetes_version="1.27")
    )


def test_classic_sidecar_pod_is_valid_on_old_clusters(tmp_path: Path) -> None:
    deployment = find(render_app(tmp_path, CLASSIC), "Deployment")
    assert schema_errors(deployment, kubernetes_version="1.25") is None


def test_every_mount_has_a_volume(tmp_path: Path) -> None:
    pod = pod_of(render_app(tmp_path))
    volumes = by_name(pod["volumes"])
    assert len(volumes) == len(pod["volumes"])
    for container in pod["initContainers"] + pod["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{container['name']}: {mount['name']}"


# --- init container and native sidecar ----------------------------------------------------------


def test_init_container_runs_once_first(tmp_path: Path) -> None:
    pod = pod_of(render_app(tmp_path))
    init, sidecar = pod["initContainers"]
    assert init["name"] == "secrets-agent-init"
    assert init["args"] == ["once"]
    assert "restartPolicy" not in init
    assert env_of(init)["SECRETS_AGENT_TIMEOUT"] == "60"
    assert sidecar["name"] == "secrets-agent"


def test_native_sidecar_gates_app_on_readyz(tmp_path: Path) -> None:
    sidecar = pod_of(render_app(tmp_path))["initContainers"][1]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["run"]
    probe = sidecar["startupProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "agent-http"}
    assert probe["periodSeconds"] == 1
    assert probe["failureThreshold"] == 120
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "agent-http"}
    [port] = sidecar["ports"]
    assert port["name"] == "agent-http"
    assert env_of(sidecar)["SECRETS_AGENT_LISTEN"] == f"0.0.0.0:{port['containerPort']}"


def test_classic_sidecar_is_a_plain_container(tmp_path: Path) -> None:
    pod = pod_of(render_app(tmp_path, CLASSIC))
    assert [container["name"] for container in pod["initContainers"]] == ["secrets-agent-init"]
    sidecar = by_name(pod["containers"])["secrets-agent"]
    assert "restartPolicy" not in sidecar
    assert "startupProbe" not in sidecar
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "agent-http"}


def test_agent_containers_are_locked_down(tmp_path: Path) -> None:
    pod = pod_of(render_app(tmp_path))
    for container in pod["initContainers"]:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 65532
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_agent_resources_are_small_and_stated(tmp_path: Path) -> None:
    pod = pod_of(render_app(tmp_path))
    for container in pod["initContainers"]:
        resources = container["resources"]
        assert resources["requests"] == {"cpu": "10m", "memory": "72Mi"}
        assert resources["limits"] == {"memory": "128Mi"}


def test_agent_env_names_are_settings(tmp_path: Path) -> None:
    pod = pod_of(render_app(tmp_path))
    known = {"SECRETS_AGENT_" + name.upper() for name in Settings.model_fields}
    for container in pod["initContainers"]:
        unknown = {name for name in env_of(container) if name not in known}
        assert unknown == set(), container["name"]


# --- volumes ------------------------------------------------------------------------------------


def test_secrets_volume_is_in_memory(tmp_path: Path) -> None:
    pod = pod_of(render_app(tmp_path))
    volumes = by_name(pod["volumes"])
    assert volumes["secrets-agent-secrets"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    assert volumes["secrets-agent-tmp"]["emptyDir"]["medium"] == "Memory"
    assert volumes["secrets-agent-declarations"]["configMap"] == {"name": "payment-declarations"}
    assert volumes["secrets-agent-ref-vault-approle"]["secret"] == {"secretName": "vault-approle"}


def test_agent_writes_where_app_reads(tmp_path: Path) -> None:
    pod = pod_of(render_app(tmp_path))
    [app_mount] = by_name(pod["containers"])["app"]["volumeMounts"]
    assert app_mount == {
        "name": "secrets-agent-secrets",
        "mountPath": "/var/run/secrets-agent/secrets",
        "readOnly": True,
    }
    for container in pod["initContainers"]:
        mounts = by_name(container["volumeMounts"])
        assert mounts["secrets-agent-secrets"]["mountPath"] == app_mount["mountPath"]
        assert "readOnly" not in mounts["secrets-agent-secrets"]
        assert mounts["secrets-agent-declarations"]["readOnly"] is True
        assert mounts["secrets-agent-tmp"]["mountPath"] == "/tmp"
        ref = mounts["secrets-agent-ref-vault-approle"]
        assert ref["mountPath"] == "/var/run/secrets-agent/refs/vault-approle"
        assert env_of(container)["SECRETS_AGENT_OUTPUT_DIR"] == app_mount["mountPath"]
        assert (
            env_of(container)["SECRETS_AGENT_CONFIG"]
            == mounts["secrets-agent-declarations"]["mountPath"]
        )


# --- overrides ----------------------------------------------------------------------------------


def test_call_overrides_chart_defaults(tmp_path: Path) -> None:
    template = NATIVE.replace(
        '"refs" (list "vault-approle")',
        '"port" 9100 "outputDir" "/secrets" "fileMode" "0440" "fileGid" 1000 '
        '"resources" (dict "limits" (dict "memory" "256Mi"))',
    )
    pod = pod_of(render_app(tmp_path, template))
    sidecar = pod["initContainers"][1]
    env = env_of(sidecar)
    assert env["SECRETS_AGENT_LISTEN"] == "0.0.0.0:9100"
    assert sidecar["ports"][0]["containerPort"] == 9100
    assert env["SECRETS_AGENT_OUTPUT_DIR"] == "/secrets"
    assert env["SECRETS_AGENT_FILE_MODE"] == "0440"
    assert env["SECRETS_AGENT_FILE_GID"] == "1000"
    assert sidecar["resources"] == {
        "requests": {"cpu": "10m", "memory": "72Mi"},
        "limits": {"memory": "256Mi"},
    }
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/secrets"


def test_platform_values_set_image(tmp_path: Path) -> None:
    values = yaml.safe_load(APP_VALUES)
    values["secrets-agent"]["image"] = {"repository": "registry.example/secrets-agent"}
    values["secrets-agent"]["agent"] = {"image": {"tag": "0.1.1"}, "logLevel": "debug"}
    pod = pod_of(render_app(tmp_path, values=yaml.safe_dump(values)))
    for container in pod["initContainers"]:
        assert container["image"] == "registry.example/secrets-agent:0.1.1"
        assert env_of(container)["SECRETS_AGENT_LOG_LEVEL"] == "debug"


def test_image_tag_defaults_to_dependency_app_version(tmp_path: Path) -> None:
    pod = pod_of(render_app(tmp_path))
    assert pod["initContainers"][0]["image"] == "secrets-agent:0.1.0"


def test_alias_is_passed_as_chart(tmp_path: Path) -> None:
    template = NATIVE.replace('(dict "root" $ ', '(dict "root" $ "chart" "agent" ').replace(
        '{{- $agent := dict "root" $ ', '{{- $agent := dict "root" $ "chart" "agent" '
    )
    values = APP_VALUES.replace("secrets-agent:", "agent:")
    pod = pod_of(render_app(tmp_path, template, values=values, alias="agent"))
    assert pod["initContainers"][0]["image"] == "secrets-agent:0.1.0"


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            '{{ include "secrets-agent.initContainer" (dict) }}',
            "pass the chart's root context",
        ),
        (
            '{{ include "secrets-agent.volumes" (dict "root" $) }}',
            'pass the declarations ConfigMap\'s name as "declarations"',
        ),
        (
            '{{ include "secrets-agent.sidecar" (dict "root" $ "chart" "agent") }}',
            'no values of the secrets-agent chart under "agent"',
        ),
        (
            '{{ include "secrets-agent.declarationsConfigMap" (dict "root" $ "name" "x") }}',
            'pass "documents" (a list) or "files" (a dict)',
        ),
        (
            '{{ include "secrets-agent.sidecar" (dict "root" $ "portt" 9000) }}',
            'unknown key "portt" in the dict',
        ),
        (
            '{{ include "secrets-agent.initContainer" (dict "root" $ "fileMode" 0440) }}',
            'fileMode must be a quoted octal string such as "0440", got 288',
        ),
        (
            '{{ include "secrets-agent.initContainer" (dict "root" $ "fileGid" "staff") }}',
            'fileGid must be a numeric group id such as 1000, got "staff"',
        ),
    ],
)
def test_helper_errors_name_the_fix(tmp_path: Path, call: str, message: str) -> None:
    chart = app_chart(tmp_path, call, values=APP_VALUES)
    with helm_python.Chart.load(chart) as loaded:
        with pytest.raises(helm_python.HelmRenderError) as raised:
            loaded.render(None, name="payment", namespace="team-a")
    assert message in str(raised.value)


# --- declarations ConfigMap ---------------------------------------------------------------------


def test_declarations_config_map_loads(tmp_path: Path) -> None:
    config_map = find(render_app(tmp_path / "chart"), "ConfigMap")
    assert config_map["metadata"]["namespace"] == "team-a"
    directory = tmp_path / "declarations"
    directory.mkdir()
    for name, text in config_map["data"].items():
        (directory / name).write_text(text)
    declarations = load_declarations([directory])
    assert [item.name for item in declarations.external_secrets] == ["payment-secrets"]
    assert list(declarations.stores) == [("SecretStore", "aws-ssm")]


def test_declarations_config_map_takes_files(tmp_path: Path) -> None:
    call = (
        '{{ include "secrets-agent.declarationsConfigMap" (dict "root" $ "name" "x" "files" '
        '(dict "stores.yaml" "kind: SecretStore\\n")) }}'
    )
    config_map = find(render_app(tmp_path, call), "ConfigMap")
    assert config_map["data"] == {"stores.yaml": "kind: SecretStore\n"}
