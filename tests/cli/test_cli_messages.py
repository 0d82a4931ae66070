"""Messages of the `secrets-agent` command for mistakes a first-time user makes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import STORE, Agent, write_declarations

EMPTY_MESSAGE = "no ExternalSecret is declared in"


@pytest.mark.parametrize("content", ["", "---\n", STORE.format(url="http://127.0.0.1:9")])
def test_check_rejects_no_external_secret(tmp_path: Path, content: str) -> None:
    config = tmp_path / "declarations.yaml"
    config.write_text(content)
    agent = Agent(tmp_path, "check", f"--config={config}")
    assert agent.wait() == 2, agent.stderr
    assert EMPTY_MESSAGE in agent.stderr
    assert "ok:" not in agent.stderr


def test_check_and_once_agree_on_empty(tmp_path: Path) -> None:
    config = tmp_path / "declarations.yaml"
    config.write_text(STORE.format(url="http://127.0.0.1:9"))
    (tmp_path / "out").mkdir()
    check = Agent(tmp_path, "check", f"--config={config}")
    once = Agent(tmp_path, "once", f"--config={config}", f"--output-dir={tmp_path / 'out'}")
    assert check.wait() == once.wait() == 2
    assert check.stderr == once.stderr


def test_unknown_flag_shows_command_usage(tmp_path: Path) -> None:
    agent = Agent(tmp_path, "once", "--bogus-flag")
    assert agent.wait() == 2
    assert agent.stderr.startswith("usage: secrets-agent once ")
    assert "secrets-agent once: error: unrecognized arguments: --bogus-flag" in agent.stderr


def test_output_dir_is_a_file(vault, tmp_path: Path) -> None:
    config = write_declarations(tmp_path, vault_url=vault.url, targets=("a",))
    regular = tmp_path / "regular-file"
    regular.write_text("")
    agent = Agent(tmp_path, "once", f"--config={config}", f"--output-dir={regular}")
    assert agent.wait() == 2
    assert f"output directory {regular} is not a directory;" in agent.stderr
    assert "does not exist" not in agent.stderr


def test_once_gave_up_message(vault, tmp_path: Path) -> None:
    # A sealed Vault is a transient error, and its fix text promises a retry.
    vault.seal()
    config = write_declarations(tmp_path, vault_url=vault.url, targets=("a",))
    agent = Agent(
        tmp_path,
        "once",
        f"--config={config}",
        f"--output-dir={tmp_path / 'out'}",
        f"--refs-dir={tmp_path / 'refs'}",
        "--timeout=2",
    )
    assert agent.wait(timeout=30) == 1
    [final] = [line for line in agent.lines if line.startswith("secrets-agent: target a")]
    assert "is sealed; unseal Vault" in final
    assert "the agent retries" not in final
    assert final.rstrip().endswith(
        "once gave up after retrying for up to 2 s (--timeout) and exits"
    )
    # The log lines written while retries went on keep the promise.
    assert "is sealed; unseal Vault; the agent retries" in agent.stderr
