"""`secrets-agent check` on manifests migrated from External Secrets Operator.

A ClusterSecretStore's `spec.conditions` is enforced by the controller and meaningless in a pod,
so `check` without `--controller` rejects it and `check --controller` accepts it. These tests run
the command in a subprocess, as a user following docs/migrating-from-eso.md would.
"""

from __future__ import annotations

from pathlib import Path

from cli_helpers import Agent

CLUSTER_STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ClusterSecretStore
metadata: {name: aws-ssm}
spec:
  provider:
    aws: {service: ParameterStore, region: us-east-1}
  conditions:
    - namespaces: [payment]
"""

EXTERNAL_SECRET = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {name: payment-db, namespace: payment}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: aws-ssm, kind: ClusterSecretStore}
  data:
    - secretKey: password
      remoteRef: {key: /payment/db-password}
"""


def write(tmp_path: Path, *documents: str) -> Path:
    path = tmp_path / "manifests.yaml"
    path.write_text("---\n".join(documents))
    return path


def check(tmp_path: Path, path: Path, *flags: str) -> tuple[int, str, str]:
    agent = Agent(tmp_path, "check", *flags, f"--config={path}")
    code = agent.wait()
    stdout = agent.process.stdout.read() if agent.process.stdout else ""
    return code, stdout, agent.stderr


def test_agent_check_rejects_conditions(tmp_path: Path) -> None:
    code, stdout, stderr = check(tmp_path, write(tmp_path, CLUSTER_STORE, EXTERNAL_SECRET))

    assert code == 2, stderr
    assert "spec.conditions" in stderr
    assert "not supported by the agent in a pod" in stderr
    assert "check --controller" in stderr
    assert "ok:" not in stdout


def test_controller_check_accepts_conditions(tmp_path: Path) -> None:
    path = write(tmp_path, CLUSTER_STORE, EXTERNAL_SECRET)

    code, stdout, stderr = check(tmp_path, path, "--controller")

    assert code == 0, stderr
    assert stdout.startswith("ok:")
    assert "1 store(s)" in stdout
    assert "1 ExternalSecret(s)" in stdout


def test_controller_check_validates_conditions(tmp_path: Path) -> None:
    store = CLUSTER_STORE.replace("- namespaces: [payment]", "- namespaceRegexes: ['(']")

    code, _, stderr = check(tmp_path, write(tmp_path, store), "--controller")

    assert code == 2
    assert "spec.conditions[0].namespaceRegexes[0]" in stderr


def test_controller_check_needs_own_api_version(tmp_path: Path) -> None:
    eso = EXTERNAL_SECRET.replace("secrets-agent.io/v1alpha1", "external-secrets.io/v1beta1")

    code, _, stderr = check(tmp_path, write(tmp_path, eso), "--controller")

    assert code == 2
    assert "apiVersion" in stderr
    assert "use secrets-agent.io/v1alpha1" in stderr


def test_controller_check_rejects_notify_target(tmp_path: Path) -> None:
    notify = (
        "apiVersion: secrets-agent.io/v1alpha1\nkind: NotifyTarget\nmetadata: {name: app}\n"
        "spec:\n  signal: {process: java}\n"
    )

    code, _, stderr = check(tmp_path, write(tmp_path, notify), "--controller")

    assert code == 2
    assert "NotifyTarget" in stderr
    assert "the controller" in stderr


def test_controller_check_rejects_slash_key(tmp_path: Path) -> None:
    nested = EXTERNAL_SECRET.replace("secretKey: password", "secretKey: db/password")
    store = CLUSTER_STORE.replace("  conditions:\n    - namespaces: [payment]\n", "")
    path = write(tmp_path, store, nested)

    agent_code, _, agent_stderr = check(tmp_path, path, "--nested-keys")
    code, _, stderr = check(tmp_path, path, "--controller")

    assert agent_code == 0, agent_stderr
    assert code == 2
    assert "cannot contain '/'" in stderr


def test_controller_check_reports_templates(tmp_path: Path) -> None:
    templated = EXTERNAL_SECRET + (
        "  target:\n    template:\n      data:\n        url: 'db://{{ .password }}'\n"
    )

    code, _, stderr = check(tmp_path, write(tmp_path, templated), "--controller")

    assert code == 2
    assert "spec.target.template.data.url" in stderr
    assert "{{ password }}" in stderr


def test_controller_check_reports_each_document(tmp_path: Path) -> None:
    broken = EXTERNAL_SECRET.replace("refreshInterval: 1h", "refreshInterval: soon")
    path = write(tmp_path, CLUSTER_STORE, broken)

    code, _, stderr = check(tmp_path, path, "--controller")

    assert code == 2
    assert "document 2" in stderr
    assert "spec.refreshInterval" in stderr
    assert "document 1" not in stderr


def test_controller_check_store_only(tmp_path: Path) -> None:
    code, stdout, stderr = check(tmp_path, write(tmp_path, CLUSTER_STORE), "--controller")

    assert code == 0, stderr
    assert "0 ExternalSecret(s)" in stdout


def test_controller_check_empty_file(tmp_path: Path) -> None:
    code, _, stderr = check(tmp_path, write(tmp_path, ""), "--controller")

    assert code == 2
    assert "no SecretStore, ClusterSecretStore, ExternalSecret or VaultDynamicSecret" in stderr


def test_check_help_lists_controller(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "check", "--help")

    assert agent.wait() == 0
    help_text = agent.process.stdout.read() if agent.process.stdout else ""
    assert "--controller" in help_text
