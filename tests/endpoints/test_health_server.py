"""The sidecar's HTTP endpoints, over a real loopback socket: answers, stop, and no polling."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.endpoints import HealthServer
from agent.metrics import Metrics


class Readiness:
    """A readiness callback whose answer a test can change."""

    def __init__(self) -> None:
        self.ready = False

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        status = "ok" if self.ready else "pending"
        return self.ready, {"targets": {"payment-secrets": {"status": status}}}


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def server(readiness: Readiness) -> Iterator[HealthServer]:
    metrics = Metrics()
    metrics.target_ready.labels("payment-secrets").set(1)
    server = HealthServer(("127.0.0.1", 0), readiness=readiness, registry=metrics.registry)
    server.start()
    yield server
    server.stop()


def _get(server: HealthServer, path: str) -> tuple[int, bytes]:
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _voluntary_switches(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("voluntary_ctxt_switches missing from /proc status")


def test_livez_returns_ok(server: HealthServer) -> None:
    status, body = _get(server, "/livez")
    assert status == 200
    assert body == b"ok\n"


def test_readyz_follows_readiness(server: HealthServer, readiness: Readiness) -> None:
    status, body = _get(server, "/readyz")
    assert status == 503
    assert json.loads(body)["targets"]["payment-secrets"]["status"] == "pending"

    readiness.ready = True
    status, body = _get(server, "/readyz")
    assert status == 200
    assert json.loads(body)["targets"]["payment-secrets"]["status"] == "ok"


def test_metrics_exports_registry(server: HealthServer) -> None:
    status, body = _get(server, "/metrics")
    assert status == 200
    assert b'secrets_agent_target_ready{target="payment-secrets"} 1.0' in body


def test_unknown_path_is_404(server: HealthServer) -> None:
    status, _ = _get(server, "/nothing-here")
    assert status == 404


def test_many_requests_in_a_row(server: HealthServer) -> None:
    statuses = [_get(server, "/livez")[0] for _ in range(50)]
    assert statuses == [200] * 50


def test_stop_closes_socket(readiness: Readiness) -> None:
    server = HealthServer(("127.0.0.1", 0), readiness=readiness, registry=Metrics().registry)
    server.start()
    assert _get(server, "/livez")[0] == 200
    host, port = server.address

    server.stop()

    assert not server._thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{host}:{port}/livez", timeout=5)
    server.stop()  # a second stop does nothing


def test_stop_without_start(readiness: Readiness) -> None:
    server = HealthServer(("127.0.0.1", 0), readiness=readiness, registry=Metrics().registry)
    server.stop()
    assert not server._thread.is_alive()


def test_idle_server_thread_sleeps(server: HealthServer) -> None:
    # Waking every 0.5 s to look for a stop request, as socketserver's serve_forever does, would
    # add two switches in this second. A blocked select(2) adds none.
    assert _get(server, "/livez")[0] == 200
    thread = server._thread
    before = _voluntary_switches(thread)
    time.sleep(1.2)
    after = _voluntary_switches(thread)
    assert after - before <= 1
