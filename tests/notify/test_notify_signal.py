"""Signal notify targets with real processes: by name, by pid file, and the pids never signalled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from notify_helpers import start_recorder, wait_for

from agent.models import NotifySignal
from agent.notify_kinds import ChangedNames, SignalAction, find_processes, signal_refusal

NAMES = ChangedNames({"app": ("password",)})


@pytest.fixture
def recorders(tmp_path: Path):
    started = []

    def start(**options):
        recorder = start_recorder(tmp_path, **options)
        started.append(recorder)
        return recorder

    yield start
    for recorder in started:
        recorder.stop()


@pytest.mark.parametrize("pid", [1, 0, -1, -2])
def test_guard_rejects_pid_one_and_groups(pid: int):
    assert signal_refusal(pid) is not None


def test_guard_rejects_the_agent_itself():
    assert signal_refusal(os.getpid()) == "is the agent itself"


def test_guard_allows_other_processes():
    assert signal_refusal(os.getpid() + 1) is None


def fake_process(proc: Path, pid: int, *, name: str, parent: int, argv0: str = "") -> None:
    """Write the three /proc files that find_processes reads, for a made-up process."""
    entry = proc / str(pid)
    entry.mkdir()
    (entry / "comm").write_text(name + "\n")
    (entry / "cmdline").write_bytes((argv0 or name).encode() + b"\x00--flag\x00")
    (entry / "stat").write_text(f"{pid} ({name}) S {parent} {pid} {pid} 0 -1")


def test_find_processes_skips_pid_one(tmp_path: Path):
    proc = tmp_path / "proc"
    proc.mkdir()
    fake_process(proc, 1, name="nginx", parent=0)
    fake_process(proc, 40, name="nginx", parent=1)
    assert find_processes("nginx", proc=proc) == [40]


def test_find_processes_keeps_only_tree_tops(tmp_path: Path):
    proc = tmp_path / "proc"
    proc.mkdir()
    fake_process(proc, 1, name="pause", parent=0)
    fake_process(proc, 7, name="nginx", parent=1, argv0="/usr/sbin/nginx")
    fake_process(proc, 8, name="nginx", parent=7)
    fake_process(proc, 9, name="nginx", parent=7)
    fake_process(proc, 12, name="sh", parent=1)
    assert find_processes("nginx", proc=proc) == [7]


def test_find_processes_matches_argv0_basename(tmp_path: Path):
    proc = tmp_path / "proc"
    proc.mkdir()
    # The kernel cuts comm to 15 bytes; the program path still has the whole name.
    fake_process(proc, 30, name="payment-service", parent=1, argv0="/app/payment-service-v2")
    assert find_processes("payment-service-v2", proc=proc) == [30]


def test_find_processes_skips_zombies_and_kernel_threads(tmp_path: Path):
    proc = tmp_path / "proc"
    proc.mkdir()
    fake_process(proc, 50, name="app", parent=1)
    (proc / "50" / "stat").write_text("50 (app) Z 1 50 50 0 -1")
    kernel_thread = proc / "51"
    kernel_thread.mkdir()
    (kernel_thread / "comm").write_text("app\n")
    (kernel_thread / "cmdline").write_bytes(b"")
    (kernel_thread / "stat").write_text("51 (app) S 2 0 0 0 -1")
    assert find_processes("app", proc=proc) == []


def test_signal_by_name_reaches_process(recorders):
    recorder = recorders()
    attempt = SignalAction(NotifySignal(process_name=recorder.name)).deliver(NAMES)
    assert attempt.result == "success", attempt.error
    assert attempt.fields["pid"] == recorder.process.pid
    assert wait_for(recorder.signals) == [f"{recorder.process.pid} SIGHUP"]


def test_signal_by_name_skips_workers(recorders):
    recorder = recorders(workers=2)
    attempt = SignalAction(NotifySignal(process_name=recorder.name, signal="USR1")).deliver(NAMES)
    assert attempt.result == "success", attempt.error
    assert wait_for(recorder.signals) == [f"{recorder.process.pid} SIGUSR1"]
    workers = recorder.worker_pids()
    assert len(workers) == 2
    assert not any(line.startswith(str(pid)) for pid in workers for line in recorder.signals())


def test_signal_by_ambiguous_name_sends_nothing(recorders):
    first = recorders()
    second = recorders(name=first.name)
    attempt = SignalAction(NotifySignal(process_name=first.name)).deliver(NAMES)
    assert attempt.result == "error"
    assert not attempt.retryable
    assert "2 unrelated processes" in attempt.error
    assert "pidFile" in attempt.error
    assert first.signals() == []
    assert second.signals() == []


def test_signal_missing_process_is_no_process():
    attempt = SignalAction(NotifySignal(process_name="sa-not-running")).deliver(NAMES)
    assert attempt.result == "no_process"


def test_signal_by_pid_file(recorders):
    recorder = recorders()
    action = SignalAction(NotifySignal(pid_file=str(recorder.pid_file), signal="SIGUSR1"))
    attempt = action.deliver(NAMES)
    assert attempt.result == "success", attempt.error
    assert wait_for(recorder.signals) == [f"{recorder.process.pid} SIGUSR1"]


def test_signal_missing_pid_file_is_no_process(tmp_path: Path):
    action = SignalAction(NotifySignal(pid_file=str(tmp_path / "absent.pid")))
    assert action.deliver(NAMES).result == "no_process"


def test_signal_exited_process_is_no_process(recorders):
    recorder = recorders()
    recorder.stop()
    action = SignalAction(NotifySignal(pid_file=str(recorder.pid_file)))
    assert action.deliver(NAMES).result == "no_process"


@pytest.mark.parametrize("content", ["1", "0", "-1", "abc", "", "12 13"])
def test_pid_file_never_addresses_pid_one_or_groups(tmp_path: Path, content: str):
    pid_file = tmp_path / "app.pid"
    pid_file.write_text(content + "\n")
    attempt = SignalAction(NotifySignal(pid_file=str(pid_file))).deliver(NAMES)
    assert attempt.result == "error"
    assert not attempt.retryable


def test_pid_file_naming_the_agent_is_rejected(tmp_path: Path):
    pid_file = tmp_path / "app.pid"
    pid_file.write_text(str(os.getpid()))
    attempt = SignalAction(NotifySignal(pid_file=str(pid_file))).deliver(NAMES)
    assert attempt.result == "error"
    assert "the agent itself" in attempt.error
