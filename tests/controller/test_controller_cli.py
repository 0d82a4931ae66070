"""The `controller` and `crds` commands, and that the agent's own commands never import kopf."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.cli import main
from agent.controller.crds import render_crds

DECLARATION = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {name: aws-ssm}
spec:
  provider:
    aws: {service: ParameterStore, region: us-east-1}
---
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {name: app}
spec:
  secretStoreRef: {name: aws-ssm}
  data:
    - {secretKey: a, remoteRef: {key: /app/a}}
"""


def test_agent_commands_do_not_import_kopf(tmp_path: Path) -> None:
    config = tmp_path / "declarations.yaml"
    config.write_text(DECLARATION)
    code = (
        "import sys\n"
        "from agent.cli import main\n"
        f"code = main(['check', '--config', {str(config)!r}])\n"
        "assert code == 0, code\n"
        "loaded = sorted(n for n in ('kopf', 'aiohttp', 'kmock') if n in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_crds_command_writes_generated_files(tmp_path: Path) -> None:
    assert main(["crds", "--output", str(tmp_path)]) == 0
    written = {path.name: path.read_text() for path in tmp_path.iterdir()}
    assert written == render_crds()


def test_controller_rejects_invalid_settings(capsys) -> None:
    assert main(["controller", "--listen", "no-port"]) == 2
    assert "--listen (SECRETS_AGENT_CONTROLLER_LISTEN)" in capsys.readouterr().err
