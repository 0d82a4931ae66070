"""The supervisor in process, with a real sync loop and a real program: restart backoff."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from exec_helpers import events, program_argv, wait_for, write_config

from agent.declarations import load_declarations
from agent.metrics import Metrics
from agent.settings import load_settings
from agent.supervisor import Supervisor, exit_status
from agent.sync import Syncer
from agent.writer import Writer


def make_syncer(tmp_path: Path, config: Path) -> Syncer:
    settings = load_settings(
        config=[str(config)], output_dir=str(tmp_path / "out"), refs_dir=str(tmp_path / "refs")
    )
    return Syncer(
        load_declarations(settings.config),
        settings=settings,
        writer=Writer(settings.output_dir),
        metrics=Metrics(),
    )


def test_restart_backoff_grows(vault, tmp_path: Path, caplog):
    """A secret that changes every 100 ms restarts the program at doubling intervals."""
    vault.kv_put("secret", "app", {"password": "fake-db-password-0"})
    syncer = make_syncer(tmp_path, write_config(tmp_path, vault_url=vault.url, interval="1h"))
    argv, log = program_argv(tmp_path)
    supervisor = Supervisor(
        argv, on_change="restart", delay=0.05, restart_min=0.2, restart_max=10, stop_timeout=5
    )
    exited = threading.Event()
    supervisor.attach(syncer, on_exit=exited.set)
    loop = threading.Thread(target=syncer.run_forever, name="sync", daemon=True)
    loop.start()
    flapping = threading.Event()

    def flap() -> None:
        version = 0
        while not flapping.is_set():
            version += 1
            vault.kv_put("secret", "app", {"password": f"fake-db-password-{version}"})
            # Refresh at once instead of at the refreshInterval.
            with syncer.lock:
                syncer.states["app"].next_due = 0.0
            syncer.wake()
            time.sleep(0.1)

    caplog.set_level(logging.INFO, logger="agent.supervisor")
    try:
        assert wait_for(lambda: events(log)), "the program did not start"
        changer = threading.Thread(target=flap, daemon=True)
        flap_started = time.monotonic()
        changer.start()
        time.sleep(3.4)
        # On a busy machine the first restarts come late: flap until three starts were seen.
        wait_for(lambda: len(started_pids(log)) >= 3, seconds=15)
        flapping.set()
        changer.join()
        flap_seconds = time.monotonic() - flap_started
    finally:
        syncer.request_stop()
        supervisor.request_stop(signal.SIGTERM)
        status = supervisor.wait()
        loop.join(timeout=10)
        syncer.stores.close()

    starts = started_pids(log)
    # When the supervisor started each program; the programs' own clocks add their start-up time.
    times = [record.created for record in caplog.records if record.getMessage() == "exec_started"]
    assert len(times) == len(starts)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # A change every 0.1 s; gaps of at least 0.2, 0.4, 0.8, 1.6 s ... bound the starts that fit
    # in the flapping time (5 in 3.4 s), plus the one that may follow the last change.
    allowed, elapsed = 1, 0.0
    while elapsed + 0.2 * 2 ** (allowed - 1) <= flap_seconds + 0.5:
        elapsed += 0.2 * 2 ** (allowed - 1)
        allowed += 1
    assert 3 <= len(starts) <= allowed, f"{len(starts)} starts in {flap_seconds:.1f} s: {gaps}"
    for number, gap in enumerate(gaps):
        assert gap >= 0.2 * 2**number, f"restart {number + 1} came too early: {gaps}"
    assert status == 7
    assert not exited.is_set(), "restarts are not exits"
    restarts = syncer.metrics.registry.get_sample_value("secrets_agent_exec_restarts_total")
    assert restarts == len(starts) - 1


def started_pids(log: Path) -> list[int]:
    return [pid for pid, event in events(log) if event.startswith("started")]


def test_exit_status_of_signals():
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGTERM) == 143
    assert exit_status(-signal.SIGKILL) == 137


def test_stop_before_start_returns_zero(vault, tmp_path: Path):
    syncer = make_syncer(tmp_path, write_config(tmp_path, vault_url=vault.url))
    argv, log = program_argv(tmp_path)
    supervisor = Supervisor(argv)
    supervisor.attach(syncer, on_exit=lambda: None)  # the sync loop never runs: never ready
    supervisor.request_stop(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert events(log) == []
