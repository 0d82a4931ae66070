"""Command notify targets: names (never values) in the environment, timeout, output, failures."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from notify_helpers import (
    make_syncer,
    notify_target,
    refresh_now,
    running,
    wait_for,
    write_config,
)

from agent.models import NotifyCommand
from agent.notify import Notifier
from agent.notify_kinds import (
    CHANGED_KEYS_VARIABLE,
    CHANGED_TARGETS_VARIABLE,
    CHANGES_VARIABLE,
    NOTIFY_TARGET_VARIABLE,
    ChangedNames,
    CommandAction,
)
from agent.refs import Refs
from agent.sync import Change

FAKE_VALUES = ("fake-db-password-1", "fake-db-password-2", "fake-api-key-1")
NAMES = ChangedNames({"app": ("password",)})

# Appends the environment it sees, as one JSON line, to the file named by its first argument.
DUMP_ENVIRONMENT = (
    "import json, os, sys; open(sys.argv[1], 'a').write(json.dumps(dict(os.environ)) + '\\n')"
)


def runs(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def dump_spec(path: Path) -> str:
    argv = json.dumps([sys.executable, "-c", DUMP_ENVIRONMENT, str(path)])
    return f"  command:\n    argv: {argv}\n    timeoutSeconds: 20\n"


def test_command_sees_names_not_values(vault, tmp_path: Path):
    vault.kv_put("secret", "app", {"password": "fake-db-password-1", "api-key": "fake-api-key-1"})
    dump = tmp_path / "environment.jsonl"
    config = write_config(
        tmp_path, vault_url=vault.url, notify_targets=notify_target("dump", dump_spec(dump))
    )
    syncer = make_syncer(tmp_path, config)
    notifier = Notifier(refs=Refs(tmp_path / "refs"), metrics=syncer.metrics, delay=0.2)
    notifier.attach(syncer)
    password = tmp_path / "out" / "app" / "password"
    try:
        with running(syncer):
            assert wait_for(password.exists), "the first write did not happen"
            vault.kv_put(
                "secret", "app", {"password": "fake-db-password-2", "api-key": "fake-api-key-1"}
            )
            refresh_now(syncer)
            assert wait_for(lambda: runs(dump), seconds=10), "the command did not run"
    finally:
        notifier.close()

    assert password.read_bytes() == b"fake-db-password-2"
    text = dump.read_text()
    for value in FAKE_VALUES:
        assert value not in text, "a secret value reached the command's environment"
    [environment] = runs(dump)
    assert environment[NOTIFY_TARGET_VARIABLE] == "dump"
    assert environment[CHANGED_TARGETS_VARIABLE] == "app"
    assert environment[CHANGED_KEYS_VARIABLE] == "app/password"
    assert json.loads(environment[CHANGES_VARIABLE]) == {"app": ["password"]}
    assert "PATH" in environment, "the command inherits the agent's environment"


def test_command_timeout_kills_process_group(tmp_path: Path):
    background = tmp_path / "background.pid"
    script = f"sleep 30 & echo $! > {background}; wait"
    action = CommandAction(
        NotifyCommand(argv=["sh", "-c", script], timeout_seconds=0.5), notify_target="slow"
    )
    attempt = action.deliver(NAMES)
    assert attempt.result == "error"
    assert attempt.error == "timed out after 0.5 s"
    pid = background.read_text().strip()
    assert wait_for(lambda: _gone(pid), seconds=5), "the command's background process survived"


def _gone(pid: str) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rpartition(")")[2].split()[0] == "Z"


def test_command_output_passes_through(capfd: pytest.CaptureFixture[str]):
    script = "import sys; print('fake-db-password-1'); print('to-stderr', file=sys.stderr)"
    action = CommandAction(
        NotifyCommand(argv=[sys.executable, "-c", script + "; raise SystemExit(3)"]),
        notify_target="chatty",
    )
    attempt = action.deliver(NAMES)
    captured = capfd.readouterr()
    assert attempt.result == "error"
    assert attempt.error == "exited with status 3"
    assert attempt.fields["exit_code"] == 3
    assert "output" not in attempt.fields
    assert "fake-db-password-1" in captured.out, "stdout did not reach the agent's stdout"
    assert "to-stderr" in captured.err, "stderr did not reach the agent's stderr"


def test_command_not_found_is_not_retried():
    action = CommandAction(NotifyCommand(argv=["/nonexistent/reload"]), notify_target="missing")
    attempt = action.deliver(NAMES)
    assert attempt.result == "error"
    assert not attempt.retryable
    assert "/nonexistent/reload" in attempt.error
    assert "spec.command.argv" in attempt.error


def test_command_success(tmp_path: Path):
    dump = tmp_path / "environment.jsonl"
    action = CommandAction(
        NotifyCommand(argv=[sys.executable, "-c", DUMP_ENVIRONMENT, str(dump)]),
        notify_target="dump",
    )
    names = ChangedNames({"b": ("k1", "k,2"), "a": ("x",)})
    attempt = action.deliver(names)
    assert attempt.result == "success", attempt.error
    assert attempt.fields["exit_code"] == 0
    [environment] = runs(dump)
    assert environment[CHANGED_TARGETS_VARIABLE] == "a,b"
    assert environment[CHANGED_KEYS_VARIABLE] == "a/x,b/k,2,b/k1"
    # The JSON form stays exact when a secret key contains a comma.
    assert json.loads(environment[CHANGES_VARIABLE]) == {"a": ["x"], "b": ["k,2", "k1"]}


def test_command_failure_logs_no_output(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    script = "print('fake-db-password-1'); raise SystemExit(4)"
    config = write_config(
        tmp_path,
        vault_url="http://127.0.0.1:9",
        notify_targets=notify_target(
            "fails",
            f"  command:\n    argv: {json.dumps([sys.executable, '-c', script])}\n    retries: 1\n",
        ),
    )
    syncer = make_syncer(tmp_path, config)
    notifier = Notifier(
        refs=Refs(tmp_path / "refs"),
        metrics=syncer.metrics,
        delay=0.0,
        retry_delay=lambda failures: 0.05,
    )
    notifier.attach(syncer)

    with caplog.at_level(logging.DEBUG):
        notifier.notify([Change("app", changed=("password",))])
        assert wait_for(lambda: _events(caplog, "notify_failed"), seconds=10)
    notifier.close()
    [retrying] = _events(caplog, "notify_retrying")
    [failed] = _events(caplog, "notify_failed")
    fields = failed.event_fields  # type: ignore[attr-defined]
    assert fields["notify_target"] == "fails"
    assert fields["exit_code"] == 4
    assert fields["attempt"] == 2
    assert fields["error"] == "exited with status 4"
    assert isinstance(fields["duration_ms"], int)
    assert "output" not in fields
    assert "output" not in retrying.event_fields  # type: ignore[attr-defined]
    for record in caplog.records:
        line = f"{record.getMessage()} {getattr(record, 'event_fields', '')}"
        assert "fake-db-password-1" not in line, f"a log line holds the output: {record.msg}"


PRINT_VALUE = "print('fake-api-key-1')"


def test_command_success_logs_no_output(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    config = write_config(
        tmp_path,
        vault_url="http://127.0.0.1:9",
        notify_targets=notify_target(
            "greets",
            f"  command:\n    argv: {json.dumps([sys.executable, '-c', PRINT_VALUE])}\n",
        ),
    )
    syncer = make_syncer(tmp_path, config)
    notifier = Notifier(refs=Refs(tmp_path / "refs"), metrics=syncer.metrics, delay=0.0)
    notifier.attach(syncer)
    with caplog.at_level(logging.DEBUG):
        notifier.notify([Change("app", changed=("password",))])
        assert wait_for(lambda: _events(caplog, "notify_sent"), seconds=10)
    notifier.close()
    [sent] = _events(caplog, "notify_sent")
    assert sent.levelno == logging.INFO
    assert sent.event_fields["exit_code"] == 0  # type: ignore[attr-defined]
    assert "output" not in sent.event_fields  # type: ignore[attr-defined]
    for record in caplog.records:
        assert "fake-api-key-1" not in f"{getattr(record, 'event_fields', '')}", record.getMessage()


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == event]


# Runs a command that prints without a final newline, then logs an agent event, in one process
# whose stdout and stderr the test reads, as a container runtime would.
NO_NEWLINE_AGENT = """
import logging, sys
from agent.logs import configure_logging, log_event
from agent.models import NotifyCommand
from agent.notify_kinds import ChangedNames, CommandAction
configure_logging(level="info", log_format="json")
script = "import sys; sys.stdout.write('fake-out-1'); sys.stderr.write('fake-err-1')"
action = CommandAction(
    NotifyCommand(argv=[sys.executable, "-c", script]), notify_target="no-newline"
)
action.deliver(ChangedNames({"app": ("password",)}))
log_event(logging.getLogger("agent.notify"), logging.WARNING, "notify_retrying")
print("agent-stdout-line")
"""


def test_command_output_without_newline_keeps_lines():
    finished = subprocess.run(
        [sys.executable, "-c", NO_NEWLINE_AGENT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    err_lines = finished.stderr.splitlines()
    out_lines = finished.stdout.splitlines()
    assert "fake-err-1" in err_lines, finished.stderr
    assert "fake-out-1" in out_lines, finished.stdout
    assert "agent-stdout-line" in out_lines, finished.stdout
    records = [line for line in err_lines if line != "fake-err-1"]
    assert records, finished.stderr
    for line in records:
        assert json.loads(line)["event"] == "notify_retrying", line
