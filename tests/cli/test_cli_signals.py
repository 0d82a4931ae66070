"""Signals sent to `secrets-agent run` and `once` running as real processes.

run: SIGHUP reloads the declarations, SIGUSR1 and SIGUSR2 are logged and ignored, SIGTERM stops.
once: SIGTERM, SIGINT and SIGHUP stop it with a log line and exit 128 + the signal number, even
while it waits for a store that never responds.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import (
    Agent,
    SilentServer,
    add_hanging_ssm_store,
    add_target,
    free_port,
    wait_for,
    write_declarations,
)


@pytest.fixture
def silent_store() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def start_run(tmp_path: Path, config: Path, *flags: str) -> Agent:
    return Agent(
        tmp_path,
        "run",
        f"--config={config}",
        f"--output-dir={tmp_path / 'out'}",
        f"--refs-dir={tmp_path / 'refs'}",
        f"--listen=127.0.0.1:{free_port()}",
        *flags,
    )


def test_run_reloads_on_sighup(vault, tmp_path: Path) -> None:
    vault.kv_put("secret", "a", {"password": "fake-a-password-1"})
    vault.kv_put("secret", "b", {"password": "fake-b-password-1"})
    config = write_declarations(tmp_path, vault_url=vault.url, targets=("a",))
    # Without file watching, only the signal can make the agent see the new file.
    agent = start_run(tmp_path, config, "--no-watch-config")
    try:
        assert wait_for(lambda: (tmp_path / "out/a/password").exists()), agent.stderr
        add_target(config, "b")
        agent.process.send_signal(signal.SIGHUP)

        assert wait_for(lambda: (tmp_path / "out/b/password").exists()), agent.stderr
        assert agent.process.poll() is None
        agent.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: agent.logged("event=declarations_unchanged")), agent.stderr
    finally:
        agent.process.send_signal(signal.SIGTERM)
        code = agent.wait()
    assert code == 0, agent.stderr
    assert "level=info event=reload_requested signal=SIGHUP" in agent.stderr
    assert "event=declarations_reloaded" in agent.stderr
    assert "level=info event=declarations_unchanged" in agent.stderr
    assert "event=agent_stopped" in agent.stderr
    assert "fake-" not in agent.stderr


@pytest.mark.parametrize("number", [signal.SIGUSR1, signal.SIGUSR2])
def test_run_ignores_sigusr(vault, tmp_path: Path, number: signal.Signals) -> None:
    vault.kv_put("secret", "a", {"password": "fake-a-password-1"})
    config = write_declarations(tmp_path, vault_url=vault.url, targets=("a",))
    agent = start_run(tmp_path, config)
    try:
        assert wait_for(lambda: agent.logged("event=agent_started")), agent.stderr
        agent.process.send_signal(number)
        assert wait_for(lambda: agent.logged("event=signal_ignored")), agent.stderr
        assert agent.process.poll() is None, "the signal ended the agent"
    finally:
        agent.process.send_signal(signal.SIGTERM)
        code = agent.wait()
    assert code == 0, agent.stderr
    assert f"event=signal_ignored signal={number.name}" in agent.stderr
    assert "event=agent_stopping signal=SIGTERM" in agent.stderr
    assert "event=agent_stopped" in agent.stderr


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_once_stops_cleanly_on_signal(
    silent_store: SilentServer, tmp_path: Path, number: signal.Signals
) -> None:
    config = write_declarations(tmp_path, vault_url=silent_store.url, targets=("a",))
    agent = Agent(
        tmp_path,
        "once",
        f"--config={config}",
        f"--output-dir={tmp_path / 'out'}",
        f"--refs-dir={tmp_path / 'refs'}",
        "--timeout=60",
    )
    try:
        # The agent is waiting for the store's response once the store has a connection.
        assert wait_for(lambda: silent_store.connections >= 1), agent.stderr
        agent.process.send_signal(number)
        code = agent.wait(timeout=15)
    finally:
        agent.kill()
    assert code == 128 + number, agent.stderr
    assert "Traceback" not in agent.stderr
    assert "KeyboardInterrupt" not in agent.stderr
    expected = f"level=warning event=once_interrupted signal={number.name} exit_code={128 + number}"
    assert expected in agent.stderr


def test_once_ignores_sigusr1(silent_store: SilentServer, tmp_path: Path) -> None:
    config = write_declarations(tmp_path, vault_url=silent_store.url, targets=("a",))
    agent = Agent(
        tmp_path,
        "once",
        f"--config={config}",
        f"--output-dir={tmp_path / 'out'}",
        f"--refs-dir={tmp_path / 'refs'}",
        "--timeout=60",
    )
    try:
        assert wait_for(lambda: silent_store.connections >= 1), agent.stderr
        agent.process.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: agent.logged("event=signal_ignored signal=SIGUSR1"))
        assert agent.process.poll() is None, "SIGUSR1 ended once"
        agent.process.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=15)
    finally:
        agent.kill()
    assert code == 128 + signal.SIGTERM, agent.stderr


# Far below the HTTP clients' read timeouts (30 s and more), far above the promised second.
STOP_BOUND_SECONDS = 10


@pytest.mark.parametrize("mode", ["once", "run"])
def test_two_hanging_stores_stop_promptly(
    silent_store: SilentServer, tmp_path: Path, mode: str
) -> None:
    config = write_declarations(tmp_path, vault_url=silent_store.url, targets=("a",))
    environment = add_hanging_ssm_store(config, url=silent_store.url)
    flags = ["--timeout=60"] if mode == "once" else [f"--listen=127.0.0.1:{free_port()}"]
    agent = Agent(
        tmp_path,
        mode,
        f"--config={config}",
        f"--output-dir={tmp_path / 'out'}",
        f"--refs-dir={tmp_path / 'refs'}",
        *flags,
        env=environment,
    )
    try:
        # Both stores have a request in flight once the listener has accepted two connections.
        assert wait_for(lambda: silent_store.connections >= 2), agent.stderr
        agent.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = agent.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        agent.kill()
    assert took < STOP_BOUND_SECONDS, agent.stderr
    assert code == (143 if mode == "once" else 0), agent.stderr
    assert "Traceback" not in agent.stderr
    assert "event=fetch_abandoned store=aws-ssm" in agent.stderr
    assert "event=fetch_abandoned store=vault-kv" in agent.stderr


@pytest.fixture
def blocking_config(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """Yield a FIFO to pass as --config, so that the agent blocks reading it during startup.

    The second item contains the write end's descriptor once the agent has opened the FIFO.
    """
    fifo = tmp_path / "declarations.yaml"
    os.mkfifo(fifo)
    (tmp_path / "out").mkdir()
    writer: list[int] = []
    yield fifo, writer
    for descriptor in writer:
        os.close(descriptor)


def wait_until_reading(fifo: Path, writer: list[int]) -> bool:
    """Wait until a process has the FIFO open for reading, so it is past the start of `main`
    and blocked in startup, and keep the write end open so it stays blocked."""

    def opened() -> bool:
        try:
            writer.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return False
        return True

    return wait_for(opened)


def test_check_ctrl_c_exits_130(tmp_path: Path, blocking_config: tuple[Path, list[int]]) -> None:
    fifo, writer = blocking_config
    agent = Agent(tmp_path, "check", f"--config={fifo}")
    try:
        assert wait_until_reading(fifo, writer), agent.stderr
        agent.process.send_signal(signal.SIGINT)
        code = agent.wait(timeout=15)
    finally:
        agent.kill()
    assert code == 130, agent.stderr
    assert "Traceback" not in agent.stderr
    assert "KeyboardInterrupt" not in agent.stderr
    assert "secrets-agent: stopped by SIGINT before startup finished" in agent.stderr


def test_startup_ignores_sigusr1_then_stops(
    tmp_path: Path, blocking_config: tuple[Path, list[int]]
) -> None:
    fifo, writer = blocking_config
    agent = Agent(tmp_path, "once", f"--config={fifo}", f"--output-dir={tmp_path / 'out'}")
    try:
        assert wait_until_reading(fifo, writer), agent.stderr
        agent.process.send_signal(signal.SIGUSR1)
        agent.process.send_signal(signal.SIGUSR2)
        # No output follows an ignored signal during startup, so give a kill time to happen.
        time.sleep(0.5)
        assert agent.process.poll() is None, agent.stderr
        agent.process.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=15)
    finally:
        agent.kill()
    assert code == 143, agent.stderr
    assert "Traceback" not in agent.stderr
    assert "secrets-agent: stopped by SIGTERM before startup finished" in agent.stderr
