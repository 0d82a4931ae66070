"""Log levels: third-party loggers stay at warning whatever --log-level is, so that watchdog's
file events and the AWS libraries' request bodies never become agent log lines. The records that
pass become one `library_log` line each, without a traceback."""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Agent, add_target, free_port, wait_for, write_declarations

from agent.logs import THIRD_PARTY_LOGGERS, configure_logging

# Every line of the text format: a timestamp, a level and an event name made of word characters.
LOG_LINE = re.compile(r"\S+Z level=(debug|info|warning|error|critical) event=[a-z_]+( |$)")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("library", ["watchdog.observers.inotify_buffer", "botocore.endpoint"])
def test_libraries_stay_at_warning(library: str) -> None:
    configure_logging(level="debug")
    logger = logging.getLogger(library)
    assert not logger.isEnabledFor(logging.INFO)
    assert logger.isEnabledFor(logging.WARNING)
    assert logging.getLogger("agent.reload").isEnabledFor(logging.DEBUG)


@pytest.mark.usefixtures("restore_logging")
def test_libraries_follow_higher_level() -> None:
    configure_logging(level="error")
    assert not logging.getLogger("watchdog").isEnabledFor(logging.WARNING)
    assert logging.getLogger("watchdog").isEnabledFor(logging.ERROR)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_library_record_one_line(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", log_format=log_format)
    try:
        Path("/nonexistent/fake-token").read_text()
    except FileNotFoundError:
        logging.getLogger("botocore.credentials").warning("Refreshing failed.", exc_info=True)

    [line] = capsys.readouterr().err.splitlines()
    assert "Traceback" not in line
    if log_format == "text":
        assert LOG_LINE.match(line)
        assert "event=library_log logger=botocore.credentials" in line
        assert line.endswith('message="Refreshing failed." exception=FileNotFoundError')
    else:
        document = json.loads(line)
        assert document["event"] == "library_log"
        assert document["logger"] == "botocore.credentials"
        assert document["message"] == "Refreshing failed."
        assert document["exception"] == "FileNotFoundError"


def test_debug_run_logs_only_agent_events(vault, tmp_path: Path) -> None:
    vault.kv_put("secret", "a", {"password": "fake-a-password-1"})
    vault.kv_put("secret", "b", {"password": "fake-b-password-1"})
    config = write_declarations(tmp_path, vault_url=vault.url, targets=("a",))
    # A log file next to the declarations, in a directory the reloader watches.
    log = config / "agent.log"
    agent = Agent(
        tmp_path,
        "run",
        f"--config={config}",
        f"--output-dir={tmp_path / 'out'}",
        f"--refs-dir={tmp_path / 'refs'}",
        f"--listen=127.0.0.1:{free_port()}",
        "--log-level=debug",
    )
    try:
        assert wait_for(lambda: (tmp_path / "out/a/password").exists()), agent.stderr
        for line in range(20):
            with log.open("a") as stream:
                stream.write(f"line {line}\n")
        add_target(config, "b")
        assert wait_for(lambda: (tmp_path / "out/b/password").exists()), agent.stderr
    finally:
        agent.process.send_signal(signal.SIGTERM)
        code = agent.wait()
    assert code == 0, agent.stderr
    for line in agent.lines:
        assert LOG_LINE.match(line), f"not an agent event: {line!r}"
    assert "in-event" not in agent.stderr
    assert agent.stderr.count("event=declarations_reloaded") == 1
