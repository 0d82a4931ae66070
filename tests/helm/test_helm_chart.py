"""The chart's controller objects, rendered by Helm's engine: lint, schema, security and RBAC.

Every rendered object of a built-in kind is validated against the strict Kubernetes 1.29 OpenAPI
schema, so a misspelled field fails here as it would fail `kubectl apply`.
"""

from __future__ import annotations

import re
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml
from helm_render import (
    CHART,
    CUSTOM_KINDS,
    REPO,
    find,
    kinds,
    lint_problems,
    render_chart,
    render_notes,
    schema_errors,
)

from agent.controller import GROUP, VERSION
from agent.controller.crds import render_crds
from agent.models import ExternalSecretSpec, StoreSpec

APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
NAMESPACED = {
    "controller": {
        "watchNamespaces": ["team-a", "team-b"],
        "replicas": 1,
        "leaderElection": {"enabled": False},
    }
}
EVERYTHING_ON = {
    "metrics": {"serviceMonitor": {"enabled": True}},
    "networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelector": {}}]},
    "serviceAccount": {"irsaRoleArn": "arn:aws:iam::123456789012:role/secrets-agent"},
}


def controller_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert [container["name"] for container in pod["containers"]] == ["controller"]
    return pod["containers"][0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def rules_of(objects: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return find(objects, "ClusterRole", f"sa-secrets-agent-{role}")["rules"]


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rules
    )


# --- lint and schema -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [{}, NAMESPACED, EVERYTHING_ON],
    ids=["defaults", "namespaced", "everything-on"],
)
def test_lint_has_no_warnings(values: dict[str, Any]) -> None:
    assert lint_problems(CHART, values) == []


@pytest.mark.parametrize(
    "values",
    [{}, NAMESPACED, EVERYTHING_ON],
    ids=["defaults", "namespaced", "everything-on"],
)
def test_rendered_objects_match_kubernetes_schemas(values: dict[str, Any]) -> None:
    objects = render_chart(values=values)
    for item in objects:
        if item["kind"] in CUSTOM_KINDS:
            continue
        assert schema_errors(item) is None


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
        ({"controller": {"replicas": "two"}}, "/controller/replicas"),
        ({"controller": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"image": {"tag": 1.0}}, "/image/tag"),
        ({"controller": {"logFormat": "xml"}}, "/controller/logFormat"),
        ({"controller": {"watchNamespaces": "team-a"}}, "/controller/watchNamespaces"),
        ({"serviceAccount": {"irsaRoleArn": "my-role"}}, "/serviceAccount/irsaRoleArn"),
        ({"agent": {"port": 70000}}, "/agent/port"),
        ({"agent": {"outputDir": "relative/dir"}}, "/agent/outputDir"),
        ({"agent": {"fileMode": "rw-r-----"}}, "/agent/fileMode"),
    ],
)
def test_schema_rejects_wrong_values(values: dict[str, Any], complaint: str) -> None:
    with helm_python.Chart.load(CHART) as chart:
        with pytest.raises(helm_python.HelmValuesError) as raised:
            chart.render(values, name="sa", namespace="secrets-agent")
    assert complaint in str(raised.value)


def test_schema_accepts_global_values() -> None:
    # Helm passes `global` to every chart of a release, this one included as a dependency.
    objects = render_chart(values={"global": {"imageRegistry": "registry.example"}})
    assert "Deployment" in kinds(objects)


def test_schema_is_checked_against_defaults() -> None:
    with helm_python.Chart.load(CHART) as chart:
        defaults = chart.values
        chart.validate_schema(defaults)
    assert defaults["image"]["tag"] == ""


# --- the controller Deployment --------------------------------------------------------------------


def test_controller_pod_runs_locked_down() -> None:
    objects = render_chart()
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    container = controller_container(objects)
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in security


def test_controller_user_matches_image() -> None:
    user_line = next(
        line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER")
    )
    uid, gid = user_line.split()[1].split(":")
    pod = find(render_chart(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid)


def test_controller_has_writable_tmp() -> None:
    objects = render_chart()
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    container = controller_container(objects)
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_controller_image_defaults_to_app_version() -> None:
    assert controller_container(render_chart())["image"] == f"secrets-agent:{APP_VERSION}"
    values = {"image": {"repository": "registry.example/secrets-agent", "tag": "0.2.0"}}
    container = controller_container(render_chart(values=values))
    assert container["image"] == "registry.example/secrets-agent:0.2.0"


def test_controller_command_probes_and_resources() -> None:
    objects = render_chart()
    deployment = find(objects, "Deployment")
    container = controller_container(objects)
    assert deployment["spec"]["replicas"] == 2
    assert container["args"] == ["controller"]
    assert container["ports"] == [
        {"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]


def test_controller_env_matches_its_settings() -> None:
    from agent.controller.settings import ControllerSettings

    env = env_of(controller_container(render_chart()))
    settings = {
        name.removeprefix("SECRETS_AGENT_CONTROLLER_").lower()
        for name in env
        if name.startswith("SECRETS_AGENT_CONTROLLER_")
    }
    assert settings <= set(ControllerSettings.model_fields)
    assert env["SECRETS_AGENT_CONTROLLER_LISTEN"] == "0.0.0.0:8080"
    assert env["SECRETS_AGENT_CONTROLLER_STANDALONE"] == "false"
    assert env["SECRETS_AGENT_CONTROLLER_PEERING"] == "secrets-agent"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "SECRETS_AGENT_CONTROLLER_NAMESPACES" not in env


def test_controller_settings_load_from_rendered_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.controller.settings import load_controller_settings

    env = env_of(controller_container(render_chart(values=NAMESPACED)))
    for name, value in env.items():
        if name.startswith("SECRETS_AGENT_CONTROLLER_"):
            monkeypatch.setenv(name, value)
    settings = load_controller_settings()
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.standalone is True
    assert settings.listen_address == ("0.0.0.0", 8080)
    assert settings.log_format == "json"


def test_service_account_carries_irsa_role() -> None:
    account = find(render_chart(values=EVERYTHING_ON), "ServiceAccount")
    annotations = account["metadata"]["annotations"]
    role = "arn:aws:iam::123456789012:role/secrets-agent"
    assert annotations["eks.amazonaws.com/role-arn"] == role
    assert "annotations" not in find(render_chart(), "ServiceAccount")["metadata"]


# --- leader election, PDB, disabled controller --------------------------------------------------


def test_peering_object_matches_controller() -> None:
    objects = render_chart(values={"controller": {"leaderElection": {"peering": "team-peers"}}})
    peering = find(objects, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "team-peers"
    assert env_of(controller_container(objects))["SECRETS_AGENT_CONTROLLER_PEERING"] == "team-peers"
    named = [rule for rule in rules_of(objects, "cluster") if "resourceNames" in rule]
    assert named == [
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "resourceNames": ["team-peers"],
            "verbs": ["get", "patch"],
        }
    ]


def test_peering_crd_ships_with_chart() -> None:
    with helm_python.Chart.load(CHART) as chart:
        names = {yaml.safe_load(crd["data"])["metadata"]["name"] for crd in chart.crds}
    assert "clusterkopfpeerings.kopf.dev" in names
    assert "kopfpeerings.kopf.dev" in names


def test_namespaced_controller_elects_per_namespace() -> None:
    values = {
        "controller": {
            "watchNamespaces": ["team-a", "team-b"],
            "leaderElection": {"peering": "team-peers"},
        }
    }
    objects = render_chart(values=values)
    peerings = [item for item in objects if item["kind"] == "KopfPeering"]
    assert sorted(item["metadata"]["namespace"] for item in peerings) == ["team-a", "team-b"]
    assert {item["metadata"]["name"] for item in peerings} == {"team-peers"}
    assert {item["apiVersion"] for item in peerings} == {"kopf.dev/v1"}
    assert "ClusterKopfPeering" not in kinds(objects)
    assert "PodDisruptionBudget" in kinds(objects)
    env = env_of(controller_container(objects))
    assert env["SECRETS_AGENT_CONTROLLER_STANDALONE"] == "false"
    assert env["SECRETS_AGENT_CONTROLLER_PEERING"] == "team-peers"
    assert find(objects, "Deployment")["spec"]["replicas"] == 2
    cluster_rules = rules_of(objects, "cluster")
    assert not any("kopf.dev" in rule["apiGroups"] for rule in cluster_rules)
    namespaced_rules = rules_of(objects, "namespaced")
    assert allowed(namespaced_rules, "kopf.dev", "kopfpeerings", "watch")
    named = [rule for rule in namespaced_rules if "resourceNames" in rule]
    assert named == [
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["kopfpeerings"],
            "resourceNames": ["team-peers"],
            "verbs": ["get", "patch"],
        }
    ]
    assert lint_problems(values=values) == []


def test_standalone_controller_has_no_peering() -> None:
    objects = render_chart(values=NAMESPACED)
    assert "ClusterKopfPeering" not in kinds(objects)
    assert "KopfPeering" not in kinds(objects)
    assert "PodDisruptionBudget" not in kinds(objects)
    env = env_of(controller_container(objects))
    assert env["SECRETS_AGENT_CONTROLLER_STANDALONE"] == "true"
    assert env["SECRETS_AGENT_CONTROLLER_NAMESPACES"] == "team-a,team-b"
    assert not any("kopf.dev" in rule["apiGroups"] for rule in rules_of(objects, "cluster"))


def test_pod_disruption_budget_selects_controller() -> None:
    objects = render_chart()
    budget = find(objects, "PodDisruptionBudget")
    labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize(
    ("controller", "message"),
    [
        (
            {"leaderElection": {"enabled": False}},
            "controller.replicas above 1 needs controller.leaderElection.enabled=true",
        ),
    ],
)
def test_unsafe_controller_settings_fail(controller: dict[str, Any], message: str) -> None:
    with helm_python.Chart.load(CHART) as chart:
        with pytest.raises(helm_python.HelmRenderError) as raised:
            chart.render({"controller": controller}, name="sa", namespace="secrets-agent")
    assert message in str(raised.value)


def test_disabled_controller_renders_nothing() -> None:
    assert render_chart(values={"controller": {"enabled": False}}) == []
    assert "installs the CRDs only" in render_notes({"controller": {"enabled": False}})


def test_notes_name_deployment() -> None:
    notes = render_notes()
    assert "rollout status deployment/sa-secrets-agent" in notes
    assert "serving the whole cluster" in notes


# --- RBAC ---------------------------------------------------------------------------------------


def test_rbac_has_no_wildcards() -> None:
    for item in render_chart(values=EVERYTHING_ON):
        for rule in item.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{item['metadata']['name']}: {rule}"


def test_secrets_only_in_namespaced_role() -> None:
    objects = render_chart()
    cluster_rules = rules_of(objects, "cluster")
    namespaced_rules = rules_of(objects, "namespaced")
    assert not any("secrets" in rule["resources"] for rule in cluster_rules)
    [secrets] = [rule for rule in namespaced_rules if "secrets" in rule["resources"]]
    assert secrets["resources"] == ["secrets"]
    assert secrets["verbs"] == ["get", "list", "watch", "create", "patch", "delete"]


def test_rbac_covers_controller_requests() -> None:
    # Every kind of request the controller and kopf send (agent/controller, kopf's watches,
    # finalizers, events, status) against the rule that allows it.
    rules = rules_of(render_chart(), "cluster") + rules_of(render_chart(), "namespaced")
    needed = [
        (GROUP, "externalsecrets", ("get", "list", "watch", "patch")),
        (GROUP, "externalsecrets/status", ("patch",)),
        (GROUP, "secretstores", ("list", "watch")),
        (GROUP, "secretstores/status", ("patch",)),
        (GROUP, "clustersecretstores", ("get", "list", "watch")),
        (GROUP, "clustersecretstores/status", ("patch",)),
        (GROUP, "vaultdynamicsecrets", ("get", "list", "watch")),
        (GROUP, "vaultdynamicsecrets/status", ("patch",)),
        ("", "secrets", ("get", "list", "watch", "create", "patch", "delete")),
        ("", "configmaps", ("get",)),
        ("", "namespaces", ("get",)),
        ("", "serviceaccounts/token", ("create",)),
        ("", "events", ("create",)),
        ("kopf.dev", "clusterkopfpeerings", ("list", "watch", "patch")),
        ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
    ]
    for group, resource, verbs in needed:
        for verb in verbs:
            assert allowed(rules, group, resource, verb), f"{verb} {group}/{resource}"


def test_rbac_grants_no_writes_beyond_need() -> None:
    rules = rules_of(render_chart(), "cluster") + rules_of(render_chart(), "namespaced")
    assert not allowed(rules, GROUP, "externalsecrets", "update")
    assert not allowed(rules, GROUP, "externalsecrets", "delete")
    assert not allowed(rules, GROUP, "secretstores", "patch")
    assert not allowed(rules, GROUP, "vaultdynamicsecrets", "patch")
    assert not allowed(rules, "", "secrets", "update")
    assert not allowed(rules, "", "configmaps", "list")
    assert not allowed(rules, "apiextensions.k8s.io", "customresourcedefinitions", "create")


def test_token_requests_can_be_turned_off() -> None:
    rules = rules_of(render_chart(values={"rbac": {"tokenRequest": False}}), "namespaced")
    assert not allowed(rules, "", "serviceaccounts/token", "create")


def test_cluster_wide_controller_binds_cluster_wide() -> None:
    objects = render_chart()
    binding = find(objects, "ClusterRoleBinding", "sa-secrets-agent-namespaced")
    assert binding["roleRef"]["name"] == "sa-secrets-agent-namespaced"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sa-secrets-agent", "namespace": "secrets-agent"}
    ]
    assert "RoleBinding" not in kinds(objects)


def test_namespaced_controller_binds_per_namespace() -> None:
    objects = render_chart(values=NAMESPACED)
    bindings = [item for item in objects if item["kind"] == "RoleBinding"]
    assert sorted(item["metadata"]["namespace"] for item in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "sa-secrets-agent-namespaced",
        }
    cluster_bindings = [item for item in objects if item["kind"] == "ClusterRoleBinding"]
    assert [item["metadata"]["name"] for item in cluster_bindings] == ["sa-secrets-agent-cluster"]


def test_rbac_subject_is_controller_account() -> None:
    objects = render_chart(values={"serviceAccount": {"create": False, "name": "platform-sa"}})
    assert "ServiceAccount" not in kinds(objects)
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-sa"
    for binding in (item for item in objects if item["kind"].endswith("RoleBinding")):
        assert binding["subjects"][0]["name"] == "platform-sa"


# --- metrics and network ------------------------------------------------------------------------


def test_service_monitor_scrapes_metrics_service() -> None:
    objects = render_chart(values=EVERYTHING_ON)
    monitor = find(objects, "ServiceMonitor")
    service = find(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert "ServiceMonitor" not in kinds(render_chart())


def test_network_policy_limits_traffic() -> None:
    objects = render_chart(values=EVERYTHING_ON)
    policy = find(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = policy["ingress"]
    assert ingress["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    assert ingress["from"] == [{"namespaceSelector": {}}]
    egress_ports = [port["port"] for rule in policy["egress"] for port in rule["ports"]]
    assert egress_ports == [53, 53, 443, 6443, 8200]
    assert "NetworkPolicy" not in kinds(render_chart())


# --- CRDs ---------------------------------------------------------------------------------------


def test_chart_crds_are_generated_ones() -> None:
    with helm_python.Chart.load(CHART) as chart:
        shipped = {crd["filename"].rsplit("/", 1)[-1]: crd["data"] for crd in chart.crds}
    assert shipped == render_crds()


def crd_schema(file_name: str) -> dict[str, Any]:
    document = yaml.safe_load(render_crds()[file_name])
    [version] = document["spec"]["versions"]
    assert version["name"] == VERSION
    return version["schema"]["openAPIV3Schema"]


EXTERNAL_SECRET = {
    "refreshInterval": "15m",
    "secretStoreRef": {"name": "aws-ssm", "kind": "SecretStore"},
    "target": {"name": "payment-secrets", "creationPolicy": "Owner"},
    "data": [{"secretKey": "db-password", "remoteRef": {"key": "/production/payment/db"}}],
    "dataFrom": [{"extract": {"key": "/production/payment/settings"}}],
}
STORE = {"provider": {"aws": {"service": "ParameterStore", "region": "eu-west-1"}}}


@pytest.mark.parametrize(
    ("file_name", "kind", "spec", "model"),
    [
        ("externalsecrets.yaml", "ExternalSecret", EXTERNAL_SECRET, ExternalSecretSpec),
        ("secretstores.yaml", "SecretStore", STORE, StoreSpec),
    ],
)
def test_crd_schema_accepts_model_valid_spec(
    file_name: str, kind: str, spec: dict[str, Any], model: type
) -> None:
    model.model_validate(spec)
    document = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {}, "spec": spec}
    jsonschema.validate(document, crd_schema(file_name))


@pytest.mark.parametrize(
    ("path", "wrong"),
    [
        (("refreshInterval",), 15),
        (("data",), {"secretKey": "x"}),
        (("secretStoreRef", "name"), ["aws-ssm"]),
    ],
)
def test_crd_schema_rejects_what_models_reject(path: tuple[str, ...], wrong: Any) -> None:
    import pydantic

    spec = yaml.safe_load(yaml.safe_dump(EXTERNAL_SECRET))
    parent = spec
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = wrong
    with pytest.raises(pydantic.ValidationError):
        ExternalSecretSpec.model_validate(spec)
    document = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ExternalSecret", "spec": spec}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, crd_schema("externalsecrets.yaml"))


def test_crd_properties_follow_model_fields() -> None:
    spec = crd_schema("externalsecrets.yaml")["properties"]["spec"]["properties"]
    aliases = {field.alias or name for name, field in ExternalSecretSpec.model_fields.items()}
    assert set(spec) == aliases
    assert re.fullmatch(r"v\d+(alpha|beta)?\d*", VERSION)
