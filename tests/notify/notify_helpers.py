"""Helpers for the notify target tests: a sync loop against the Vault API emulator, a child
process that records the signals it receives, and an HTTP listener on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.declarations import load_declarations
from agent.metrics import Metrics
from agent.settings import load_settings
from agent.sync import Syncer
from agent.writer import Writer

ROOT_TOKEN = "root-token-fake"

STORE = """\
apiVersion: secrets-agent.io/v1alpha1
kind: SecretStore
metadata: {{name: vault-kv}}
spec:
  provider:
    vault:
      server: {url}
      path: secret
      auth:
        tokenSecretRef: {{name: vault-token, key: token}}
"""

EXTERNAL_SECRET = """\
apiVersion: secrets-agent.io/v1alpha1
kind: ExternalSecret
metadata: {{name: {name}}}
spec:
  refreshInterval: {interval}
  secretStoreRef: {{name: vault-kv}}
  dataFrom:
    - extract: {{key: {name}}}
"""


def write_config(
    tmp_path: Path,
    *,
    vault_url: str,
    targets: tuple[str, ...] = ("app",),
    interval: str = "1h",
    notify_targets: str = "",
) -> Path:
    """Write the declarations (one ExternalSecret per target, reading Vault secret `<target>`)
    and the refs directory with the emulator's token; return the declarations file."""
    refs = tmp_path / "refs" / "vault-token"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "token").write_text(ROOT_TOKEN)
    documents = [STORE.format(url=vault_url)]
    documents += [EXTERNAL_SECRET.format(name=name, interval=interval) for name in targets]
    if notify_targets:
        documents.append(notify_targets)
    config = tmp_path / "declarations.yaml"
    config.write_text("---\n".join(documents))
    return config


def make_syncer(tmp_path: Path, config: Path) -> Syncer:
    settings = load_settings(
        config=[str(config)], output_dir=str(tmp_path / "out"), refs_dir=str(tmp_path / "refs")
    )
    declarations = load_declarations(settings.config)
    return Syncer(
        declarations, settings=settings, writer=Writer(settings.output_dir), metrics=Metrics()
    )


@contextmanager
def running(syncer: Syncer) -> Iterator[Syncer]:
    """Run the sync loop in a thread for the duration of the block, from the end of its first
    round on (so that `refresh_now` does not race with that round's scheduling)."""
    loop = threading.Thread(target=syncer.run_forever, name="sync", daemon=True)
    loop.start()
    try:
        for target in list(syncer.states):
            assert wait_for(lambda t=target: rounds(syncer, t) >= 1), f"{target} was not synced"
        yield syncer
    finally:
        syncer.request_stop()
        loop.join(timeout=10)
        syncer.stores.close()


def rounds(syncer: Syncer, target: str = "app") -> float:
    """Return how many sync rounds have handled `target` so far."""
    return sum(
        metric(syncer, "secrets_agent_sync_total", target=target, result=result)
        for result in ("success", "unchanged", "error")
    )


def refresh_now(syncer: Syncer, target: str = "app") -> None:
    """Make the running sync loop refresh `target` at once instead of at its refreshInterval,
    and wait until that round is done. Tests use long intervals and call this, so that each
    round happens exactly when the test wants it."""
    before = rounds(syncer, target)
    with syncer.lock:
        syncer.states[target].next_due = 0.0
    syncer.wake()
    assert wait_for(lambda: rounds(syncer, target) > before), f"no sync round for {target}"


def wait_for(condition: Callable[[], Any], *, seconds: float = 10.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(step)
    return condition()


def metric(syncer_or_registry: Any, name: str, **labels: str) -> float:
    """Return the value of one sample, 0 when it does not exist."""
    registry = getattr(syncer_or_registry, "metrics", syncer_or_registry)
    registry = getattr(registry, "registry", registry)
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- a child process that records signals -------------------------------------------------------

RECORDER_SCRIPT = """\
import os, signal, sys, time
name, pid_file, log, children = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if name:
    with open("/proc/self/comm", "w") as comm:
        comm.write(name)

def record(number, frame):
    with open(log, "a") as stream:
        stream.write(f"{os.getpid()} {signal.Signals(number).name}\\n")

signal.signal(signal.SIGHUP, record)
signal.signal(signal.SIGUSR1, record)
worker = False
for _ in range(children):
    if os.fork() == 0:  # a worker with the same name, as nginx and gunicorn have
        worker = True
        break
target = f"{pid_file}.worker-{os.getpid()}" if worker else pid_file
with open(target + ".tmp", "w") as stream:
    stream.write(str(os.getpid()))
os.replace(target + ".tmp", target)
while True:
    time.sleep(0.05)
"""


@dataclass
class Recorder:
    """A real process that appends `<pid> <signal name>` to `log` for each SIGHUP or SIGUSR1."""

    process: subprocess.Popen[bytes]
    name: str
    pid_file: Path
    log: Path

    def signals(self) -> list[str]:
        if not self.log.exists():
            return []
        return self.log.read_text().splitlines()

    def worker_pids(self) -> list[int]:
        return [int(p.read_text()) for p in self.pid_file.parent.glob("app.pid.worker-*")]

    def stop(self) -> None:
        """Kill the recorder and its workers (they share its process group)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


def start_recorder(tmp_path: Path, *, name: str | None = None, workers: int = 0) -> Recorder:
    """Start a recorder named `name` (a fresh unique name by default) with `workers` forked
    children of the same name; return once it has written its pid file."""
    name = name or f"sa-{uuid.uuid4().hex[:8]}"
    directory = tmp_path / f"recorder-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    script = directory / "recorder.py"
    script.write_text(RECORDER_SCRIPT)
    pid_file = directory / "app.pid"
    log = directory / "signals.log"
    process = subprocess.Popen(
        [sys.executable, str(script), name, str(pid_file), str(log), str(workers)],
        start_new_session=True,
    )
    recorder = Recorder(process, name, pid_file, log)
    started = wait_for(
        lambda: pid_file.exists() and len(recorder.worker_pids()) == workers, seconds=10
    )
    if not started:
        recorder.stop()
        raise AssertionError("the recorder did not start")
    return recorder


# --- an HTTP listener on 127.0.0.1 --------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    at: float


@dataclass
class Listener:
    """An HTTP server on 127.0.0.1 that records requests and answers with scripted statuses."""

    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


@contextmanager
def http_listener(**options: Any) -> Iterator[Listener]:
    listener = Listener(**options)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            listener.received.append(
                Received(self.command, self.path, dict(self.headers.items()), time.monotonic())
            )
            if listener.delay:
                time.sleep(listener.delay)
            status = listener.statuses.pop(0) if listener.statuses else listener.default_status
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    listener.server = server
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="listener", daemon=True
    )
    thread.start()
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment_without_agent_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_AGENT_")}


def notify_target(name: str, spec: str) -> str:
    """Return a NotifyTarget document; `spec` is the YAML of its spec, indented by two spaces."""
    return (
        "apiVersion: secrets-agent.io/v1alpha1\n"
        "kind: NotifyTarget\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"{spec}"
    )
